"""Checks built Lambda artifacts offline: arm64 binaries, wheels for the runtime, .pyc, Lambda's size limit.

    python -m infra.check_artifacts .aws-sam/build     # run by `make build` after sam build

For every function of the built template (and the layers it uses):
- every ELF file (extension modules, vendored libraries) is 64-bit aarch64;
- every installed wheel carries a tag the runtime accepts: pure Python, or CPython 3.11 (or the
  stable ABI) built for manylinux aarch64 with glibc at most Amazon Linux 2's 2.26;
- every module has the unchecked-hash .pyc for Python 3.11 that infra.build compiles;
- a function holds only the project's runtime packages and the `oms` dist-info, its handler's
  module and every built-in plugin's module; a layer holds only python/ and not the project;
- function and layers stay under Lambda's 250 MB unzipped limit;
- no layer declares a pydantic plugin to a function whose PYDANTIC_DISABLE_PLUGINS turns them off.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infra.build import FUNCTION_PACKAGES, LAYER_SUBDIR, PROJECT

EM_AARCH64 = 183
MAX_GLIBC = (2, 26)  # Amazon Linux 2, the OS of Lambda's python3.11
MAGIC_311 = (3495).to_bytes(2, "little") + b"\r\n"
PYC_UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_aarch64")


def elf_machine(path: Path) -> int | None:
    """The ELF header's e_machine of `path`, or None when it is no ELF file."""
    with path.open("rb") as file:
        header = file.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byteorder = "little" if header[5] == 1 else "big"
    return int.from_bytes(header[18:20], byteorder)


def binary_problems(directory: Path) -> list[str]:
    problems = []
    for path in _files(directory):
        machine = elf_machine(path)
        if machine is not None and machine != EM_AARCH64:
            problems.append(f"{path.relative_to(directory)}: ELF machine {machine}, not aarch64 ({EM_AARCH64})")
    return problems


def tag_runs_on_lambda(tag: str) -> bool:
    """Whether a wheel tag (compressed sets allowed) includes one that python3.11 on arm64 runs."""
    try:
        interpreters, abis, platforms = (part.split(".") for part in tag.split("-"))
    except ValueError:
        return False
    return any(
        _interpreter_ok(interpreter, abi) and _platform_ok(platform, abi)
        for interpreter in interpreters
        for abi in abis
        for platform in platforms
    )


def _interpreter_ok(interpreter: str, abi: str) -> bool:
    if abi == "none":
        return interpreter in ("py3", "cp311") or (interpreter.startswith("py3") and _minor(interpreter[3:]) <= 11)
    if abi == "cp311":
        return interpreter == "cp311"
    if abi == "abi3":
        return interpreter.startswith("cp3") and _minor(interpreter[3:]) <= 11
    return False


def _platform_ok(platform: str, abi: str) -> bool:
    if platform == "any":
        return abi == "none"
    if platform == "manylinux2014_aarch64":
        return True
    match = _MANYLINUX.fullmatch(platform)
    return bool(match) and (int(match[1]), int(match[2])) <= MAX_GLIBC


def _minor(digits: str) -> int:
    return int(digits) if digits.isdigit() else 99


def wheel_tag_problems(directory: Path) -> list[str]:
    problems = []
    for wheel_file in sorted(directory.glob("*.dist-info/WHEEL")):
        lines = wheel_file.read_text().splitlines()
        tags = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")]
        if not any(tag_runs_on_lambda(tag) for tag in tags):
            problems.append(f"{wheel_file.parent.name}: wheel tags {tags} do not run on python3.11 arm64")
    return problems


def bytecode_problems(directory: Path) -> list[str]:
    problems = []
    for source in _files(directory, "*.py"):
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"
        if not pyc.is_file():
            problems.append(f"{source.relative_to(directory)}: no {pyc.name}")
            continue
        with pyc.open("rb") as file:
            header = file.read(8)
        if header[:4] != MAGIC_311 or int.from_bytes(header[4:8], "little") != PYC_UNCHECKED_HASH:
            problems.append(f"{pyc.relative_to(directory)}: not an unchecked-hash pyc of Python 3.11")
    return problems


def function_problems(code: Path, handler: str) -> list[str]:
    """What a function's own directory must and must not hold."""
    dist_infos = sorted(path.name for path in code.glob("*.dist-info"))
    problems = [
        f"{path.name}: not a runtime package of the project"
        for path in sorted(code.iterdir())
        if path.name not in FUNCTION_PACKAGES and path.name not in dist_infos
    ]
    if len(dist_infos) != 1 or not dist_infos[0].startswith(f"{PROJECT}-"):
        return [*problems, f"expected the {PROJECT} dist-info alone, found {dist_infos}"]
    module = handler.rsplit(".", 1)[0]
    if not _module_file(code, module):
        problems.append(f"the handler's module {module} is missing")
    entry_points = (code / dist_infos[0] / "entry_points.txt").read_text()
    for line in entry_points.splitlines():
        if "=" in line and not _module_file(code, line.split("=", 1)[1].strip().split(":")[0]):
            problems.append(f"entry point {line.strip()!r}: its module is missing")
    return problems


def layer_problems(content: Path) -> list[str]:
    problems = [f"{path.name}: outside {LAYER_SUBDIR}/" for path in content.iterdir() if path.name != LAYER_SUBDIR]
    site = content / LAYER_SUBDIR
    for metadata in site.glob("*.dist-info/METADATA"):
        if any(line.lower() == f"name: {PROJECT}" for line in metadata.read_text(errors="replace").splitlines()):
            problems.append(f"{metadata.parent.name}: the project belongs in the functions, not the layer")
    return problems


def pydantic_plugin_problems(site: Path) -> list[str]:
    """The distributions in `site` that declare a pydantic plugin (entry point group `pydantic`),
    which a function whose PYDANTIC_DISABLE_PLUGINS turns every one off (template.yaml's Globals)
    would never run: a plugins.txt line that needs one needs that variable changed."""
    return [
        f"{entry_points.parent.name}: declares a pydantic plugin, which PYDANTIC_DISABLE_PLUGINS turns off"
        for entry_points in sorted(site.glob("*.dist-info/entry_points.txt"))
        if "[pydantic]" in (line.strip() for line in entry_points.read_text(errors="replace").splitlines())
    ]


def _pydantic_plugins_off(variables: dict[str, Any]) -> bool:
    """Whether pydantic reads these variables as every plugin off (pydantic.plugin._loader)."""
    return str(variables.get("PYDANTIC_DISABLE_PLUGINS")) in ("__all__", "1", "true")


def built_problems(build_dir: Path) -> list[str]:
    """Every problem of the functions and layers of the template `sam build` wrote to `build_dir`."""
    from infra.local.template import load_template

    template = load_template(build_dir / "template.yaml")
    resources: dict[str, Any] = template.get("Resources", {})
    function_globals = (template.get("Globals") or {}).get("Function") or {}
    problems: list[str] = []
    checked: set[Path] = set()
    plugins_checked: set[Path] = set()
    sizes: dict[Path, int] = {}  # each directory measured once, not once per function that uses it

    def size_of(directory: Path) -> int:
        if directory not in sizes:
            sizes[directory] = _size(directory)
        return sizes[directory]

    def check_tree(label: str, directory: Path) -> None:
        if directory in checked:
            return
        checked.add(directory)
        for problem in binary_problems(directory) + wheel_tag_problems(directory) + bytecode_problems(directory):
            problems.append(f"{label}: {problem}")

    functions = {name: res for name, res in resources.items() if res.get("Type") == "AWS::Serverless::Function"}
    if not functions:
        return [f"{build_dir}: no functions in the built template"]
    for name, resource in sorted(functions.items()):
        props = resource.get("Properties") or {}
        code = build_dir / str(props.get("CodeUri", function_globals.get("CodeUri", "")))
        if not code.is_dir() or code == build_dir:
            problems.append(f"{name}: no built code directory ({code})")
            continue
        problems.extend(f"{name}: {problem}" for problem in function_problems(code, props["Handler"]))
        check_tree(name, code)
        size = size_of(code)
        for layer_name in _layer_ids(props.get("Layers", function_globals.get("Layers", []))):
            layer_props = resources.get(layer_name, {}).get("Properties") or {}
            content = build_dir / str(layer_props.get("ContentUri", ""))
            if not (content / LAYER_SUBDIR).is_dir():
                problems.append(f"{name}: layer {layer_name} has no built {LAYER_SUBDIR}/ ({content})")
                continue
            if content not in checked:
                problems.extend(f"{layer_name}: {problem}" for problem in layer_problems(content))
            if content not in plugins_checked and _pydantic_plugins_off(
                {**_variables(function_globals), **_variables(props)}
            ):
                plugins_checked.add(content)
                problems.extend(
                    f"{layer_name}: {problem}" for problem in pydantic_plugin_problems(content / LAYER_SUBDIR)
                )
            check_tree(layer_name, content / LAYER_SUBDIR)
            size += size_of(content)
        if size > LAMBDA_UNZIPPED_LIMIT:
            problems.append(f"{name}: {size / 2**20:.0f} MiB unzipped with its layers, over Lambda's 250 MB")
    return problems


def _variables(properties: dict[str, Any]) -> dict[str, Any]:
    return (properties.get("Environment") or {}).get("Variables") or {}


def _layer_ids(layers: list[Any]) -> Iterator[str]:
    for layer in layers:
        if isinstance(layer, dict) and isinstance(layer.get("Ref"), str):
            yield layer["Ref"]


def _module_file(root: Path, module: str) -> bool:
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _files(directory: Path, pattern: str = "*") -> Iterator[Path]:
    return (path for path in sorted(directory.rglob(pattern)) if path.is_file() and "__pycache__" not in path.parts)


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.check_artifacts", description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", default=".aws-sam/build", type=Path)
    args = parser.parse_args(argv)
    problems = built_problems(args.build_dir)
    for problem in problems:
        print(f"{args.build_dir}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.build_dir}: every function and layer is arm64 / python3.11, compiled, within Lambda's limits")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
