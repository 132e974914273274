"""Property-based conformance: schemathesis generates requests from /openapi.json (as the admin
key) and checks that no answer is a 5xx and that every answer matches the documented schema.

It runs schemathesis' own CLI against the local stack (its pytest plugin does not load under
pytest 9). The example count is kept small for CI: SCHEMATHESIS_MAX_EXAMPLES, default 8 per
operation. For a longer run:

    SCHEMATHESIS_MAX_EXAMPLES=500 .venv/bin/pytest tests/e2e/test_schemathesis.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_no_answer_is_a_server_error_or_off_schema(stack, tmp_path: Path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    result = subprocess.run(
        [
            cli,
            "run",
            f"{stack.api_url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "20261122",
            "--header",
            f"Authorization: Bearer {stack.admin_key}",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
