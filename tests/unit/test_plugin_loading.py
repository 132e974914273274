"""Loading plugins: entry points one at a time, broken ones named, unknown hooks refused, built-ins disabled by name."""

from __future__ import annotations

import types
from collections.abc import Iterator

import pluggy
import pytest

from core import hookimpl, hookspecs, plugin_settings
from core.errors import PluginUnavailable
from core.hook_calls import call_hook
from core.plugin_manager import build_plugin_manager
from functions.plugin_loading import load_plugin_manager
from plugins.data_files import data_file_path
from tests.installed import FAILS_TO_IMPORT, Installer, installing
from tests.unit.conftest import a_customer, a_product


@pytest.fixture
def installer(tmp_path, monkeypatch) -> Iterator[Installer]:
    yield from installing(tmp_path, monkeypatch)


GOOD = """
    from core import hookimpl
    from core.money import Money

    @hookimpl(tryfirst=True)
    def oms_unit_price(product):
        return Money.of("1.00", product.price.currency)
"""
MISSPELT_HOOK = """
    from core import hookimpl

    @hookimpl
    def oms_unit_price(product):
        return None

    @hookimpl
    def oms_tax_rates(line, address):
        return None
"""
OPTIONAL_FUTURE_HOOK = """
    from core import hookimpl

    @hookimpl(optionalhook=True)
    def oms_carrier_pickup_slots(tracking_number):
        return None

    @hookimpl
    def oms_payment_methods():
        return ["future"]
"""
WRONG_ARGUMENT = """
    from core import hookimpl

    @hookimpl
    def oms_unit_price(product, price_list):
        return None
"""

UNIT_PRICE = {"product": a_product(), "quantity": 1, "currency": "USD", "channel": "web", "customer": a_customer()}


def statuses(plugins) -> dict[str, tuple[str, str | None]]:
    return {p.name: (p.status, p.reason) for p in plugins.report().plugins}


def test_a_plugin_that_fails_to_import_is_recorded_broken_and_the_others_load(installer):
    installer.install("oms-acme", "2.1.0", {"acme_prices": GOOD, "acme_tax": FAILS_TO_IMPORT})

    plugins = load_plugin_manager()

    (broken,) = plugins.broken
    assert (broken.name, broken.distribution, broken.version, broken.status) == (
        "acme_tax",
        "oms-acme",
        "2.1.0",
        "broken",
    )
    assert broken.reason == "ModuleNotFoundError: No module named 'oms_no_such_dependency'"
    # What the cold start logs with its traceback (`plugin failed to load`).
    assert isinstance(plugins.load_error("acme_tax"), ModuleNotFoundError)
    assert plugins.has_plugin("acme_prices") and plugins.has_plugin("tax_table")
    acme = next(p for p in plugins.report().plugins if p.name == "acme_prices")
    assert (acme.distribution, acme.version, acme.hooks) == ("oms-acme", "2.1.0", ["oms_unit_price"])


GARBLED_IMPORT = """
    raise RuntimeError("missing key\\x1b[2J\\u202e" + "x" * 100_000)
"""


def test_why_a_plugin_failed_to_import_is_kept_visible_and_cut_to_500_characters(installer):
    # Shown by GET /plugins (admin) and logged; /health and plugin_unavailable show its type alone.
    installer.install("oms-acme", "2.1.0", {"acme_tax": GARBLED_IMPORT})

    (broken,) = load_plugin_manager().broken

    assert broken.reason == "RuntimeError: missing key\ufffd[2J\ufffd" + "x" * 469 + "…"


EXITS_ON_IMPORT = """
    import sys

    sys.exit("acme: no licence file")
"""
RAISES_ITS_OWN_BASE_EXCEPTION = """
    class Unlicensed(BaseException):
        pass

    raise Unlicensed("no licence file")
"""


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (EXITS_ON_IMPORT, "SystemExit: acme: no licence file"),
        (RAISES_ITS_OWN_BASE_EXCEPTION, "Unlicensed: no licence file"),
    ],
    ids=["sys.exit", "a BaseException"],
)
def test_a_plugin_whose_import_raises_outside_exception_is_recorded_broken_and_the_others_load(
    installer, source, reason
):
    # Not an Exception: it went past the loader and ended every cold start (the whole API down,
    # /health with it) instead of naming the one plugin that cannot load.
    installer.install("oms-acme", "2.1.0", {"acme_prices": GOOD, "acme_tax": source})

    plugins = load_plugin_manager()

    assert [(p.name, p.status, p.reason) for p in plugins.broken] == [("acme_tax", "broken", reason)]
    assert plugins.has_plugin("acme_prices") and plugins.has_plugin("tax_table")


UNPRINTABLE_ON_IMPORT = """
    class Unprintable(Exception):
        def __str__(self):
            raise ValueError("no")

    raise Unprintable()
"""


def test_a_plugin_whose_import_raises_an_exception_that_cannot_be_printed_is_recorded_broken(installer):
    # Its __str__ raising inside the loader's own handler ended the cold start (the API down).
    installer.install("oms-acme", "2.1.0", {"acme_prices": GOOD, "acme_tax": UNPRINTABLE_ON_IMPORT})

    plugins = load_plugin_manager()

    assert [(p.name, p.error, p.reason) for p in plugins.broken] == [
        ("acme_tax", "Unprintable", "Unprintable: <unprintable: its __str__ raised ValueError>")
    ]
    assert plugins.has_plugin("acme_prices")


def test_no_hook_runs_while_a_plugin_is_broken_and_the_error_names_it(installer):
    installer.install("oms-acme", "2.1.0", {"acme_tax": FAILS_TO_IMPORT})
    plugins = load_plugin_manager()

    with pytest.raises(PluginUnavailable, match="acme_tax") as unavailable:
        call_hook(plugins.hook.oms_unit_price, **UNIT_PRICE)

    assert unavailable.value.code == "plugin_unavailable"
    assert unavailable.value.details == [
        {
            "plugin": "acme_tax",
            "distribution": "oms-acme",
            # Its type and where the reason is: the message can hold the plugin's configuration.
            "message": "ModuleNotFoundError while loading: the reason is in the log line `plugin failed to load` "
            "and in GET /plugins (admin key)",
        }
    ]
    with pytest.raises(PluginUnavailable):
        plugins.hook.oms_payment_methods()  # not only through call_hook: every hook call


def test_disabling_a_broken_plugin_brings_the_others_back(installer):
    installer.install("oms-acme", "2.1.0", {"acme_tax": FAILS_TO_IMPORT})

    plugins = load_plugin_manager(disabled=["acme_tax"])

    assert plugins.broken == []
    assert statuses(plugins)["acme_tax"] == ("disabled", "disabled by OMS_DISABLED_PLUGINS")
    assert call_hook(plugins.hook.oms_unit_price, **UNIT_PRICE) is not None


def test_a_plugin_implementing_a_hook_that_does_not_exist_is_refused_whole(installer):
    installer.install("oms-typo", "0.1", {"typo": MISSPELT_HOOK})

    plugins = load_plugin_manager()

    assert statuses(plugins)["typo"][0] == "broken"
    assert "unknown hook oms_tax_rates" in statuses(plugins)["typo"][1]
    assert plugins.get_plugin("typo") is None  # its real hook is not half-registered either
    assert "typo" not in [impl.plugin_name for impl in plugins.hook.oms_unit_price.get_hookimpls()]


def test_an_optional_implementation_of_an_unknown_hook_loads_and_is_listed_as_ignored(installer):
    installer.install("oms-future", "3.0", {"future": OPTIONAL_FUTURE_HOOK})

    plugins = load_plugin_manager()

    future = next(p for p in plugins.report().plugins if p.name == "future")
    assert (future.status, future.hooks, future.ignored_hooks) == (
        "loaded",
        ["oms_payment_methods"],
        ["oms_carrier_pickup_slots"],
    )
    assert plugins.broken == []


def test_an_implementation_with_an_argument_the_spec_lacks_is_broken(installer):
    installer.install("oms-wrong", "0.1", {"wrong": WRONG_ARGUMENT})

    plugins = load_plugin_manager()

    assert statuses(plugins)["wrong"][0] == "broken"
    assert "price_list" in statuses(plugins)["wrong"][1]


HYPHENATED_METHOD = """
    from core import hookimpl

    @hookimpl
    def oms_payment_methods():
        return ["acme_card", "acme-pay"]
"""


def test_a_payment_plugin_naming_a_method_no_order_can_send_is_broken_and_says_which(installer):
    """`payment.method` is 1 to 32 lower-case letters, digits or `_`: a plugin taking `acme-pay`
    loaded, and every order naming it was refused 422 as the client's mistake, with nothing on
    /health or GET /plugins for the operator. It is a plugin that cannot work as written, found
    when it loads, as a misspelt hook is."""
    installer.install("oms-acme", "0.1", {"acme_pay": HYPHENATED_METHOD, "acme_prices": GOOD})

    plugins = load_plugin_manager()

    status, reason = statuses(plugins)["acme_pay"]
    assert status == "broken"
    assert "oms_payment_methods" in reason and "'acme-pay'" in reason and "'acme_card'" not in reason
    assert plugins.get_plugin("acme_pay") is None
    assert "acme_pay" not in [impl.plugin_name for impl in plugins.hook.oms_payment_methods.get_hookimpls()]
    assert statuses(plugins)["acme_prices"][0] == "loaded"
    with pytest.raises(PluginUnavailable, match="acme_pay"):
        call_hook(plugins.hook.oms_payment_methods)


def test_a_payment_plugin_answering_its_method_bare_not_in_a_list_is_broken_when_it_loads():
    # call_hook refuses it at every call (every order 502): the operator hears of it at load instead.
    class AcmePay:
        @hookimpl
        def oms_payment_methods(self):
            return "acme_pay"

    with pytest.raises(pluggy.PluginValidationError, match="oms_payment_methods answered str, expected a list"):
        build_plugin_manager().register(AcmePay())


def test_a_payment_plugin_registered_in_code_naming_a_method_no_order_can_send_is_refused_loudly():
    class AcmePay:
        @hookimpl
        def oms_payment_methods(self):
            return ["acme-pay"]

    plugins = build_plugin_manager()
    taking = [impl.plugin_name for impl in plugins.hook.oms_payment_methods.get_hookimpls()]

    with pytest.raises(pluggy.PluginValidationError, match="oms_payment_methods answered 'acme-pay'"):
        plugins.register(AcmePay())
    assert [impl.plugin_name for impl in plugins.hook.oms_payment_methods.get_hookimpls()] == taking


def test_a_plugin_registered_in_code_with_an_unknown_hook_is_refused_loudly():
    class Misspelt:
        @hookimpl
        def oms_unit_prices(self, product):
            return None

    plugins = build_plugin_manager()

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook oms_unit_prices"):
        plugins.register(Misspelt())


def test_disabled_built_ins_are_not_loaded_and_say_why():
    plugins = load_plugin_manager(disabled=["flat_rate_shipping", "no_such_plugin"])

    assert plugins.get_plugin("flat_rate_shipping") is None
    assert plugins.has_plugin("weight_based_shipping")
    assert statuses(plugins)["flat_rate_shipping"] == ("disabled", "disabled by OMS_DISABLED_PLUGINS")
    assert statuses(plugins)["no_such_plugin"] == (
        "disabled",
        "disabled by OMS_DISABLED_PLUGINS (no installed plugin has this name)",
    )
    disabled = next(p for p in plugins.report().plugins if p.name == "flat_rate_shipping")
    assert (disabled.distribution, disabled.hooks) == ("oms", [])


def test_the_reported_call_order_is_the_order_pluggy_calls_them():
    called: list[str] = []

    def plugin(name: str, **opts: bool) -> object:
        if opts.get("wrapper"):

            def impl(self):
                called.append(name)
                return (yield)
        else:

            def impl(self):
                called.append(name)

        impl.__name__ = "oms_payment_methods"
        return type(name, (), {"oms_payment_methods": hookimpl(**opts)(impl)})()

    plugins = build_plugin_manager()
    for name, opts in [
        ("last", {"trylast": True}),
        ("first", {"tryfirst": True}),
        ("older", {}),
        ("wrapper", {"wrapper": True}),
        ("newer", {}),
    ]:
        plugins.register(plugin(name, **opts), name=name)
    called.clear()  # each was asked its methods as it registered (a method no order can name is refused)

    plugins.hook.oms_payment_methods()

    order = plugins.report().call_order["oms_payment_methods"]
    assert [call.plugin for call in order] == called == ["wrapper", "first", "newer", "older", "last"]
    assert [(c.wrapper, c.tryfirst, c.trylast) for c in order][:2] == [(True, False, False), (False, True, False)]


def test_plugin_settings_are_the_plugins_own_namespaced_variables():
    environ = {
        "OMS_PLUGIN_TAX_TABLE_RATES_FILE": "/opt/rates.json",
        "OMS_PLUGIN_TAX_TABLE_REGION": " eu ",
        "OMS_PLUGIN_TAX_TABLE_EMPTY": "",
        "OMS_PLUGIN_PROMOTIONS_FILE": "/opt/promotions.json",
        "OMS_TAX_TABLE_RATES_FILE": "/not/namespaced.json",
        "OMS_PLUGIN_TAX_TABLE_": "no key",
    }

    assert plugin_settings("tax_table", environ) == {"rates_file": "/opt/rates.json", "region": "eu"}
    assert plugin_settings("promotions", environ) == {"file": "/opt/promotions.json"}
    assert plugin_settings("nearest_sourcing", environ) == {}


def test_plugin_settings_read_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("OMS_PLUGIN_ACME_API_URL", "https://acme.example")

    assert plugin_settings("acme") == {"api_url": "https://acme.example"}


def test_a_plugin_whose_entry_point_name_holds_a_hyphen_or_a_dot_reads_its_variables_with_underscores():
    """Lambda refuses an environment variable whose name holds `-` or `.`, so OMS_PLUGIN_ACME-PAY_*
    could never be set on AWS: such a name reads the variables it would spell with underscores."""
    environ = {"OMS_PLUGIN_ACME_PAY_LIMITS": "EUR:500", "OMS_PLUGIN_ACME-PAY_LIMITS": "unsettable"}

    assert plugin_settings("acme-pay", environ) == {"limits": "EUR:500"}
    assert plugin_settings("acme.pay", environ) == {"limits": "EUR:500"}


def test_a_data_file_setting_is_read_under_the_same_variable_name_plugin_settings_reads(monkeypatch, tmp_path):
    # plugins.data_files looks one variable up by name (no walk of the environment): the same name.
    monkeypatch.setenv("OMS_PLUGIN_ACME_RATES_FILE", str(tmp_path / "rates.json"))

    assert data_file_path("acme-rates", "file", "tax_rates.json") == tmp_path / "rates.json"
    assert plugin_settings("acme-rates") == {"file": str(tmp_path / "rates.json")}


def test_registering_a_plugin_parses_each_attribute_once_and_registers_what_pluggy_alone_would(monkeypatch):
    # Our check of unknown hooks and pluggy's registration walk the same attributes; each parse looks
    # the attribute up statically: parsed twice, some 19 M instructions of every cold start.
    import plugins.flat_rate_carrier as plugin

    parsed: list[str] = []
    parse = pluggy.PluginManager.parse_hookimpl_opts

    def counted(self: pluggy.PluginManager, given: object, name: str) -> object:
        if given is plugin:
            parsed.append(name)
        return parse(self, given, name)

    plugins = build_plugin_manager()
    monkeypatch.setattr(pluggy.PluginManager, "parse_hookimpl_opts", counted)
    plugins.register(plugin, name="carrier")
    monkeypatch.undo()
    alone = pluggy.PluginManager("oms")
    alone.add_hookspecs(hookspecs)
    alone.register(plugin, name="carrier")

    # Every function, once; the rest of the module's names (its imports, models, constants) never
    # reach pluggy's static lookup (~11 M instructions of a cold start's plugin loading).
    functions = {name for name in dir(plugin) if isinstance(vars(plugin)[name], types.FunctionType)}
    assert sorted(parsed) == sorted(functions)
    assert len(functions) < len(dir(plugin)) / 2
    assert [caller.name for caller in plugins.get_hookcallers(plugin) or []] == [
        caller.name for caller in alone.get_hookcallers(plugin) or []
    ]
    assert len(plugins.get_hookcallers(plugin) or []) > 1
    # Outside a registration, and after one refused, each parse is pluggy's own.
    assert plugins.parse_hookimpl_opts(plugin, "oms_carrier_create_shipment") is not None
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook oms_unit_prices"):
        plugins.register(MisspeltInCode())
    assert plugins.parse_hookimpl_opts(MisspeltInCode(), "oms_unit_prices") is not None
    assert plugins.parse_hookimpl_opts(plugin, "oms_unit_prices") is None


class MisspeltInCode:
    @hookimpl
    def oms_unit_prices(self, product):
        return None


class Flat:
    @hookimpl
    def oms_shipping_quotes(self, draft):
        return []


def test_a_plugin_module_attribute_is_parsed_as_pluggy_parses_it():
    # The shortcut for a module's names that cannot hold a hook: whatever they are, pluggy finds no
    # hook in them either, and in those that can it finds what pluggy finds.
    import plugins.promotions as module

    held = types.ModuleType("held")
    held.function = module.oms_discounts
    held.static = staticmethod(module.oms_discounts)
    held.of_class = classmethod(module.oms_discounts)
    held.bound = Flat().oms_shipping_quotes
    held.model, held.constant, held.module, held.none = module.PercentOff, 3, module, None
    plugins = build_plugin_manager()
    alone = pluggy.PluginManager("oms")
    for plugin in (module, held):
        for name in dir(plugin):
            assert plugins.parse_hookimpl_opts(plugin, name) == alone.parse_hookimpl_opts(plugin, name), name
    hooks = [name for name in dir(held) if plugins.parse_hookimpl_opts(held, name) is not None]
    assert hooks == ["bound", "function", "of_class", "static"]


def test_a_hook_another_plugin_implements_optionally_is_still_unknown_to_a_plugin_that_requires_it():
    # The optional implementation leaves pluggy a caller of that name without a spec: a plugin
    # that needs the hook must still be refused, not registered to a hook this OMS never calls.
    class Optional:
        @hookimpl(optionalhook=True)
        def oms_carrier_pickup_slots(self, tracking_number):
            return None

    class Requires:
        @hookimpl
        def oms_carrier_pickup_slots(self, tracking_number):
            return None

    plugins = build_plugin_manager()
    plugins.register(Optional(), name="optional")

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook oms_carrier_pickup_slots"):
        plugins.register(Requires(), name="requires")


def test_the_test_gateway_disabled_by_name_says_so_not_that_it_needs_enabling():
    plugins = load_plugin_manager(disabled=["test_payments"])

    assert statuses(plugins)["test_payments"] == ("disabled", "disabled by OMS_DISABLED_PLUGINS")


class Source:
    """A PluginSource as the deployment hands one over (functions/plugin_loading.py)."""

    def __init__(self, name: str, plugin: object, distribution: str):
        self.name, self.plugin, self.distribution = name, plugin, distribution

    def load(self) -> object:
        return self.plugin

    def origin(self) -> tuple[str | None, str | None]:
        return self.distribution, "1.0"


def test_a_second_plugin_under_a_name_already_loaded_is_left_out_not_broken():
    # Two installed distributions can declare the same entry-point name: registering the second
    # raised ValueError, recorded it broken, and no hook ran anywhere (plugin_unavailable).
    first = types.SimpleNamespace(oms_payment_methods=hookimpl(lambda: ["first"]))
    second = types.SimpleNamespace(oms_payment_methods=hookimpl(lambda: ["second"]))

    plugins = build_plugin_manager(sources=[Source("acme", first, "oms-acme"), Source("acme", second, "oms-acme-fork")])

    assert plugins.broken == []
    assert plugins.get_plugin("acme") is first


def test_an_interrupt_while_a_plugin_loads_stops_the_loading():
    # Ctrl-C at `make run` during a cold start stops it: it is no plugin's failure to load.
    class Interrupted(Source):
        def load(self) -> object:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_plugin_manager(sources=[Interrupted("acme", None, "oms-acme")])
