"""The order `make test`'s workers deal out the suite's files in (tests/conftest.py): the costliest
files named first, the rest by their number of tests, every test kept, each file's tests in their
own order; a serial run keeps collection order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests import conftest

ROOT = Path(__file__).resolve().parents[2]


def _items(*nodeids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(nodeid=nodeid) for nodeid in nodeids]


def _ordered(items: list[SimpleNamespace], *, worker: bool = True) -> list[str]:
    config = SimpleNamespace(workerinput={"workerid": "gw0"}) if worker else SimpleNamespace()
    conftest.pytest_collection_modifyitems(config, items)  # type: ignore[arg-type]
    return [item.nodeid for item in items]


def test_every_heavy_file_named_is_a_test_file_of_the_suite_and_named_once():
    assert len(set(conftest.HEAVY_FILES)) == len(conftest.HEAVY_FILES)
    for path in conftest.HEAVY_FILES:
        assert (ROOT / path).is_file(), path
        assert Path(path).name.startswith("test_"), path


def test_a_worker_runs_the_heavy_files_first_in_their_order_then_the_rest_by_their_number_of_tests():
    first, second = conftest.HEAVY_FILES[:2]
    items = _items(
        "tests/unit/test_small.py::test_a",
        f"{second}::test_x",
        "tests/unit/test_big.py::test_a",
        "tests/unit/test_big.py::test_b",
        f"{first}::test_y",
        "tests/unit/test_tie.py::test_a",
        f"{second}::test_w",
    )
    assert _ordered(items) == [
        f"{first}::test_y",
        f"{second}::test_x",
        f"{second}::test_w",
        "tests/unit/test_big.py::test_a",
        "tests/unit/test_big.py::test_b",
        "tests/unit/test_small.py::test_a",
        "tests/unit/test_tie.py::test_a",
    ]


def test_outside_a_worker_the_collection_order_is_kept():
    nodeids = ("tests/unit/test_small.py::test_a", f"{conftest.HEAVY_FILES[0]}::test_y")
    assert _ordered(_items(*nodeids), worker=False) == list(nodeids)
