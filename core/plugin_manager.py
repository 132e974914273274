"""Builds the pluggy plugin manager: the hookspecs, the plugins it is handed one at a time, copies
of the arguments for every hook call that other people's code answers.

Finding the installed plugins (the `oms` entry points, read from the distributions' metadata) is
the deployment's: functions/plugin_loading.py reads them and hands each over as a PluginSource."""

import copy
import datetime
import enum
import types
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import pluggy
from pydantic import BaseModel, Field

from core import PROJECT, hookspecs
from core.errors import PluginUnavailable
from core.fields import empty_list
from core.hook_calls import plugin_words, printed, recording
from core.models import PAYMENT_METHOD, Shown
from core.money import Money

# The built-in gateway that approves any `tok_approve`: a deployment that loaded it by accident
# would ship goods it was never paid for, so it loads only when asked for.
TEST_PAYMENTS = "test_payments"
TEST_PAYMENTS_OFF = "the test gateway pays on test tokens: it loads only with OMS_ENABLE_TEST_PAYMENTS=true"


class PluginSource(Protocol):
    """A plugin the deployment found, not loaded yet (functions/plugin_loading.py: an `oms` entry
    point): the name it registers under, how to load it, and where it comes from."""

    @property
    def name(self) -> str: ...

    def load(self) -> object:
        """Import the plugin: whatever the import raises, sys.exit too, is the plugin's failure."""
        ...

    def origin(self) -> tuple[str | None, str | None]:
        """The distribution that provides it and its version, (None, None) when unknown: asked only
        for GET /plugins and a broken plugin's report."""
        ...


class PluginInfo(Shown):
    """One plugin as GET /plugins lists it."""

    name: str = Field(description="The entry-point name (or the name code registered it under)")
    distribution: str | None = Field(default=None, description="The installed package that provides it")
    version: str | None = None
    status: Literal["loaded", "disabled", "broken"]
    hooks: list[str] = Field(default_factory=empty_list, description="The hooks it implements")
    ignored_hooks: list[str] = Field(
        default_factory=empty_list, description="optionalhook implementations of hooks this OMS does not have"
    )
    reason: str | None = Field(
        default=None,
        description="Why it is disabled or broken: a broken plugin's exception and its message, which can hold "
        "its configuration (a connection string, a host), so only this admin report and the log show it",
    )
    error: str | None = Field(default=None, description="A broken plugin's exception type (ModuleNotFoundError)")


def shown_reason(broken: PluginInfo) -> str:
    """Why `broken` failed to load as GET /health (anyone) and plugin_unavailable (any key) say
    it: its exception's type and where the reason is, never the exception's message, which can
    hold the plugin's configuration (a password in a connection string, a secret, a host name)."""
    return (
        f"{broken.error or 'an exception'} while loading: the reason is in the log line `plugin failed to load` "
        "and in GET /plugins (admin key)"
    )


class HookCall(BaseModel, defer_build=True):
    """One implementation of a hook, in the order pluggy calls them."""

    plugin: str
    wrapper: bool
    tryfirst: bool
    trylast: bool


class PluginReport(BaseModel, defer_build=True):
    plugins: list[PluginInfo]
    call_order: dict[str, list[HookCall]] = Field(
        description="Per hook, its implementations in the order they run: wrappers first, then tryfirst, "
        "then the others last-registered first, then trylast"
    )


# The built-in plugins: the modules of this project's own `plugins` package, which sits beside
# `core` in the repository and in every artifact (not its examples, distributions of their own).
# The suite checks that none changes what it is given (tests/conftest.py), so a hook only they
# answer gets the arguments themselves.
_BUILT_IN_DIRECTORY = Path(__file__).resolve().parent.parent / "plugins"


# What pluggy takes a hook implementation from (a plain function; staticmethod, classmethod or a
# bound method holding one): nothing else it finds on a plugin is hookable (pluggy's _static_hook_attr).
_HOOKABLE = (types.FunctionType, staticmethod, classmethod, types.MethodType)


def built_in(plugin: object) -> bool:
    """Whether `plugin` is one of this project's own plugin modules."""
    file = getattr(plugin, "__file__", None) if isinstance(plugin, types.ModuleType) else None
    return file is not None and Path(file).resolve().parent == _BUILT_IN_DIRECTORY


class OmsPluginManager(pluggy.PluginManager):
    """A PluginManager that gives a hook call deep copies of its arguments when any plugin but a
    built-in one takes them, refuses hook names that have no spec, records which plugins failed to
    load, and runs no hook while any has."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.broken: list[PluginInfo] = []
        self.disabled: dict[str, str] = {}  # name -> why
        self._load_errors: dict[str, BaseException] = {}  # a broken plugin's name -> what its load raised
        # name -> where it was loaded from; the distribution and version are asked of it only for
        # GET /plugins: parsing every distribution's metadata costs a cold start ~10 ms a plugin.
        self._sources: dict[str, PluginSource] = {}
        self._built_in: set[str] = set()  # the names of the built-in plugins registered
        # While a plugin registers: it, and each attribute's hook options as our check parsed them,
        # which pluggy's own walk over the same attributes is handed rather than parsing them again.
        self._parsing: tuple[object, dict[str, Any]] | None = None
        self.add_hookcall_monitoring(self._before_call, _after_call)

    # --- Loading ---------------------------------------------------------------------------------
    def disable(self, name: str, reason: str) -> None:
        """Never load the plugin called `name`, and say why in GET /plugins."""
        self.set_blocked(name)
        self.disabled[name] = reason

    def load(self, sources: Iterable[PluginSource]) -> None:
        """Load and register each of `sources`, one at a time: one that fails to load or to
        register is recorded in `broken` with the reason, and the others load regardless."""
        for source in sources:
            if self.is_blocked(source.name):
                self._sources[source.name] = source
                continue
            if self.has_plugin(source.name):
                continue
            try:
                self.register(source.load(), name=source.name)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # an import can raise anything, sys.exit too; none may stop the others
                error = plugin_words(type(exc).__name__)
                distribution, version = source.origin()
                self.broken.append(
                    PluginInfo(
                        name=source.name, distribution=distribution, version=version, status="broken",
                        reason=plugin_words(f"{error}: {printed(exc)}"), error=error,
                    )
                )  # fmt: skip
                self._load_errors[source.name] = exc
                continue
            self._sources[source.name] = source

    def load_error(self, name: str) -> BaseException | None:
        """What loading the broken plugin `name` raised, its traceback with it (for the log)."""
        return self._load_errors.get(name)

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """As pluggy's, but a hook name with no spec (a typo, or a hook of another OMS version) is
        refused unless the implementation says `optionalhook=True`, and each implementation is
        wrapped so call_hook can tell which plugin gave an answer."""
        outer, self._parsing = self._parsing, (plugin, {})
        try:
            unknown = [hook for hook, optional in self._implemented(plugin) if not optional and not self._known(hook)]
            if unknown:
                raise pluggy.PluginValidationError(
                    plugin,
                    f"unknown hook {', '.join(sorted(unknown))}: this OMS has no such hook (see the plugin guide)",
                )
            plugin_name = super().register(plugin, name)
        finally:
            self._parsing = outer
        refused = _refused_payment_methods(self, plugin) if plugin_name is not None else None
        if refused is not None:
            super().unregister(plugin)
            raise pluggy.PluginValidationError(plugin, refused)
        if plugin_name is not None:
            if built_in(plugin):
                self._built_in.add(plugin_name)
            for caller in self.get_hookcallers(plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                        impl.function = recording(impl.function, caller.name, plugin_name)  # type: ignore[misc]
        return plugin_name

    def _implemented(self, plugin: Any) -> list[tuple[str, bool]]:
        found = []
        for attribute in dir(plugin):
            opts = self.parse_hookimpl_opts(plugin, attribute)
            if opts is not None:
                found.append((opts.get("specname") or attribute, bool(opts.get("optionalhook"))))
        return found

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        """As pluggy's, parsed once per attribute of the plugin registering (our check, then
        pluggy's walk): each parse looks the attribute up statically (inspect.getattr_static)."""
        if type(plugin) is types.ModuleType and not isinstance(vars(plugin).get(name), _HOOKABLE):
            # A module's attribute is its own, as pluggy's static lookup finds it, and only these
            # types can carry a hook: the rest of what a plugin module imports or defines (models,
            # constants, modules; most of its names) is passed over without that lookup.
            return None
        parsing = self._parsing
        if parsing is None or parsing[0] is not plugin:
            return super().parse_hookimpl_opts(plugin, name)
        parsed = parsing[1]
        if name not in parsed:
            parsed[name] = super().parse_hookimpl_opts(plugin, name)
        return parsed[name]

    def _known(self, hook: str) -> bool:
        caller = getattr(self.hook, hook, None)
        return caller is not None and caller.has_spec()

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        self._built_in.discard(name or "")
        return super().unregister(plugin, name)

    # --- Calling ---------------------------------------------------------------------------------
    def require_loaded(self) -> None:
        """Raise PluginUnavailable while any plugin failed to load."""
        if self.broken:
            names = ", ".join(plugin.name for plugin in self.broken)
            raise PluginUnavailable(
                f"plugins failed to load: {names}. Nothing that calls a plugin runs until they load "
                "(fix or remove them) or are disabled (OMS_DISABLED_PLUGINS)",
                details=[
                    {"plugin": p.name, "distribution": p.distribution, "message": shown_reason(p)} for p in self.broken
                ],
            )

    def only_built_ins(self, impls: Sequence[Any]) -> bool:
        """Whether built-in plugins alone answer a call to `impls`, none of them as a wrapper."""
        return all(impl.plugin_name in self._built_in and not (impl.wrapper or impl.hookwrapper) for impl in impls)

    def _before_call(self, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, object]) -> None:
        # Any hook could be the one a broken plugin implements: running the others instead (the
        # built-in fallback carrier, the table tax) would give a silently wrong answer.
        self.require_loaded()
        # One memo for the call: the copied arguments share what the originals shared (a draft's
        # lines and the `line` being taxed), and a wrapper that edits them (a sourcing rule that
        # drops a location) changes what the implementations after it see, never stored data.
        # Only what some implementation takes is copied (pluggy passes each one its own argnames):
        # the tax hook's `draft`, which no built-in takes, would otherwise be copied once per line.
        # Built-in implementations leave their arguments as they found them (the suite checks it),
        # so a call only they answer copies nothing: on POST /orders, a sixth of our own CPU.
        # Otherwise everything some implementation takes is copied, the built-ins' arguments too,
        # so what the originals share the copies share.
        if self.only_built_ins(impls):
            return
        arguments = cast(dict[str, object], kwargs)  # pluggy's own dict for this call, used after us
        taken = {name for impl in impls for name in (*impl.argnames, *impl.kwargnames)}
        memo: dict[int, Any] = {}
        for name in list(arguments):
            if name in taken:
                arguments[name] = _copied(arguments[name], memo)

    # --- Reporting -------------------------------------------------------------------------------
    def report(self) -> PluginReport:
        loaded, disabled = [], []
        for name, plugin in self.list_name_plugin():
            source = self._sources.get(name)
            distribution, version = source.origin() if source is not None else (None, None)
            if plugin is None:
                reason = self.disabled.get(name, "blocked")
                if source is None:
                    reason += " (no installed plugin has this name)"
                disabled.append(
                    PluginInfo(name=name, distribution=distribution, version=version, status="disabled", reason=reason)
                )
                continue
            callers = self.get_hookcallers(plugin) or []
            loaded.append(
                PluginInfo(
                    name=name, distribution=distribution, version=version, status="loaded",
                    hooks=sorted(c.name for c in callers if c.has_spec()),
                    ignored_hooks=sorted(c.name for c in callers if not c.has_spec()),
                )
            )  # fmt: skip
        call_order = {
            name: [
                HookCall(plugin=impl.plugin_name, wrapper=impl.wrapper or impl.hookwrapper, tryfirst=impl.tryfirst,
                         trylast=impl.trylast)
                for impl in reversed(caller.get_hookimpls())  # pluggy runs the list from its end
            ]
            for name, caller in sorted(vars(self.hook).items())
            if isinstance(caller, pluggy.HookCaller) and caller.has_spec()
        }  # fmt: skip
        return PluginReport(plugins=[*loaded, *disabled, *self.broken], call_order=call_order)


def _refused_payment_methods(manager: pluggy.PluginManager, plugin: object) -> str | None:
    """Why `plugin` cannot take the payment methods it names (its oms_payment_methods, asked as it
    registers), or None: a method no client can send as `payment.method` (`acme-pay`) would load,
    and every order naming it be refused 422 as the client's mistake, with nothing on /health or
    GET /plugins to tell the operator; so would an answer call_hook refuses at each call (not a list
    of str). A plugin whose implementation raises here is left to its calls (a gateway asked for its
    methods, briefly down: call_hook names it at each)."""
    for impl in manager.hook.oms_payment_methods.get_hookimpls():
        if impl.plugin is not plugin or impl.wrapper or impl.hookwrapper:
            continue
        try:
            methods = impl.function()
        except KeyboardInterrupt:
            raise
        except BaseException:  # any, as call_hook takes any: its calls say
            continue
        if methods is None:
            continue
        if not isinstance(methods, list | tuple):
            return f"oms_payment_methods answered {type(methods).__name__}, expected a list of method names"
        wrong = [m for m in methods if not (isinstance(m, str) and PAYMENT_METHOD.fullmatch(m))]
        if wrong:
            shown = ", ".join(repr(m)[:40] for m in wrong[:3])
            return (
                f"oms_payment_methods answered {shown}, which no order can name as its payment.method"
                " (1 to 32 lower-case letters, digits or _): every order with it would be refused 422"
            )
    return None


def _after_call(*_: object) -> None:
    pass


# Values no plugin can change in place, shared with the plugin rather than copied: immutable
# scalars, and Money itself (frozen, an amount and a currency; not a subclass, which could be
# neither). The rest is copied as copy.deepcopy copies it.
_SHARED = (str, int, float, bool, bytes, Decimal, datetime.date, datetime.time, datetime.timedelta, enum.Enum)
_SHARED_TYPES = frozenset((*_SHARED, datetime.datetime, type(None), Money))
_MODEL_DEEPCOPY = BaseModel.__deepcopy__


def _copied(value: Any, memo: dict[int, Any]) -> Any:
    """A deep copy of `value`, as copy.deepcopy(value, memo) makes it (what the originals share,
    the copies share), in a fifth to a half of its time for the models hooks are given:
    copy.deepcopy walks every Money, datetime and field name through its generic protocol,
    several hundred microseconds an order. A model with extra fields, private attributes or its own __deepcopy__
    and any other type are left to copy.deepcopy."""
    cls = type(value)
    if cls in _SHARED_TYPES or isinstance(value, _SHARED):
        return value
    found = memo.get(id(value))
    if found is not None:
        return found
    if cls is list:
        items: list[Any] = []
        memo[id(value)] = items
        # Shared items are taken as they are without a call: most of what hooks are given are
        # strings, numbers, Money and datetimes, and a call each was most of the copy's time.
        items.extend(item if type(item) in _SHARED_TYPES else _copied(item, memo) for item in value)
        return items
    if cls is dict:
        mapping: dict[Any, Any] = {}
        memo[id(value)] = mapping
        for key, item in value.items():
            mapping[_copied(key, memo)] = item if type(item) in _SHARED_TYPES else _copied(item, memo)
        return mapping
    if (
        isinstance(value, BaseModel)
        and cls.__deepcopy__ is _MODEL_DEEPCOPY
        and value.__pydantic_extra__ is None
        and value.__pydantic_private__ is None
    ):
        model = cls.__new__(cls)
        memo[id(value)] = model
        # As pydantic's own __deepcopy__ builds the copy (no validation: the original was valid).
        fields = {
            name: item if type(item) in _SHARED_TYPES else _copied(item, memo) for name, item in value.__dict__.items()
        }
        object.__setattr__(model, "__dict__", fields)
        object.__setattr__(model, "__pydantic_extra__", None)
        object.__setattr__(model, "__pydantic_fields_set__", set(value.__pydantic_fields_set__))
        object.__setattr__(model, "__pydantic_private__", None)
        return model
    return copy.deepcopy(value, memo)


def build_plugin_manager(
    *extra_plugins: object,
    sources: Iterable[PluginSource] = (),
    disabled: Iterable[str] = (),
    enable_test_payments: bool = False,
) -> OmsPluginManager:
    """A manager of `sources` (the deployment's plugins: functions/plugin_loading.py hands it the
    `oms` entry points, the built-ins among them, exactly like third-party ones), so a deployment
    disables any of them by name (`disabled`, from OMS_DISABLED_PLUGINS) and another distribution
    can replace it. `extra_plugins` are registered last (so they run first), each under a name a
    refusal of its answer can show (_extra_name)."""
    manager = OmsPluginManager()
    for name in disabled:
        manager.disable(name, "disabled by OMS_DISABLED_PLUGINS")
    if not enable_test_payments and not manager.is_blocked(TEST_PAYMENTS):
        manager.disable(TEST_PAYMENTS, TEST_PAYMENTS_OFF)
    manager.load(sources)
    for plugin in extra_plugins:
        manager.register(plugin, name=_extra_name(plugin, manager))
    return manager


def _extra_name(plugin: object, manager: pluggy.PluginManager) -> str | None:
    """A module keeps its own name (None: pluggy's); an object is named by its class (a second one
    of that class `<class>#2`), where pluggy would name it by its id(), a number the plugin's author
    cannot place, as the OMS names an entry point's plugin by the entry point."""
    if getattr(plugin, "__name__", None):
        return None
    named = type(plugin).__name__
    name, count = named, 1
    while manager.has_plugin(name):
        count += 1
        name = f"{named}#{count}"
    return name
