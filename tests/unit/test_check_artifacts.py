"""infra.check_artifacts tells what runs on Lambda's python3.11 arm64 from what does not."""

import py_compile
from pathlib import Path

import pytest

from infra.check_artifacts import binary_problems, bytecode_problems, elf_machine, tag_runs_on_lambda


@pytest.mark.parametrize(
    "tag",
    [
        "py3-none-any",
        "py2.py3-none-any",
        "cp311-cp311-manylinux2014_aarch64",
        "cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64",
        "cp311-cp311-manylinux_2_26_aarch64",
        "cp38-abi3-manylinux_2_17_aarch64",
    ],
)
def test_tags_that_run_on_python311_arm64(tag):
    assert tag_runs_on_lambda(tag)


@pytest.mark.parametrize(
    "tag",
    [
        "cp311-cp311-manylinux_2_17_x86_64",  # another machine
        "cp312-cp312-manylinux_2_17_aarch64",  # another Python
        "cp312-abi3-manylinux_2_17_aarch64",  # a stable ABI newer than 3.11
        "cp311-cp311-manylinux_2_28_aarch64",  # a glibc newer than Amazon Linux 2's 2.26
        "cp311-cp311-musllinux_1_1_aarch64",  # another libc
        "cp311-cp311-linux_aarch64",  # built on some Linux: no promise about its libraries
        "cp311-cp311-macosx_11_0_arm64",
        "py2-none-any",
        "cp311-none-manylinux2014_aarch64-extra",
    ],
)
def test_tags_that_do_not(tag):
    assert not tag_runs_on_lambda(tag)


def _elf(machine: int, byteorder: str = "little") -> bytes:
    header = bytearray(64)
    header[:4], header[4], header[5] = b"\x7fELF", 2, 1 if byteorder == "little" else 2
    header[18:20] = machine.to_bytes(2, byteorder)
    return bytes(header)


def test_the_elf_machine_is_read_in_the_files_byte_order(tmp_path: Path):
    (tmp_path / "arm.so").write_bytes(_elf(183))
    (tmp_path / "big.so").write_bytes(_elf(183, "big"))
    (tmp_path / "notes.txt").write_text("not a binary")
    assert [elf_machine(tmp_path / name) for name in ("arm.so", "big.so", "notes.txt")] == [183, 183, None]


def test_any_x86_binary_is_named_wherever_it_hides(tmp_path: Path):
    (tmp_path / "pkg" / "pkg.libs").mkdir(parents=True)
    (tmp_path / "pkg" / "_ext.so").write_bytes(_elf(183))
    (tmp_path / "pkg" / "pkg.libs" / "libz-1a2b.so.1").write_bytes(_elf(62))  # no .so suffix at the end
    assert binary_problems(tmp_path) == ["pkg/pkg.libs/libz-1a2b.so.1: ELF machine 62, not aarch64 (183)"]


def test_a_module_needs_an_unchecked_hash_pyc(tmp_path: Path):
    for name in ("hashed", "timestamped", "bare"):
        (tmp_path / f"{name}.py").write_text("X = 1\n")
    py_compile.compile(str(tmp_path / "hashed.py"), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    py_compile.compile(str(tmp_path / "timestamped.py"), invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    assert bytecode_problems(tmp_path) == [
        "bare.py: no bare.cpython-311.pyc",
        "__pycache__/timestamped.cpython-311.pyc: not an unchecked-hash pyc of Python 3.11",
    ]
