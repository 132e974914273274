"""Builds what `sam build` deploys: each function's project code and the shared dependencies layer.

    python -m infra.build function ARTIFACTS_DIR     # make build-<Function>, called by sam build
    python -m infra.build layer ARTIFACTS_DIR        # make build-DependenciesLayer

The functions run on arm64 with Python 3.11 whatever machine builds them:
- the layer holds the third-party wheels (this package's dependencies and the deployment's extra
  plugins from plugins.txt), installed by pip for manylinux2014 aarch64 / CPython 3.11, binary
  wheels only, pinned to the versions installed where the build runs (the ones the tests ran
  against);
- a function holds the project's runtime packages (core, functions, plugins) and the `oms`
  dist-info, whose entry points load the built-in plugins; `infra` (the local runtime and the
  operator's tools) is not shipped;
- both ship `.pyc` next to the sources, compiled by this interpreter (which must be the runtime's
  version) as unchecked-hash pycs: Lambda's code directory is read-only and a zip keeps file times
  to 2 seconds, so timestamp-checked pycs could be judged stale and recompiled at every cold start.

The project's wheel is built once per content (cached under build/wheels by a hash of its
sources) from a copy of the sources, so parallel builds never share setuptools' build directory
and a deleted module never lingers in the artifact; what every function holds is unpacked from it
and compiled once too, beside it, and copied into each function's directory.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import contextlib
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import py_compile
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

PROJECT = "oms"
RUNTIME = "python3.11"
ARCHITECTURE = "arm64"
TARGET_PYTHON = (3, 11)
# Lambda's python3.11 runs on Amazon Linux 2 (glibc 2.26): manylinux2014 (glibc 2.17) wheels run there.
PIP_PLATFORM_FLAGS = (
    "--platform",
    "manylinux2014_aarch64",
    "--implementation",
    "cp",
    "--python-version",
    "3.11",
    "--only-binary=:all:",
)
FUNCTION_PACKAGES = ("core", "functions", "plugins")
LAYER_SUBDIR = "python"  # Lambda puts /opt/python on sys.path
PLUGINS_FILE = "plugins.txt"
WHEEL_CACHE = Path("build") / "wheels"
_SKIPPED_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache"}


class BuildError(Exception):
    pass


# --- The project's wheel -----------------------------------------------------------------------


def project_sources(root: Path) -> list[Path]:
    """The files setuptools builds the wheel from: pyproject.toml, the readme and every file under
    the top-level packages that pyproject's `packages.find.include` names."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    readme = config["project"].get("readme")
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {pattern.split(".")[0].rstrip("*") for pattern in patterns}
    files = [root / "pyproject.toml"] + ([root / readme] if isinstance(readme, str) else [])
    for top in sorted(tops):
        for path in sorted((root / top).rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not _SKIPPED_NAMES & set(relative.parts) and path.suffix != ".pyc":
                files.append(path)
    return files


def project_wheel(root: Path, cache: Path | None = None) -> Path:
    """The project's wheel for the sources as they are now, built from a copy of them (cached)."""
    sources = project_sources(root)
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    slot = (cache or root / WHEEL_CACHE) / digest.hexdigest()[:24]
    built = sorted(slot.glob("*.whl"))
    if built:
        return built[0]
    slot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="oms-wheel-") as scratch:
        copy = Path(scratch) / "src"
        for path in sources:
            target = copy / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        out = Path(scratch) / "out"
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(copy)], cwd=scratch)
        wheels = list(out.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"pip wheel made {len(wheels)} wheels of {root}")
        # Another build running in parallel may have won the race; either copy is the same.
        staged = Path(tempfile.mkdtemp(prefix=".tmp-", dir=slot.parent))
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        try:
            staged.rename(slot)
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    return next(iter(sorted(slot.glob("*.whl"))))


# --- A function's artifact -----------------------------------------------------------------------


def build_function(artifacts: Path, root: Path, cache: Path | None = None) -> None:
    """Puts the project's runtime packages, compiled, and its dist-info (entry points) into
    `artifacts`, with the digest of botocore's endpoint data this interpreter has."""
    _require_target_python()
    tree = function_tree(root, cache)
    shutil.copytree(tree, artifacts, dirs_exist_ok=True)
    (dist_info,) = (path.name for path in tree.glob("*.dist-info"))
    digest_rows = _endpoints_digest_rows(artifacts)
    if digest_rows:
        lines = io.StringIO()
        csv.writer(lines, lineterminator="\n").writerows(digest_rows)
        with (artifacts / dist_info / "RECORD").open("a") as record:
            record.write(lines.getvalue())


def function_tree(root: Path, cache: Path | None = None) -> Path:
    """What every function holds but the endpoints digest: the project's runtime packages and its
    dist-info from its wheel, compiled. Made once per content, beside the wheel it comes from (its
    slot is keyed by the sources' hash) and for this interpreter's bytecode; a build running in
    parallel makes its own and the first to finish keeps its. A pyc compiled here loads in each
    function's directory as it is: the import system sets its code's file name to its source's."""
    wheel = project_wheel(root, cache)
    tree = wheel.parent / f"function-{importlib.util.MAGIC_NUMBER.hex()}"
    if tree.is_dir():
        return tree
    staged = Path(tempfile.mkdtemp(prefix=".tmp-", dir=wheel.parent))
    try:
        _unpack_function(wheel, staged)
        compile_tree(staged)
        with contextlib.suppress(OSError):  # another build's tree is there: the same
            staged.rename(tree)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return tree


def _unpack_function(wheel: Path, directory: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        dist_info = _dist_info_dir(archive.namelist())
        kept = [
            name
            for name in archive.namelist()
            if name.split("/")[0] in FUNCTION_PACKAGES or name.startswith(f"{dist_info}/")
        ]
        record_name = f"{dist_info}/RECORD"
        for name in kept:
            if name != record_name:
                archive.extract(name, directory)
        # The RECORD names what is installed: only what was kept (pip's uninstall and
        # importlib.metadata's `files` read it); build_function adds the endpoints digest's row.
        rows = [row for row in csv.reader(io.StringIO(archive.read(record_name).decode())) if row]
        kept_set = set(kept)
        lines = io.StringIO()
        csv.writer(lines, lineterminator="\n").writerows(row for row in rows if row[0] in kept_set)
        (directory / record_name).write_text(lines.getvalue())


def _endpoints_digest_rows(artifacts: Path) -> list[list[str]]:
    """The function's digest of botocore's endpoint data (functions/adapters/aws_clients.py says
    why), made from the botocore the layer pins (tested_versions: the one installed here), as its
    RECORD row."""
    adapters = artifacts / "functions" / "adapters"
    if not (adapters / "aws_clients.py").is_file():
        return []
    from functions.adapters.aws_clients import write_endpoints_digest

    digest = write_endpoints_digest(adapters)
    content = digest.read_bytes()
    sha = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return [[digest.relative_to(artifacts).as_posix(), f"sha256={sha}", str(len(content))]]


def _dist_info_dir(names: list[str]) -> str:
    dirs = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
    if len(dirs) != 1:
        raise BuildError(f"expected one .dist-info in the wheel, found {sorted(dirs)}")
    return dirs.pop()


# --- The dependencies layer ----------------------------------------------------------------------


def build_layer(artifacts: Path, root: Path, plugins_file: Path | None = None, cache: Path | None = None) -> None:
    """Installs the project's dependencies and the deployment's plugins for the Lambda platform
    into `artifacts`/python, without the project itself (each function carries it)."""
    _require_target_python()
    plugins_file = plugins_file or root / PLUGINS_FILE
    wheel = project_wheel(root, cache)
    site = artifacts / LAYER_SUBDIR
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="oms-layer-") as scratch:
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text("".join(f"{pin}\n" for pin in tested_versions()))
        # The project's wheel is installed with the plugins so that a plugin requiring `oms`
        # resolves to this project, never to a distribution of that name on PyPI.
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(site)]
        command += [*PIP_PLATFORM_FLAGS, "--constraint", str(constraints), str(wheel)]
        if plugins_file.exists():
            command += ["--requirement", str(plugins_file)]
        _run(command, cwd=root)
    _remove_distribution(site, PROJECT)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: nothing on Lambda runs them
    compile_tree(site)


def tested_versions() -> list[str]:
    """`name==version` for every distribution installed from an index where the build runs: the
    layer gets the versions the tests ran against (a plugin needing others fails the build)."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name or _normalize(name) == PROJECT or dist.read_text("direct_url.json") is not None:
            continue
        pins.setdefault(_normalize(name), f"{name}=={dist.version}")
    return sorted(pins.values())


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _remove_distribution(site: Path, name: str) -> None:
    """Deletes an installed distribution's files, as its RECORD lists them."""
    for dist_info in site.glob("*.dist-info"):
        metadata = (dist_info / "METADATA").read_text(errors="replace")
        if not any(line.lower() == f"name: {name}" for line in metadata.splitlines()):
            continue
        for row in csv.reader(io.StringIO((dist_info / "RECORD").read_text())):
            if row and (site / row[0]).is_file():
                (site / row[0]).unlink()
        shutil.rmtree(dist_info, ignore_errors=True)
    for directory in sorted((p for p in site.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()


# --- Shared --------------------------------------------------------------------------------------


def compile_tree(directory: Path) -> None:
    """Compiles every module under `directory` to unchecked-hash pycs in __pycache__."""
    quiet = io.StringIO()
    stdout, sys.stdout = sys.stdout, quiet
    try:
        ok = compileall.compile_dir(
            directory, quiet=1, workers=0, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
    finally:
        sys.stdout = stdout
    if not ok:
        raise BuildError(f"some modules under {directory} do not compile:\n{quiet.getvalue()}")


def _require_target_python() -> None:
    if sys.version_info[:2] != TARGET_PYTHON:
        raise BuildError(
            f"build with Python {'.'.join(map(str, TARGET_PYTHON))} (the functions' runtime): this is "
            f"{sys.version.split()[0]}, whose .pyc the runtime would not use"
        )


def _run(command: list[str], cwd: Path | str) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.build", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["function", "layer"])
    parser.add_argument("artifacts", type=Path, help="where SAM wants the artifact ($ARTIFACTS_DIR)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project (default: here)")
    parser.add_argument("--plugins", type=Path, help=f"the plugin file (default: ROOT/{PLUGINS_FILE})")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.what == "function":
            build_function(args.artifacts.resolve(), root)
        else:
            build_layer(args.artifacts.resolve(), root, args.plugins.resolve() if args.plugins else None)
    except BuildError as error:
        print(f"infra.build: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
