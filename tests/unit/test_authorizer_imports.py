"""The authorizer's cold start: its import leaves out pydantic, the models, plugins and the resolver."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Each of these costs tens of milliseconds of import on every new authorizer container.
HEAVY = ["pydantic", "core.models", "core.plugin_manager", "aws_lambda_powertools.event_handler", "functions.bootstrap"]
# powertools' Logger alone costs a tenth of boto3's import: the authorizer builds it on its first refusal.
LOGGER_ONLY_WHEN_REFUSING = ["aws_lambda_powertools"]


def modules_after_importing(module: str) -> set[str]:
    # A fresh interpreter: this test process has long imported everything.
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_importing_the_authorizer_pulls_no_pydantic_models_plugins_or_resolver():
    loaded = modules_after_importing("functions.authorizer.app")
    assert "functions.authorizer.app" in loaded
    assert [name for name in HEAVY + LOGGER_ONLY_WHEN_REFUSING if name in loaded] == []


def test_the_check_sees_what_the_api_function_imports():
    loaded = modules_after_importing("functions.api.app")
    assert [name for name in HEAVY if name in loaded] == HEAVY
