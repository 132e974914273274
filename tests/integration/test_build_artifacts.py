"""What `make build` deploys, built with the targets sam build calls, checked without AWS.

The layer is built for the declared platform (manylinux2014 aarch64, CPython 3.11) from PyPI (pip's
cache makes reruns quick), with the repository's plugins.txt and one more plugin, a local package
that requires `oms`. Its wheels and binaries are checked for the platform. An aarch64
pydantic_core cannot be imported on an x86-64 machine, so the import check uses a host variant of
the layer: a copy of it, its .pyc included, with each distribution built for the platform replaced
by the same version's files pip installed for this machine in the interpreter running the tests
(the layer is pinned to those versions); its file list is shown to match the real layer's. Each
handler is then imported in a process of its own, with the function's environment, forked from an
isolated interpreter that had imported only the check's own standard-library modules and the
layer's library packages (IMPORT_CHECK says why), that sees only the function's artifact, that
layer and the standard library.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import botocore
import pytest

from infra import build, check_artifacts
from infra.build import ARCHITECTURE, LAYER_SUBDIR, RUNTIME, build_function, build_layer, compile_tree
from infra.check_artifacts import (
    binary_problems,
    built_problems,
    bytecode_problems,
    elf_machine,
    function_problems,
    layer_problems,
    wheel_tag_problems,
)
from infra.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES = TEMPLATE["Resources"]
FUNCTIONS = {name: res for name, res in RESOURCES.items() if res["Type"] == "AWS::Serverless::Function"}
LAYERS = {name: res for name, res in RESOURCES.items() if res["Type"] == "AWS::Serverless::LayerVersion"}
BUILT_IN_PLUGINS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["oms"])
TEST_PLUGIN = "buildcheck"
ON_ARM64 = platform.machine().lower() in ("aarch64", "arm64") and sys.platform == "linux"


@dataclass
class Built:
    function: Path  # one function's artifact: every function's is the same
    layer: Path  # the layer's python/ directory, for the Lambda platform
    importable_layer: Path  # the same distributions for this machine (the layer itself on arm64)
    base: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("build")
    plugins_file = base / "plugins.txt"
    plugins_file.write_text(f"-r {ROOT / 'plugins.txt'}\n{_write_plugin(base / 'oms-buildcheck')}\n")
    function = base / "ApiFunction"
    _run(["make", "--no-print-directory", "build-ApiFunction", f"ARTIFACTS_DIR={function}"], cwd=ROOT)
    build_layer(base / "DependenciesLayer", ROOT, plugins_file)
    layer = base / "DependenciesLayer" / LAYER_SUBDIR
    return Built(function, layer, layer if ON_ARM64 else _host_variant(layer, base), base)


def _write_plugin(directory: Path) -> Path:
    """A third-party plugin package, as a deployment would list it in plugins.txt: a directory pip
    builds in isolation. Its backend is flit_core, which pip sets up in half setuptools' CPU (1.4 s
    against 2.9 s a build here); the project's own wheel is setuptools' (and the last test's)."""
    (directory / "oms_buildcheck").mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
            [build-system]
            requires = ["flit_core>=3.9,<4"]
            build-backend = "flit_core.buildapi"

            [project]
            name = "oms-buildcheck"
            version = "1.0.0"
            description = "A plugin the build test installs from its directory"
            dependencies = ["oms"]

            [project.entry-points.oms]
            {TEST_PLUGIN} = "oms_buildcheck"
            """)
    )
    (directory / "oms_buildcheck" / "__init__.py").write_text(
        textwrap.dedent("""\
            from core import hookimpl


            @hookimpl
            def oms_payment_methods():
                return ["buildcheck"]
            """)
    )
    return directory


def _host_variant(layer: Path, base: Path) -> Path:
    """The layer as this machine imports it: a copy of it, its .pyc included, in which each
    distribution built for the Lambda platform (a wheel tagged for it: pydantic_core) is replaced by
    the files pip installed for this machine at the same version in the interpreter running the
    tests (the layer is pinned to those versions), compiled as build_layer compiles. Every pure
    distribution is the layer's own files: a pip install of them all again took half the setup, and
    a pip install of pydantic_core alone two thirds of this function's CPU (1.7 s). The copy is of
    hard links (a copy of the bytes was 0.5 s of CPU more): nothing here writes into a file the
    layer has, each stand-in's file taking the place of a link it removes."""
    host = base / "host-layer"
    shutil.copytree(layer, host, symlinks=True, copy_function=os.link)
    stand_ins, replaced = [], set()
    for wheel in sorted(host.glob("*.dist-info/WHEEL")):
        tags = [line.removeprefix("Tag: ") for line in wheel.read_text().splitlines() if line.startswith("Tag: ")]
        if all(tag.endswith("-none-any") for tag in tags):
            continue
        fields = _metadata(wheel.parent)
        installed = importlib.metadata.distribution(fields["Name"])
        assert installed.version == fields["Version"], fields["Name"]
        stand_ins.append(installed)
        replaced |= _top_level_names(wheel.parent)
    assert stand_ins, "the layer has no platform wheel (pydantic_core's is one): nothing to stand in for"
    for path in (host / name for name in replaced):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for installed in stand_ins:  # its files as RECORD lists them, but the .pyc pip compiled
        for file in installed.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            (host / file).parent.mkdir(parents=True, exist_ok=True)
            (host / file).unlink(missing_ok=True)  # a link to the layer's file: never written through
            shutil.copy2(installed.locate_file(file), host / file)
    kept = {path.name for path in layer.iterdir()} - replaced
    for path in host.iterdir():  # what pip put there, compiled as build_layer compiles the layer
        if path.is_dir() and path.name not in kept:
            compile_tree(path)
    return host


def _metadata(dist_info: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (dist_info / "METADATA").read_text().splitlines() if ": " in line)


def _top_level_names(dist_info: Path) -> set[str]:
    """The files and directories directly in the site that a distribution's RECORD names."""
    rows = csv.reader(io.StringIO((dist_info / "RECORD").read_text()))
    return {Path(row[0]).parts[0] for row in rows if row and not row[0].startswith("..")}


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


# --- The template and the Makefile agree --------------------------------------------------------


def test_every_function_and_layer_is_built_by_its_make_target():
    assert FUNCTIONS and LAYERS
    for name, resource in {**FUNCTIONS, **LAYERS}.items():
        assert resource.get("Metadata", {}).get("BuildMethod") == "makefile", name
        kind = "function" if name in FUNCTIONS else "layer"
        dry_run = subprocess.run(
            ["make", "-n", f"build-{name}", "ARTIFACTS_DIR=/nowhere"], cwd=ROOT, capture_output=True, text=True
        )
        assert dry_run.returncode == 0, f"{name}: {dry_run.stderr}"
        assert f"-m infra.build {kind} " in dry_run.stdout, name


def test_functions_and_layers_declare_the_platform_the_build_installs_for():
    globals_ = TEMPLATE["Globals"]["Function"]
    assert globals_["Runtime"] == RUNTIME
    assert globals_["Architectures"] == [ARCHITECTURE]
    assert globals_["Layers"] == [{"Ref": name} for name in LAYERS]
    for name, resource in FUNCTIONS.items():
        props = resource["Properties"]
        assert props.get("Runtime", RUNTIME) == RUNTIME, name
        assert props.get("Architectures", [ARCHITECTURE]) == [ARCHITECTURE], name
    for name, resource in LAYERS.items():
        assert resource["Properties"]["CompatibleRuntimes"] == [RUNTIME], name
        assert resource["Properties"]["CompatibleArchitectures"] == [ARCHITECTURE], name
        assert resource["Metadata"]["BuildArchitecture"] == ARCHITECTURE, name


# --- The artifacts hold only what runs on python3.11 arm64 --------------------------------------


def test_the_layer_holds_only_wheels_and_binaries_for_arm64_python311(built: Built):
    assert wheel_tag_problems(built.layer) == []
    assert binary_problems(built.layer) == []
    machines = {elf_machine(path) for path in built.layer.rglob("*.so")}
    assert machines == {183}, "pydantic_core's extension is aarch64 (and the check saw it)"


def test_the_layer_has_the_versions_the_tests_run_against(built: Built):
    compared = 0
    for metadata in built.layer.glob("*.dist-info/METADATA"):
        fields = _metadata(metadata.parent)
        try:
            installed = importlib.metadata.version(fields["Name"])
        except importlib.metadata.PackageNotFoundError:
            continue
        compared += 1
        assert fields["Version"] == installed, fields["Name"]
    assert compared >= 5  # powertools, boto3, botocore, pydantic, pydantic-core, pluggy, ...


def test_every_module_ships_its_unchecked_hash_pyc(built: Built):
    assert bytecode_problems(built.function) == []
    assert bytecode_problems(built.layer) == []


def test_a_function_holds_the_project_runtime_packages_and_its_entry_points(built: Built):
    for name, resource in FUNCTIONS.items():
        assert function_problems(built.function, resource["Properties"]["Handler"]) == [], name
    assert sorted(path.name for path in built.function.iterdir()) == [
        "core",
        "functions",
        "oms-0.1.0.dist-info",
        "plugins",
    ]
    record = (built.function / "oms-0.1.0.dist-info" / "RECORD").read_text()
    assert "infra/" not in record  # the RECORD lists what is there, nothing else


def test_the_layer_holds_the_plugin_file_packages_but_never_the_project(built: Built):
    assert layer_problems(built.layer.parent) == []
    assert (built.layer / "oms_buildcheck" / "__init__.py").is_file()
    assert not (built.layer / "core").exists()
    assert not (built.layer / "docopt.py").exists()  # the `oms` on PyPI (another project) was not fetched


def test_the_host_variant_has_the_layers_files(built: Built):
    if ON_ARM64:
        pytest.skip("on arm64 the layer itself is imported")

    def files(site: Path) -> set[str]:
        # Extension modules name their platform; pip marks what was asked for by name (REQUESTED).
        return {
            str(path.relative_to(site)).replace("aarch64-linux-gnu", "PLATFORM").replace("x86_64-linux-gnu", "PLATFORM")
            for path in site.rglob("*")
            if path.is_file() and path.name != "REQUESTED"
        }

    assert files(built.importable_layer) == files(built.layer)


# --- Each handler imports from its artifact and the layer alone ---------------------------------

# One isolated interpreter (-I -S: no site, no user or PYTHON* variables) imports what the check
# itself needs, then, with the artifact and the layer on its path and the check's watch on
# compilation already on, the top-level package of each library distribution in the layer (boto3,
# pydantic, powertools, ...: every one but the plugins'), under the environment every function
# shares. Then it forks a process per function: each takes exactly the function's environment and
# imports the handler, and with it every project module, every plugin and every library module
# the libraries' own top-level imports had not loaded. A library module a child inherits is still
# checked as the child's own: its file is in sys.modules (inside the layer, or named as outside)
# and its compilation from source is in the child's record. What the library packages read from
# the environment as they load is what they would read in any one function: the functions differ
# only in the project's own variables (tables, queues, OMS_*), which the fixture asserts. Each
# library imported once instead of 18 times saved about 3.5 s of CPU (0.2 s a function); a fresh
# interpreter per function cost 60 ms of CPU more each (start-up and the check's own imports).
IMPORT_CHECK = """
import importlib, importlib.metadata, json, os, sys, sysconfig
import importlib._bootstrap_external as external

artifact, layer, outputs = sys.argv[1:4]
functions, libraries = json.loads(sys.stdin.read())  # [[name, handler, environment]], [package]
compiled = []
source_to_code = external.SourceLoader.source_to_code


def spy(self, data, path, *args, **kwargs):
    compiled.append(path)
    return source_to_code(self, data, path, *args, **kwargs)


def check(handler):
    module, attribute = handler.rsplit(".", 1)
    function = getattr(importlib.import_module(module), attribute)
    plugins = {}
    for entry_point in importlib.metadata.entry_points(group="oms"):
        entry_point.load()
        plugins[entry_point.name] = str(entry_point.dist.locate_file(""))
    allowed = (artifact, layer, sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"))
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    print(json.dumps({
        "callable": callable(function),
        "plugins": plugins,
        "outside": sorted(f for f in files if f and not f.startswith(allowed)),
        "compiled_from_source": [path for path in compiled if path.startswith((artifact, layer))],
    }))


def child(name, handler, environment):
    for fd, suffix in ((1, "out"), (2, "err")):
        os.dup2(os.open(os.path.join(outputs, f"{name}.{suffix}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.environ.clear()
    os.environ.update(environment)
    code = 0
    try:
        check(handler)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


sys.path[:0] = [artifact, layer]
external.SourceLoader.source_to_code = spy
for package in libraries:
    importlib.import_module(package)
running, codes = {}, {}
for name, handler, environment in functions:
    if len(running) >= (os.cpu_count() or 1):
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    pid = os.fork()
    if pid == 0:
        child(name, handler, environment)
    running[pid] = name
while running:
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def unzipped(built: Built) -> Built:
    """As Lambda unzips them: a zip keeps file times to 2 seconds, so no source has its build time."""
    for path in [*built.function.rglob("*.py"), *built.importable_layer.rglob("*.py")]:
        os.utime(path, (1_000_000_000, 1_000_000_001))
    return built


@pytest.fixture(scope="module")
def imported(unzipped: Built) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each function's handler imported in a process of its own, forked from one isolated
    interpreter that had imported only the check's own modules and the layer's library packages
    (IMPORT_CHECK says why), with the function's environment (and nothing else): as many side by
    side as there are CPUs; each test reads its own."""
    outputs = unzipped.base / "imports"
    outputs.mkdir()
    environments = {name: {**_LAMBDA_ENVIRONMENT, **_template_environment(name)} for name in sorted(FUNCTIONS)}
    shared = dict(set.intersection(*(set(environment.items()) for environment in environments.values())))
    differing = {key for environment in environments.values() for key in environment} - set(shared)
    assert differing and not {key for key in differing if key.startswith(_LIBRARY_VARIABLES)}, differing
    functions = [[name, FUNCTIONS[name]["Properties"]["Handler"], environments[name]] for name in sorted(FUNCTIONS)]
    command = [sys.executable, "-I", "-S", "-c", IMPORT_CHECK, str(unzipped.function), str(unzipped.importable_layer)]
    command.append(str(outputs))
    zygote = subprocess.run(
        command,
        input=json.dumps([functions, _library_packages(unzipped.importable_layer)]),
        cwd=unzipped.base,
        env=shared,
        capture_output=True,
        text=True,
    )
    assert zygote.returncode == 0, zygote.stderr
    codes = json.loads(zygote.stdout)
    return {
        name: subprocess.CompletedProcess(
            [*command, name],
            codes[name],
            (outputs / f"{name}.out").read_text(),
            (outputs / f"{name}.err").read_text(),
        )
        for name in sorted(FUNCTIONS)
    }


# What every function's process has besides the template's variables.
_LAMBDA_ENVIRONMENT = {"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1"}
# The prefixes of the variables the layer's libraries read (powertools, pydantic, botocore, boto3).
_LIBRARY_VARIABLES = ("POWERTOOLS_", "PYDANTIC_", "AWS_", "BOTO")


def _library_packages(site: Path) -> list[str]:
    """The top-level modules of the layer's distributions but the plugins (which the oms entry
    points load in each function's process)."""
    packages = set()
    for dist_info in site.glob("*.dist-info"):
        entry_points = dist_info / "entry_points.txt"
        if entry_points.is_file() and "[oms]" in entry_points.read_text():
            continue
        modules = {name.removesuffix(".py") for name in _top_level_names(dist_info)}
        packages |= {module for module in modules if "." not in module}  # not the dist-info
    return sorted(packages)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_handler_imports_from_its_artifact_and_the_layer_alone(
    unzipped: Built, imported: dict[str, subprocess.CompletedProcess[str]], name: str
):
    result = imported[name]
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["callable"]
    assert seen["outside"] == []
    assert seen["compiled_from_source"] == [], "the shipped .pyc were not used"
    assert set(seen["plugins"]) >= BUILT_IN_PLUGINS
    assert {seen["plugins"][plugin] for plugin in BUILT_IN_PLUGINS} == {str(unzipped.function)}
    assert seen["plugins"][TEST_PLUGIN] == str(unzipped.importable_layer)


def _template_environment(name: str) -> dict[str, str]:
    """The function's environment as the template sets it: parameters at their defaults, other
    references as placeholders."""
    variables = {
        **TEMPLATE["Globals"]["Function"].get("Environment", {}).get("Variables", {}),
        **FUNCTIONS[name]["Properties"].get("Environment", {}).get("Variables", {}),
    }
    parameters = TEMPLATE.get("Parameters", {})

    def resolve(key: str, value: object) -> str:
        if isinstance(value, dict) and "Default" in parameters.get(value.get("Ref"), {}):
            return str(parameters[value["Ref"]]["Default"])
        return value if isinstance(value, str) else f"placeholder-{key.lower()}"

    return {key: resolve(key, value) for key, value in variables.items()}


# --- make build's own check reads sam build's output --------------------------------------------


def test_the_check_make_build_runs_passes_the_build_and_names_an_x86_binary(built: Built, tmp_path: Path):
    build_dir = tmp_path / "sam-build"
    shutil.copytree(built.function, build_dir / "ApiFunction")
    (build_dir / "DependenciesLayer").mkdir()
    (build_dir / "DependenciesLayer" / LAYER_SUBDIR).symlink_to(built.layer)
    _write_built_template(build_dir)
    assert built_problems(build_dir) == []

    x86 = bytearray(64)
    x86[:4], x86[4], x86[5], x86[18:20] = b"\x7fELF", 2, 1, (62).to_bytes(2, "little")
    (build_dir / "ApiFunction" / "core" / "_speedups.cpython-311-x86_64-linux-gnu.so").write_bytes(bytes(x86))
    # The shared code directory is checked once, named by the first function (sorted) that uses it.
    assert built_problems(build_dir) == [
        f"{min(FUNCTIONS)}: core/_speedups.cpython-311-x86_64-linux-gnu.so: ELF machine 62, not aarch64 (183)"
    ]


def test_the_check_names_a_layer_package_whose_pydantic_plugin_the_template_turns_off(built: Built, tmp_path: Path):
    # Every function runs with PYDANTIC_DISABLE_PLUGINS=__all__ (template.yaml's Globals): a plugins.txt
    # package that brings a pydantic plugin (a tracer's, say) would be silently off on AWS.
    build_dir = tmp_path / "sam-build"
    shutil.copytree(built.function, build_dir / "ApiFunction")
    dist_info = build_dir / "DependenciesLayer" / LAYER_SUBDIR / "tracer-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\n")
    (dist_info / "entry_points.txt").write_text("[console_scripts]\ntracer = tracer:main\n")
    _write_built_template(build_dir)
    assert TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["PYDANTIC_DISABLE_PLUGINS"] == "__all__"
    assert built_problems(build_dir) == []

    (dist_info / "entry_points.txt").write_text(
        "[console_scripts]\ntracer = tracer:main\n\n[pydantic]\ntracer = tracer.pydantic:plugin\n"
    )
    assert built_problems(build_dir) == [
        "DependenciesLayer: tracer-1.0.dist-info: declares a pydantic plugin, which PYDANTIC_DISABLE_PLUGINS turns off"
    ]

    # A template that leaves pydantic's plugins on runs it: nothing to say.
    variables = dict(TEMPLATE["Globals"]["Function"]["Environment"]["Variables"])
    del variables["PYDANTIC_DISABLE_PLUGINS"]
    plugins_on = {
        **TEMPLATE["Globals"],
        "Function": {**TEMPLATE["Globals"]["Function"], "Environment": {"Variables": variables}},
    }
    _write_built_template(build_dir, Globals=plugins_on)
    assert built_problems(build_dir) == []


def test_the_check_names_each_function_over_lambdas_limit_with_the_layer_it_uses(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    build_dir = tmp_path / "sam-build"
    build_dir.mkdir()
    (build_dir / "ApiFunction").symlink_to(built.function)
    (build_dir / "DependenciesLayer").symlink_to(built.layer.parent)
    _write_built_template(build_dir)
    files = [*built.function.rglob("*"), *built.layer.parent.rglob("*")]
    unzipped = sum(path.stat().st_size for path in files if path.is_file())
    monkeypatch.setattr(check_artifacts, "LAMBDA_UNZIPPED_LIMIT", unzipped)
    assert built_problems(build_dir) == []

    monkeypatch.setattr(check_artifacts, "LAMBDA_UNZIPPED_LIMIT", unzipped - 1)
    over = f"{unzipped / 2**20:.0f} MiB unzipped with its layers, over Lambda's 250 MB"
    assert built_problems(build_dir) == [f"{name}: {over}" for name in sorted(FUNCTIONS)]


def _write_built_template(build_dir: Path, **changes: object) -> None:
    """The template sam build writes, for a build directory whose every function's code is
    ApiFunction/ and whose layer is DependenciesLayer/ (with `changes` to its top-level keys)."""
    import yaml

    resources = {
        name: {**res, "Properties": {**res["Properties"], "CodeUri": "ApiFunction"}} for name, res in FUNCTIONS.items()
    }
    resources["DependenciesLayer"] = {**LAYERS["DependenciesLayer"], "Properties": {"ContentUri": "DependenciesLayer"}}
    (build_dir / "template.yaml").write_text(yaml.safe_dump({**TEMPLATE, "Resources": resources, **changes}))


@dataclass
class SmallProject:
    root: Path
    wheels: Path  # build_function's cache
    artifact: Path  # its first build


@pytest.fixture(scope="module")
def small_project(tmp_path_factory: pytest.TempPathFactory) -> SmallProject:
    """A project of one package with a module in setuptools' build directory, built once."""
    base = tmp_path_factory.mktemp("small")
    project = base / "project"
    (project / "core").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "oms"\nversion = "0.1.0"\n'
        '[tool.setuptools.packages.find]\ninclude = ["core*"]\n'
    )
    (project / "core" / "__init__.py").write_text("")
    (project / "core" / "kept.py").write_text("")
    # What an in-tree `pip install .` leaves behind; a later in-tree build ships it again.
    (project / "build" / "lib" / "core").mkdir(parents=True)
    (project / "build" / "lib" / "core" / "deleted.py").write_text("")
    build_function(base / "artifact", project, cache=base / "wheels")
    return SmallProject(project, base / "wheels", base / "artifact")


def test_a_module_left_in_setuptools_build_directory_never_reaches_the_artifact(
    small_project: SmallProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (wheel,) = small_project.wheels.glob("*/*.whl")
    compiled: list[Path] = []
    monkeypatch.setattr(build, "compile_tree", compiled.append)
    build_function(tmp_path / "again", small_project.root, cache=small_project.wheels)

    assert (small_project.artifact / "core" / "kept.py").is_file()
    assert not (small_project.artifact / "core" / "deleted.py").exists()
    assert list(small_project.wheels.glob("*/*.whl")) == [wheel]  # the same sources: the cached wheel
    assert compiled == []  # and its compiled tree, copied
    assert _files(tmp_path / "again") == _files(small_project.artifact)


def test_a_source_changed_after_a_build_reaches_the_next_builds_artifact_compiled(
    small_project: SmallProject, tmp_path: Path
):
    project, wheels = tmp_path / "project", tmp_path / "wheels"
    shutil.copytree(small_project.root, project)
    shutil.copytree(small_project.wheels, wheels)  # what the first build left: its wheel and tree
    changed = b"ANSWER = 42\n"
    (project / "core" / "kept.py").write_bytes(changed)

    build_function(tmp_path / "artifact", project, cache=wheels)

    assert (tmp_path / "artifact" / "core" / "kept.py").read_bytes() == changed
    pyc = (tmp_path / "artifact" / "core" / "__pycache__" / "kept.cpython-311.pyc").read_bytes()
    assert pyc[8:16] == importlib.util.source_hash(changed)  # compiled from the changed source


def _files(directory: Path) -> dict[str, bytes]:
    files = (path for path in directory.rglob("*") if path.is_file())
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in files}


def test_a_function_carries_the_digest_of_botocores_endpoints_its_first_client_reads(built: Built):
    # The artifact `make build-ApiFunction` made (build_function's, as sam build calls it): a build
    # of its own here was a second setuptools wheel of the project, about 4 s of CPU.
    digest = built.function / "functions" / "adapters" / "botocore-endpoints.json"
    written = json.loads(digest.read_text())
    assert written["botocore"] == botocore.__version__
    assert {"dynamodb", "s3", "sqs", "states"} <= set(written["endpoints"]["partitions"][0]["services"])
    record = (built.function / "oms-0.1.0.dist-info" / "RECORD").read_text()
    assert "functions/adapters/botocore-endpoints.json," in record
