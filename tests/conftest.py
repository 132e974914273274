"""Settings shared by the whole suite."""

import collections
import copy
import functools
import gc
import importlib.metadata
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pluggy
import pytest
from hypothesis import settings
from moto.core.models import MockAWS

import infra.check_template as check_template_module
import infra.local.template as template_module
from core import plugin_manager
from infra.local.moto_patches import AppliedBy, patches_applied_by
from infra.local.stack import EmbeddedStack
from tests import client_pool, request_signing

# The cyclic collector's youngest generation collected every 10,000 allocations net, not 700: a moto
# request allocates thousands of short-lived objects (werkzeug's request, the parsed and serialized
# bodies, the validator's trees), and at 700 the collector ran every few requests and promoted whatever
# was alive mid-request to the older generations, to be walked again there. Measured (gc.callbacks,
# process time) over tests/integration/test_import_worker.py and test_reconciler.py, -p no:xdist: 4.6 s
# of 37 s in 2,589 collections, and 1.9 s in 155 at 10,000 (1.8 s at 3,000, 1.5 s at 30,000); as many
# botocore clients served again (tests/client_pool.py counts a held one by its references). A cycle
# lives a few thousand allocations longer; nothing in the suite waits on one.
gc.set_threshold(10_000, *gc.get_threshold()[1:])


def pytest_configure(config: pytest.Config) -> None:
    """The authorizer's Logger built once, now, on the stdout the session's capture gives every
    test: powertools binds a service's handler to the sys.stdout it is first built on, and the
    authorizer builds its own at its first refusal (functions/authorizer/app.py, logger(), kept for
    the process). Built by a refusal in a test under capsys, it wrote each later refusal to that
    test's capture once closed: "--- Logging error --- ValueError: I/O operation on closed file" on
    the stderr of the next capsys test that refused a key (test_import_file_key_check.py, one fresh
    clone's run: its one-line refusal was 109 lines)."""
    from functions.authorizer.app import logger

    logger()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """What the session left to the collector freed once, after the last fixture's teardown, then
    every object alive out of the collector's later walks (gc.freeze): pytest's unconfigure and its
    cleanup each run a full collection, after an xdist worker has told the controller it finished,
    and execnet interrupts a worker still running 5 s after that (a SIGINT: a KeyboardInterrupt
    raised in whatever ran, hypothesis's gc callback, an unraisable-exception warning). Each walked
    the worker's whole heap: at a `make test` worker's end (1.8-2.9 million objects, 2 workers on a
    loaded machine) 11-14 s each. Whatever the tests left to raise in a finalizer is raised in this
    collection, where pytest's unraisable-exception hook still reports it."""
    gc.collect()
    gc.freeze()


# No per-example deadline: on a loaded 2-core machine a 200 ms example is a scheduling accident, not
# a bug. Properties still fail on what they assert; `make bench` is where time is measured.
settings.register_profile("oms", deadline=None)
settings.load_profile("oms")

# Every local stack the suite starts delivers a batch as soon as it is fetched, not after the
# template's batching windows (up to 1 s a hop; infra/local/event_sources.py): a journey through
# streams would wait seconds. tests/integration/test_local_event_sources.py gathers with windows of
# its own. A shell that exports the variable runs the suite with it.
os.environ.setdefault("OMS_BATCHING_WINDOW_SCALE", "0")

# The service name every function of the suite runs under, in the process from its start: a
# function's module builds its Logger and Metrics at import with the POWERTOOLS_SERVICE_NAME it reads
# then (as on Lambda, where the variable is always set), and stays imported for the rest of the
# worker's run. Set only by the `aws` fixture, the first test on a worker to import a function
# decided for all the later ones: one without the fixture left the function's metrics without the
# `service` dimension its alarms name (tests/integration/test_reconciler.py's metrics failed after
# test_the_reconcilers_timeout_leaves_its_passes_time_beyond_the_reserve imported the reconciler),
# and its log lines with "service_undefined". tests/integration/conftest.py's FUNCTION_ENV sets it too.
FUNCTIONS_SERVICE = "oms-test"
os.environ["POWERTOOLS_SERVICE_NAME"] = FUNCTIONS_SERVICE


_parse_template = template_module.load_template
_translate = check_template_module.translate
# A few documents each, the most recent kept: the suite's templates are template.yaml and the edited
# copies a test writes, reads (check_template's main reads its file three times) and drops.
_KEPT = 4
_parsed: dict[bytes, dict[str, Any]] = {}
_translated: dict[str, dict[str, Any]] = {}


def _remembered(cache: dict[Any, dict[str, Any]], key: Any, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A deep copy of what `make` returned for `key` (made now if not kept): no caller can change
    what the next one gets. A `make` that raises is not kept."""
    if key not in cache:
        value = make()
        while len(cache) >= _KEPT:
            del cache[next(iter(cache))]
        cache[key] = value
    return _copied(cache[key])


_SHARED = (str, int, float, bool, type(None), bytes, date)  # immutable: shared by the copies


def _copied(value: Any) -> Any:
    """A deep copy of a parsed or translated template (dicts, lists and scalars: 2-3x cheaper than
    copy.deepcopy's memo and dispatch, a template being copied at every stack and in-process API);
    anything else it might hold is copied by copy.deepcopy."""
    if type(value) is dict:
        return {key: _copied(item) for key, item in value.items()}
    if type(value) is list:
        return [_copied(item) for item in value]
    return value if isinstance(value, _SHARED) else copy.deepcopy(value)


def _load_template_parsed_once(path: str | Path | None = None) -> dict[str, Any]:
    """infra.local.template.load_template, parsing each template text once per test process: the
    suite read template.yaml some 40 times per worker (each stack, in-process API and module that
    looks at it), and check_template's main reads an edited copy three times (itself, its schedule
    and state machine checks): 0.2-1 s of pure-Python YAML each. The document is a function of the
    text alone (a path names the file only in the errors, which are never kept)."""
    text = Path(path or template_module.DEFAULT_TEMPLATE).read_bytes()
    return _remembered(_parsed, text, lambda: _parse_template(path))


def _translate_once(template: dict[str, Any]) -> dict[str, Any]:
    """infra.check_template.translate, running the SAM transform once per test process for each
    document: template.yaml (or a copy of it with only an ASL file changed) was transformed by
    check_template's main in three tests and by the state machine grant tests, 0.4-3 s each.
    Keyed by the document's repr, which keeps its keys' order and its values' types."""
    return _remembered(_translated, repr(template), lambda: _translate(template))


# Installed before any test module imports them (this conftest is imported first), so Template.load,
# `from infra.local.template import load_template` and `from infra.check_template import translate`
# all see them.
template_module.load_template = _load_template_parsed_once
check_template_module.translate = _translate_once


# moto's own answers, more cheaply, wherever the suite runs moto: the local stacks apply the patches
# that change no answer themselves (infra/local/stack.py); the in-process tests' plain mock_aws()
# gets those that say `AppliedBy.MOCK_AWS` too, from its outermost start to its stop (counted, so a
# stack inside shares them):
# `response_keys` (moto's serializer) and `transactions` (moto deep-copies every table a
# TransactWriteItems names, every item and stream record, before it starts: with the patch, the
# purchasing, hot SKU and two DynamoDB busy/history files took 7 % less CPU, the four files
# h438 measured 2 %) and `update_expressions` (moto parses every UpdateExpression twice per
# UpdateItem and validates it in passes that rebuild their maps at every node: 17 % less CPU per
# UpdateItem of five actions) and `action_names` (moto listed every function of the response class,
# through inspect.getmembers, for every request it served) and `callback_responses` (each start
# registers the ~1,300 response objects the first one made instead of making them again: 200 empty
# mock_aws() starts and stops in a process with this conftest took 1.5 ms of CPU each instead of
# 4.8; the suite's alone: a stack start takes 450-650 ms, and `make run` starts moto once).
MOCK_AWS_PATCHES = patches_applied_by(AppliedBy.MOCK_AWS)


def _enable_patching_with_mock_aws_patches(self: MockAWS, *args: Any, **kwargs: Any) -> None:
    applied = []
    try:
        for patch in MOCK_AWS_PATCHES:
            patch.apply()
            applied.append(patch)
        _enable_patching(self, *args, **kwargs)
    except BaseException:
        for patch in reversed(applied):
            patch.undo()
        raise


def _disable_patching_with_mock_aws_patches(self: MockAWS, *args: Any, **kwargs: Any) -> None:
    try:
        _disable_patching(self, *args, **kwargs)
    finally:
        for patch in reversed(MOCK_AWS_PATCHES):
            patch.undo()


_enable_patching, _disable_patching = MockAWS._enable_patching, MockAWS._disable_patching
MockAWS._enable_patching = _enable_patching_with_mock_aws_patches  # type: ignore[method-assign]
MockAWS._disable_patching = _disable_patching_with_mock_aws_patches  # type: ignore[method-assign]


# moto's Step Functions interpreter imports moto.batch.utils, and moto.batch's own body imports all
# of moto.ec2 (~1 s of CPU): the `batch_package` patch defers that body to its first use. Applied
# (as every patch that says `AppliedBy.TEST_PROCESS`) for the whole test process, from before any
# test module is imported: the interpreter is imported outside any mock too (infra/asl.py's checks,
# the tests of moto's interpreter), and the first import decides for the process. PROCESS_PATCHES
# stay applied after every stack's stop.
PROCESS_PATCHES = patches_applied_by(AppliedBy.TEST_PROCESS)
for _patch in PROCESS_PATCHES:
    _patch.apply()


# Every botocore client the suite builds (the functions' after each account's reset of the
# composition root, the tests' own, moto's Step Functions interpreter's) is served again, for the
# same arguments on the same session, once nothing holds it and nothing touched it
# (tests/client_pool.py): a client cost 3.5-7 ms of CPU, some 8 % of the integration tests' CPU.
client_pool.install()


# Requests to moto carry SigV4's Authorization header without its HMAC, which moto never checks
# unless its IAM authentication is on (then, and for presigned URLs, botocore signs as ever): 5.8 % of
# the CPU of eight moto-heavy test files (tests/request_signing.py).
request_signing.install()


# The `oms` entry points (functions/plugin_loading.py reads them at every plugin manager it loads: every
# container after each account's reset of the composition root, every in-process API) read once per
# process while sys.path holds only what it held when this conftest was imported: the venv, the
# standard library and the project, none of which a test writes a distribution into.
# importlib.metadata.entry_points parses every installed distribution's metadata at each call: 1.0-3.9
# % of the CPU of the integration files profiled (py-spy; test_reconciler 3.9 %). With a directory a
# test put on sys.path (tests/installed.py's plugin distributions), each call reads them all again.
_STARTING_PATH = frozenset(sys.path)
_entry_points = importlib.metadata.entry_points
_read_entry_points: dict[tuple[tuple[str, ...], str | None], Any] = {}


def _entry_points_read_once(**params: Any) -> Any:
    if set(params) != {"group"} or not _STARTING_PATH.issuperset(sys.path):
        return _entry_points(**params)
    key = (tuple(sys.path), params.get("group"))
    if key not in _read_entry_points:
        _read_entry_points[key] = _entry_points(**params)
    return _read_entry_points[key]


importlib.metadata.entry_points = _entry_points_read_once  # type: ignore[assignment]


# A plugin manager costs 3-6 ms of CPU to build (tests/unit's `plugins` fixture, every world, every service a
# test builds over the built-ins and its own plugins: 594 of them in test_unit_cancellation.py's and
# test_returns.py's 378 tests, a third of those tests' CPU), and most of it went on two answers that
# depend only on what is asked, read again at each registration of the same plugin: pluggy's hook
# options of each attribute (inspect.getattr_static's walk, 44 % of a world's build) and whether a
# plugin module is a built-in (its file's Path.resolve(), 14 %). Both are kept here per test process,
# each asked of pluggy and of core.plugin_manager.built_in the first time, as they answer it:
# - pluggy's options of an attribute are its marker's own dict (the same object at every parse),
#   found on what pluggy's static lookup finds: a module's own attribute; an instance's class
#   attribute (none of its own, no slot). The key is that attribute itself (a function, static or
#   class method, bound method), so a plugin whose attribute is replaced is parsed again; any other
#   lookup (a class as a plugin, an instance's own attribute, a slot, an unhashable) is pluggy's.
# - a module's file names the same directory whatever asks (a test's module under the built-ins'
#   directory, tests/unit/test_plugin_copies.py, is keyed by its own file).
_ABSENT = object()
_parse_hookimpl_opts = pluggy.PluginManager.parse_hookimpl_opts
_opts: dict[tuple[str, object], Any] = {}


def _static_attribute(plugin: object, name: str) -> object:
    """What pluggy's static lookup finds for `name` on `plugin`, where it is a plain attribute of
    the module or of the instance's class; _ABSENT where pluggy looks further."""
    if isinstance(plugin, types.ModuleType):
        return vars(plugin).get(name, _ABSENT)
    if isinstance(plugin, type):
        return _ABSENT
    try:
        own = object.__getattribute__(plugin, "__dict__")
    except AttributeError:
        own = {}
    if name in own:
        return _ABSENT
    found = next((vars(klass)[name] for klass in type(plugin).__mro__ if name in vars(klass)), _ABSENT)
    return _ABSENT if isinstance(found, types.MemberDescriptorType) else found


def _parse_hookimpl_opts_once(self: pluggy.PluginManager, plugin: object, name: str) -> Any:
    attribute = _static_attribute(plugin, name)
    key = (self.project_name, attribute)
    try:
        if attribute is not _ABSENT and key in _opts:
            return _opts[key]
    except TypeError:  # unhashable
        return _parse_hookimpl_opts(self, plugin, name)
    opts = _parse_hookimpl_opts(self, plugin, name)
    if attribute is not _ABSENT:
        _opts[key] = opts
    return opts


pluggy.PluginManager.parse_hookimpl_opts = _parse_hookimpl_opts_once  # type: ignore[method-assign]

_built_in = plugin_manager.built_in
_built_in_files: dict[str, bool] = {}


def _built_in_once(plugin: object) -> bool:
    file = getattr(plugin, "__file__", None) if isinstance(plugin, types.ModuleType) else None
    if not isinstance(file, str):
        return _built_in(plugin)
    if file not in _built_in_files:
        _built_in_files[file] = _built_in(plugin)
    return _built_in_files[file]


plugin_manager.built_in = _built_in_once


_METRICS_DISABLED = "POWERTOOLS_METRICS_DISABLED"


def forget_business_metrics() -> None:
    """Drop the business metric points recorded on this thread and not printed yet: a test that
    calls services directly records them (MeteredOrders) outside any handler, and the next handler
    that prints its own (emits_business_metrics) would print those too. The one variable set and
    put back by hand: mock.patch.dict copied and restored the whole environment, 0.18 ms of CPU at
    every test of the suite (3,000 empty tests: 4.2 s of CPU, 3.7 s now)."""
    from functions.business_metrics import flush

    before = os.environ.get(_METRICS_DISABLED)
    os.environ[_METRICS_DISABLED] = "true"
    try:
        flush()
    finally:
        if before is None:
            del os.environ[_METRICS_DISABLED]
        else:
            os.environ[_METRICS_DISABLED] = before


@pytest.fixture(autouse=True)
def no_business_metrics_from_an_earlier_test() -> None:
    forget_business_metrics()


# The plugin manager hands built-in plugins the arguments themselves, uncopied, on the promise that
# none changes what it is given (core/plugin_manager.py). Every hook call in the suite that only
# built-ins answer is checked against that promise: its arguments as they were before the call
# must equal them after it. A broken promise fails the test that made the call.
_broken_promises: list[str] = []
_calls = threading.local()


def _before_hook(
    manager: plugin_manager.OmsPluginManager, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, object]
) -> None:
    stack = _calls.__dict__.setdefault("stack", [])
    if not manager.only_built_ins(impls):
        stack.append(None)
        return
    # Values that cannot say whether they equal their copy (no __eq__ of their own) are left out.
    comparable = {name: value for name, value in kwargs.items() if type(value).__eq__ is not object.__eq__}
    stack.append(copy.deepcopy(comparable))


def _after_hook(outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, object]) -> None:
    before = _calls.stack.pop()
    for name, value in (before or {}).items():
        if kwargs[name] != value:
            plugins = ", ".join(impl.plugin_name for impl in impls)
            _broken_promises.append(f"{hook_name}({name}=...) was changed by a built-in plugin: {plugins}")


_manager_init = plugin_manager.OmsPluginManager.__init__


def _checked_manager_init(self: plugin_manager.OmsPluginManager) -> None:
    _manager_init(self)
    # Around the manager's own monitoring: it sees the arguments before any copy is made.
    self.add_hookcall_monitoring(functools.partial(_before_hook, self), _after_hook)


plugin_manager.OmsPluginManager.__init__ = _checked_manager_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def built_in_plugins_leave_their_arguments_unchanged() -> Iterator[None]:
    _broken_promises.clear()
    yield
    assert not _broken_promises, _broken_promises


@pytest.fixture(autouse=True)
def no_authorizations_from_an_earlier_test() -> None:
    """The `test` gateway remembers the keys it approved in this process (for
    oms_payment_find_authorization); tests place orders with the same ids again."""
    from plugins import test_payments

    test_payments.forget()


# Every local stack the suite starts (infra.local.stack.EmbeddedStack: the e2e modules', and those
# integration tests start, on template.yaml, an edited copy or a template of their own; and the
# in-process API, tests/integration/in_process.py) records each AWS call its functions make, as the
# grant it needs (tests/template_iam.py), from its start to its stop: moto lets through every call
# AWS would refuse as AccessDenied. A call its template does not grant its function fails the test
# that made it, naming the function, the action and the resource: the test itself when made while
# it ran or by what it set going (its stack's pollers and executions, waited for at its end), its
# setup or teardown when made there, or the stack's stop.
def _watched_start(self: EmbeddedStack) -> EmbeddedStack:
    import boto3

    from tests.template_iam import watch

    watch(self)
    started = _stack_start(self)
    # A started stack's session is boto3's default until it stops (infra/local/process.py).
    client_pool.serving(self.aws_port, boto3.DEFAULT_SESSION._session)
    return started


def _watched_stop(self: EmbeddedStack) -> None:
    from tests.template_iam import not_granted_message, unwatch

    try:
        _stack_stop(self)
    finally:
        if self.aws_port is not None:
            client_pool.stopped(self.aws_port)
        found = unwatch(self)
    assert not found, not_granted_message(found, "made by a local stack's functions before it stopped")


_stack_start, _stack_stop = EmbeddedStack.start, EmbeddedStack.stop
EmbeddedStack.start = _watched_start  # type: ignore[method-assign]
EmbeddedStack.stop = _watched_stop  # type: ignore[method-assign]

# How long a test's end waits for what it set going on a stack to finish (most are idle at once).
SETTLE_SECONDS = 5


def _only_granted_calls(when: str, settle_seconds: float) -> Iterator[None]:
    """Around a test's setup, call or teardown (a hook wrapper): the calls not granted made during
    it fail it there, the test's own failure (if any) kept with them in a note; a skip, an xfail or
    a pytest.fail (whose notes pytest does not show) becomes a failure naming them."""
    try:
        result = yield
    except BaseException as failed:
        found = _not_granted(settle_seconds)
        if found and isinstance(failed, Exception):
            failed.add_note(_not_granted_message(found, when))
        elif found and isinstance(failed, pytest.fail.Exception | pytest.skip.Exception | pytest.xfail.Exception):
            pytest.fail(f"{_not_granted_message(found, when)}\n(and the test said: {failed})", pytrace=False)
        raise
    found = _not_granted(settle_seconds)
    if found:
        pytest.fail(_not_granted_message(found, when), pytrace=False)
    return result


def _not_granted(settle_seconds: float) -> list[str]:
    if "tests.template_iam" not in sys.modules:  # no stack started in this process yet
        return []
    from tests.template_iam import not_granted_anywhere

    return not_granted_anywhere(settle_seconds)


def _not_granted_message(found: list[str], when: str) -> str:
    from tests.template_iam import not_granted_message

    return not_granted_message(found, f"made by a local stack's functions {when}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _only_granted_calls("while this test was set up", 0))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _only_granted_calls("while this test ran (or for what it set going)", SETTLE_SECONDS))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    return (yield from _only_granted_calls("while this test was torn down", SETTLE_SECONDS))


# The files `make test` deals out first (`-n 3 --dist loadfile --no-loadscope-reorder`): the
# costliest, costliest first, measured per file over a whole run (percent of the suite's test time,
# each test's setup, call and teardown as `--durations=0` gives them, in a CI run of a fresh clone
# of 273e4aab on 2026-12-07, 12,312 tests, 1,128 s over three workers; test_backorders and
# test_reorder_points, made cheaper since, scaled by their CPU measured alone before and after);
# those of 1 % or more, and those of 0.5 % or more in five tests or fewer. xdist's loadfile hands
# a worker one whole file at a time, in the order the workers collected them; by its own rule
# (most tests first) a heavy file of a few slow tests (the build's artifacts, the stateful runs,
# the journeys) was dealt near the end and ran on while the other workers sat idle: in a run on a
# shared machine, the first worker done idled for 2.0 % of the run, against 0.9 % in two runs with
# this order. The rest follow xdist's rule. A file named here that is gone or got cheaper costs
# nothing but its place; a new heavy file belongs here. Dealing the 2026-12-06 run's tests out
# again in a model of the scheduler (each test's measured time, each file's scaled at random by
# 0.7-1.3, 300 deals): the run's end past an even split was 2.9 % (worst 6.3 %) with the list of
# 2026-12-05, which missed test_reorder_stateful's one 11 s test and the runbooks' five; 1.5 %
# (worst 3.7 %) with the files of 1 % alone; 0.2 % (worst 0.7 %) with the few-test files too.
HEAVY_FILES = (
    "tests/integration/test_backorders.py",  # 3.2 %
    "tests/integration/test_build_artifacts.py",  # 3.1 %
    "tests/integration/test_reorder_points.py",  # 2.6 %
    "tests/integration/test_import_worker.py",  # 2.1 %
    "tests/e2e/test_schemathesis.py",  # 1.9 % (1 test)
    "tests/e2e/test_webhooks.py",  # 1.7 % (3 tests)
    "tests/integration/test_reconciler.py",  # 1.7 %
    "tests/integration/test_largest_order_returns_api.py",  # 1.7 % (2 tests)
    "tests/integration/test_dynamodb_adapters.py",  # 1.6 %
    "tests/integration/test_conventions_on_every_route.py",  # 1.6 %
    "tests/integration/test_aggregates_money_journeys.py",  # 1.6 %
    "tests/integration/test_local_event_sources.py",  # 1.6 %
    "tests/integration/test_local_runtime.py",  # 1.4 %
    "tests/integration/test_return_workflow_in_interpreter.py",  # 1.4 %
    "tests/integration/test_moto_patches.py",  # 1.3 %
    "tests/integration/test_workflow_in_interpreter.py",  # 1.3 %
    "tests/e2e/test_order_workflow.py",  # 1.3 %
    "tests/integration/test_events_and_webhooks.py",  # 1.3 %
    "tests/integration/test_reject_partly_shipped_api.py",  # 1.1 %
    "tests/unit/test_aws_limits_order_item.py",  # 1.1 %
    "tests/integration/test_access_control.py",  # 1.0 %
    "tests/integration/test_returns_whole_order_shipping.py",  # 1.0 %
    "tests/integration/test_redelivery_matrix.py",  # 1.0 %
    "tests/e2e/test_allocation_race.py",  # 1.0 % (1 test)
    "tests/integration/test_largest_order_journey_api.py",  # 1.0 % (4 tests)
    "tests/integration/test_cross_feature_stateful.py",  # 1.0 % (4 tests)
    "tests/e2e/test_runbooks.py",  # 1.0 % (3 tests)
    # Five tests or fewer under 1 %: by xdist's rule, dealt last.
    "tests/e2e/test_returns.py",  # 0.9 % (4 tests)
    "tests/integration/test_event_data_as_shown.py",  # 0.9 % (4 tests)
    "tests/e2e/test_backorders.py",  # 0.7 % (3 tests)
    "tests/integration/test_aws_limits_responses.py",  # 0.7 % (4 tests)
    "tests/integration/test_cross_feature_counters.py",  # 0.6 % (1 test)
    "tests/e2e/test_access_control.py",  # 0.6 % (1 test)
    "tests/integration/test_reorder_stateful.py",  # 0.6 % (1 test)
    "tests/integration/test_api_cold_path.py",  # 0.5 % (4 tests)
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker, the files in HEAVY_FILES' order first, then the rest by their number of
    tests (most first; a tie keeps collection order), each file's tests in their own order. Every
    worker collects the same list, so every worker sorts it the same way."""
    if not hasattr(config, "workerinput"):
        return
    files = [item.nodeid.partition("::")[0] for item in items]
    counts = collections.Counter(files)
    rank = {path: index for index, path in enumerate(HEAVY_FILES)}
    order = {id(item): (rank.get(path, len(rank)), -counts[path]) for item, path in zip(items, files, strict=True)}
    items.sort(key=lambda item: order[id(item)])
