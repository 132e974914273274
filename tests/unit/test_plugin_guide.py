"""The README's plugin guide documents every hook with its current signature."""

import inspect
import re
from pathlib import Path

from core import hookspecs

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _hooks():
    return {name: fn for name, fn in vars(hookspecs).items() if name.startswith("oms_") and callable(fn)}


def test_every_hook_is_documented_with_its_parameters():
    documented = dict(re.findall(r"^`(oms_\w+)\(([^)]*)\)", README, flags=re.M))
    for name, fn in _hooks().items():
        assert name in documented, f"{name} is missing from the README's plugin guide"
        params = [p.strip() for p in documented[name].split(",") if p.strip()]
        assert params == list(inspect.signature(fn).parameters), f"{name}'s documented signature drifted"


def test_every_hook_has_a_docstring_and_firstresult_hooks_say_so():
    for name, fn in _hooks().items():
        doc = inspect.getdoc(fn) or ""
        assert ":return:" in doc, name
        firstresult = getattr(fn, "oms_spec", {}).get("firstresult", False)
        assert firstresult == ("Stops at first non-None result" in doc), name
