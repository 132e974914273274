"""`make run`'s state file holds the admin key: nobody but its owner may read it, at any moment."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest


def test_the_state_file_is_created_readable_by_its_owner_alone_before_any_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Before: written with the process's umask (0o644 here), then chmod 0o600: for that moment, and
    # for good had the chmod failed, any local user could read the admin key.
    from infra.local.__main__ import write_state

    state = tmp_path / ".oms-local.json"
    monkeypatch.setenv("OMS_STATE_FILE", str(state))
    monkeypatch.setattr(Path, "chmod", lambda *args, **kwargs: None)  # what the file is created with
    old_umask = os.umask(0o022)
    try:
        stack = SimpleNamespace(api_url="http://127.0.0.1:8080", aws_endpoint="http://127.0.0.1:4566",
                                admin_key="oms_admin_" + "x" * 32, stack_name="oms-local", bucket_names={},
                                queue_urls={}, table_names={})  # fmt: skip
        write_state(stack)  # type: ignore[arg-type]
    finally:
        os.umask(old_umask)

    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert "oms_admin_" in state.read_text()
