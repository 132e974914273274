"""The README's configuration table, API overview and technical metrics say what the code and
template.yaml do: every variable read or set is a row with the default the code or the template
has, every route is listed, every metric emitted is named; and nothing else."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from functions.api.app import every_route
from infra.local.template import load_template
from tests.readme_code import shell_blocks

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
README = (ROOT / "README.md").read_text()


def section(heading: str) -> str:
    return README[README.index(f"\n{heading}\n") + 1 :].split("\n## ", 1)[0]


def table(text: str, header: str) -> list[list[str]]:
    """The cells of each row of the table in `text` whose header row starts with `header`."""
    lines = text[text.index(header) :].split("\n\n")[0].splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def sources(*folders: str) -> dict[Path, str]:
    return {
        path: path.read_text()
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "examples" not in path.parts  # oms-acme is its own distribution, with its own README
    }


# --- The configuration table ------------------------------------------------------------------------

CONFIGURATION = table(section("## Configuration"), "| variable |")
PATTERN_PREFIX = "OMS_PLUGIN_"  # the `OMS_PLUGIN_<NAME>_<KEY>` row: every plugin's settings
FUNCTION_CODE = "\n".join(sources("functions", "core", "plugins").values())
ANY_CODE = FUNCTION_CODE + "\n".join(sources("infra").values())


def rows_by_variable() -> dict[str, list[str]]:
    rows = {}
    for row in CONFIGURATION:
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0]):
            rows[name] = row
    return rows


ROWS = rows_by_variable()


def documented_default(name: str) -> str:
    """The row's default for `name`: the cell up to its first note, its n-th backquoted value for
    a row's n-th variable (`15`, `60`), else the words (`set by the template`, `empty`)."""
    row = ROWS[name]
    head = re.split(r" \(|;", row[1], maxsplit=1)[0]
    values = re.findall(r"`([^`]*)`", head)
    if not values:
        return head.strip()
    names = re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0])
    return values[names.index(name)] if len(values) == len(names) else values[0]


def template_variables() -> dict[str, dict[str, object]]:
    """Each variable the template sets: {function logical id, or "Globals": its value}."""
    found: dict[str, dict[str, object]] = {}
    for name, value in TEMPLATE["Globals"]["Function"]["Environment"]["Variables"].items():
        found.setdefault(name, {})["Globals"] = value
    for logical_id, resource in TEMPLATE["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            variables = resource["Properties"].get("Environment", {}).get("Variables", {})
            for name, value in variables.items():
                found.setdefault(name, {})[logical_id] = value
    return found


TEMPLATE_VARIABLES = template_variables()


def read_by_the_code() -> set[str]:
    """Every variable functions/, core/ and plugins/ read by a literal name."""
    return (
        set(re.findall(r'environ(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"', FUNCTION_CODE))
        | set(re.findall(r'\b_(?:number|switch)\("([A-Z][A-Z0-9_]+)"', FUNCTION_CODE))
        | set(re.findall(r'_ENV = "([A-Z][A-Z0-9_]+)"', FUNCTION_CODE))
    )


def documented(name: str) -> bool:
    return name in ROWS or name.startswith(PATTERN_PREFIX)


def test_the_table_is_found_and_parsed():
    assert len(ROWS) > 40 and "ORDERS_TABLE" in ROWS and "OMS_PORT" in ROWS


def test_every_variable_the_functions_read_has_a_row():
    read = read_by_the_code()
    assert {"ORDERS_TABLE", "OMS_CATALOG_CACHE_SECONDS", "OMS_RETURN_WINDOW_DAYS", "OMS_REVIEW_THRESHOLD"} <= read
    assert sorted(name for name in read if not documented(name)) == []


def test_every_variable_the_template_sets_has_a_row():
    assert sorted(name for name in TEMPLATE_VARIABLES if not documented(name)) == []


def test_every_row_names_a_variable_something_reads_or_the_template_sets():
    # The scheduled functions' period variable is built from its logical id (functions/schedule.py);
    # POWERTOOLS_* and PYDANTIC_* are read by those libraries: the template sets each of them.
    unread = [name for name in ROWS if name not in TEMPLATE_VARIABLES and f'"{name}"' not in ANY_CODE]
    assert unread == []


@pytest.mark.parametrize("name", sorted(name for name in TEMPLATE_VARIABLES if name in ROWS))
def test_a_variable_the_template_sets_has_the_templates_default(name: str):
    parameters = TEMPLATE["Parameters"]
    for value in TEMPLATE_VARIABLES[name].values():
        if isinstance(value, dict) and value.get("Ref") in parameters:
            default = str(parameters[value["Ref"]]["Default"])
            assert documented_default(name) == (default or "empty"), value["Ref"]
        elif isinstance(value, str):
            assert documented_default(name) == value
        else:
            assert documented_default(name) == "set by the template"


def test_the_template_parameter_a_row_names_is_the_one_that_sets_its_variable():
    # Each row's "(template parameter `P`)" is the parameter the template's `!Ref` gives the
    # variable (or, for `make run`'s own variables, the one infra/local/stack.py sets from it).
    from infra.local.stack import PARAMETER_ENV

    checked = 0
    for row in CONFIGURATION:
        named = re.search(r"template parameters? ((?:`\w+`(?:, )?)+)", row[1])
        if named is None:
            continue
        names, parameters = re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0]), re.findall(r"`(\w+)`", named.group(1))
        for position, name in enumerate(names):
            parameter = parameters[position] if len(parameters) == len(names) else parameters[0]
            refs = {v["Ref"] for v in TEMPLATE_VARIABLES.get(name, {}).values() if isinstance(v, dict) and "Ref" in v}
            assert refs | ({PARAMETER_ENV[name]} if name in PARAMETER_ENV else set()) == {parameter}, name
            checked += 1
    assert checked >= 15


def plain(value: object) -> str:
    """A number as the table writes it (`10`, not `10.0`); anything else as it is."""
    try:
        return f"{float(str(value)):g}"
    except ValueError:
        return str(value)


def code_defaults() -> dict[str, str]:
    """The default each numeric or true/false setting has in the code when unset: the functions'
    (`_number`, `_switch`) and the local stack's own (`_env`, `_scale`, the schedule periods)."""
    local = "\n".join(sources("infra").values())
    found = {name: plain(value) for name, value in re.findall(r'\b_number\("([A-Z0-9_]+)", ([\d.]+)\)', FUNCTION_CODE)}
    found |= {name: "false" for name in re.findall(r'\b_switch\("([A-Z0-9_]+)"\)', FUNCTION_CODE)}
    for name, value in re.findall(r'\b_env\("([A-Z0-9_]+)", ("[^"]*"|\w+)', local):
        found[name] = {"True": "1", "False": "0"}.get(value, value.strip('"'))
    found |= {name: plain(value) for name, value in re.findall(r'"([A-Z0-9_]+_SECONDS)", ([\d.]+)\)', local)}
    return found


def test_the_code_defaults_are_found():
    assert {"OMS_CATALOG_CACHE_SECONDS", "WEBHOOK_ALLOW_LOCAL_HTTP", "OMS_PORT", "OMS_SEED"} <= set(code_defaults())


@pytest.mark.parametrize("name", sorted(code_defaults()))
def test_a_settings_default_in_the_code_is_the_tables_and_the_deploys(name: str):
    default = code_defaults()[name]
    if name in TEMPLATE_VARIABLES:
        # Read without the variable (a function the template does not give it to), the code
        # behaves as the deploy's default does.
        (value,) = {str(v) for v in TEMPLATE_VARIABLES[name].values()}
        parameter = re.fullmatch(r"\{'Ref': '(\w+)'\}", value)
        if parameter:
            assert plain(TEMPLATE["Parameters"][parameter.group(1)]["Default"]) == default, name
        return
    assert documented_default(name) == default


def readers(name: str) -> set[str]:
    """The functions the template gives `name` to, as a row's "read by" writes them."""
    return {re.sub(r"Function$", "", logical_id).lower() for logical_id in TEMPLATE_VARIABLES[name]}


@pytest.mark.parametrize("name", sorted(name for name in TEMPLATE_VARIABLES if name in ROWS))
def test_a_row_names_every_function_the_template_gives_its_variable_to(name: str):
    read_by = ROWS[name][2].replace(" ", "").lower()
    for reader in readers(name):
        assert ("functions" if reader == "globals" else reader) in read_by, reader


# --- The API overview -------------------------------------------------------------------------------


OVERVIEW = table(section("## API overview"), "| method and path |")


def row_routes(cell: str) -> set[tuple[str, str]]:
    """(method, path with its parameters as {}) of each route an overview row's first cell lists. It
    may go on with `/last-segment` (the same method, another last segment) or a bare `DELETE` (the same path)."""
    found = set()
    method = path = ""
    for token in re.findall(r"`([^`]+)`", cell):
        token = token.split("?")[0]
        if match := re.fullmatch(r"(GET|POST|PUT|PATCH|DELETE) (/\S*)", token):
            method, path = match.groups()
        elif token.startswith("/"):
            path = path.rsplit("/", 1)[0] + token
        elif token in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            method = token
        else:
            raise AssertionError(f"not a route: {token!r} in {cell!r}")
        found.add((method, re.sub(r"\{[^}]+\}", "{}", path)))
    return found


def overview_routes() -> set[tuple[str, str]]:
    return {route for row in OVERVIEW for route in row_routes(row[0])}


def app_routes() -> set[tuple[str, str]]:
    app = every_route()
    found = set()
    for route in app._static_routes + app._dynamic_routes:
        methods = route.method if isinstance(route.method, list | tuple | set) else [route.method]
        found |= {(method.upper(), re.sub(r"\{[^}]+\}", "{}", route.openapi_path)) for method in methods}
    return found


def test_what_an_overview_row_says_a_route_needs_is_what_the_route_declares():
    # Before: the returns row gave `returns:write` for `GET /orders/{id}/returns` too, which takes
    # `orders:read` (as every read of an order does). A row naming no scope is left to Security's table.
    from functions.api.app import _scope_table

    declared = {
        (method, re.sub(r"\{[^}]+\}", "{}", path)): getattr(requirement, "value", repr(requirement))
        for (method, path), requirement in _scope_table().routes().items()
    }
    checked = 0
    for cell, *rest in OVERVIEW:
        what = "|".join(rest)  # a cell's escaped `\\|` splits it
        stated = set(re.findall(r"scope `([a-z]+:[a-z]+|admin)`", what))
        stated |= {"admin"} if what.startswith("(admin)") else set()
        stated |= {"PUBLIC"} if "no key" in what else set()
        if stated:
            needs = {declared[route] for route in row_routes(cell)}
            assert needs == stated, cell
            checked += 1
    assert checked >= 15


def test_the_api_overview_lists_every_route_of_the_app_and_no_other():
    routes = app_routes()
    assert ("POST", "/orders") in routes and len(routes) > 50
    assert sorted(routes - overview_routes()) == []
    assert sorted(overview_routes() - routes) == []


# --- The technical metrics ----------------------------------------------------------------------------

HANDLER_CODE = sources("functions")
# Names computed at the call: business_metrics.py's (the table above it, its own test), the API's
# Http{2,4,5}xx, the reconciler's three loops over (name, count) pairs and the import worker's _METRICS.
COMPUTED_NAMES = 6


def emitted_technical_metrics() -> set[str]:
    code = "\n".join(HANDLER_CODE.values())
    computed = re.findall(r"add_metric\(\s*name=(?![A-Z][A-Z0-9_]*\b)[^\"\s]", code)
    assert len(computed) == COMPUTED_NAMES, "a new computed metric name"
    names = set(re.findall(r'add_metric\(\s*name="(\w+)"', code))
    # A module constant's value (INTERNAL_ERRORS_METRIC = "ApiInternalErrors"): the name its alarm's test imports.
    constants = dict(re.findall(r'^([A-Z][A-Z0-9_]*) = "([A-Z]\w+)"$', code, flags=re.MULTILINE))
    names |= {constants[constant] for constant in re.findall(r"add_metric\(\s*name=([A-Z][A-Z0-9_]*)\b", code)}
    for pairs in re.findall(r"for name, \w+ in \((.*?)\):\n", code, flags=re.DOTALL):  # the reconciler's
        names |= set(re.findall(r'\(\s*"([A-Z]\w+)",', pairs))
    names |= set(re.findall(r'Outcome\.\w+: "([A-Z]\w+)"', code))  # the import worker's _METRICS
    if 'name=f"Http{' in code:
        names |= {"Http2xx", "Http4xx", "Http5xx"}
    return names


def test_the_observability_section_names_every_technical_metric_the_functions_emit_and_no_other():
    observability = section("## Observability")
    start = observability.index("- The technical metrics")
    bullet = observability[start:].split("\n- ", 1)[0].split("\n\n", 1)[0]
    named = {name for name in re.findall(r"`([A-Z]\w+)`", bullet) if not name.endswith("Alarm")}
    emitted = emitted_technical_metrics()
    assert {"OrderWorkflowsStarted", "ParcelsRelabelled", "ImportedOrders", "Http5xx"} <= emitted
    assert sorted(emitted - named) == []
    assert sorted(named - emitted) == []


# --- The business metrics ----------------------------------------------------------------------------


def recorded_business_metrics() -> dict[str, tuple[str, set[str]]]:
    """{name: (unit, dimensions)} of each record(...) call in functions/business_metrics.py."""
    tree = ast.parse((ROOT / "functions" / "business_metrics.py").read_text())
    found: dict[str, tuple[str, set[str]]] = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "record":
            name = call.args[0].value
            unit = call.args[2].attr if len(call.args) > 2 else "Count"
            dimensions = {keyword.arg or "" for keyword in call.keywords}
            assert found.setdefault(name, (unit, dimensions)) == (unit, dimensions), f"{name} recorded two ways"
    return found


def test_the_business_metrics_table_gives_each_metrics_unit_and_dimensions_as_recorded():
    rows = table(section("## Observability"), "| metric | unit | dimensions |")
    documented = {
        row[0].strip("`"): ({"None": "NoUnit"}.get(row[1], row[1]), set(re.findall(r"`(\w+)`", row[2]))) for row in rows
    }
    recorded = recorded_business_metrics()
    assert "OrderValue" in recorded and recorded["OrderValue"] == ("NoUnit", {"channel", "currency"})
    assert documented == recorded


# --- Paths ------------------------------------------------------------------------------------------------


def test_every_file_of_the_repository_the_readme_names_exists():
    named = set(re.findall(r"\b((?:functions|core|plugins|infra|tests|bench|events)/[\w/.-]+\.\w+)\b", README))
    # and the folders it names in backquotes (`functions/outbox`, `infra/local/moto_patches/`)
    named |= set(re.findall(r"`((?:functions|core|plugins|infra|tests|bench|events)/[\w/-]*)`", README))
    assert "functions/business_metrics.py" in named and "functions/outbox" in named
    assert sorted(path for path in named if not (ROOT / path).exists()) == []


PACKAGES = r"(?:core|functions|plugins|infra|tests|bench)"


def names_in_module(dotted: str) -> bool:
    """Whether `dotted` (`core.money`, `core.money.ExactMoney`, `core.capture_sweep.
    UnrecordedCaptureSweep.run_settlements`) is a module of the repository, a name its module
    defines or imports at the top, or a method or attribute of a class defined there."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)
        if module is None:
            continue
        rest, text = parts[cut:], module.read_text()
        if not rest:
            return True
        top = rf"^(?:(?:async )?def |class ){rest[0]}\b|^{rest[0]}\s*[:=]|^(?:from \S+ )?import .*\b{rest[0]}\b"
        if len(rest) == 1:
            return re.search(top, text, re.MULTILINE) is not None
        body = re.search(rf"^class {rest[0]}\b.*?(?=^\S)", text + "\nEND", re.MULTILINE | re.DOTALL)
        member = rf"^\s+(?:(?:async )?def {rest[1]}\b|{rest[1]}\s*[:=])"
        return len(rest) == 2 and body is not None and re.search(member, body.group(), re.MULTILINE) is not None
    return False


def test_every_module_and_name_in_one_the_readme_names_exists():
    # A rename leaves a sentence naming nothing: `core.money.ExactMoney`, `python -m infra.admin_key`.
    named = set(re.findall(rf"`({PACKAGES}(?:\.\w+)+)(?:\(|`)", README))
    named |= set(re.findall(rf"python -m ({PACKAGES}(?:\.\w+)*)", README))
    named -= {name for name in named if (ROOT / name).is_file()}  # `plugins.txt`: a file, not a module
    assert {"core.money.ExactMoney", "infra.backfill_orders", "bench"} <= named
    assert "core.capture_sweep.UnrecordedCaptureSweep.run_settlements" in named
    assert sorted(name for name in named if not names_in_module(name)) == []


def test_make_fuzz_and_the_readme_name_every_test_file_with_a_fuzz_test_and_no_other():
    # Before: the README's `make fuzz` paragraph left out the backorder state machine
    # (tests/unit/test_backorders.py), which the Makefile's fuzz target runs at length.
    fuzzed = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if re.search(r"^(@pytest\.mark\.fuzz|from tests\.properties import)", path.read_text(), flags=re.M)
    }
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\nfuzz:") :].split("\n\n", 1)[0]
    paragraph = section("## Tests")[section("## Tests").index("`make fuzz`") :]
    assert "tests/unit/test_money_invariants.py" in fuzzed
    assert set(re.findall(r"tests/\S+/test_\w+\.py", target)) == fuzzed
    assert set(re.findall(r"tests/\S+/test_\w+\.py", paragraph)) == fuzzed


def test_the_events_section_opens_with_every_event_type_there_is():
    # Before: `inventory.low` (a stock item below its reorder point) was missing from the list.
    from core.domain_events import EventType

    opening = " ".join(section("## Events and webhooks").split("\n\n")[1].split()).split(" They go to ")[0]
    assert set(re.findall(r"`([a-z]+\.[a-z_]+)`", opening)) == {str(kind) for kind in EventType}


def test_the_security_table_has_a_row_for_every_scope_and_no_other():
    from core.access import Scope

    rows = table(section("## Security: who can do what"), "| scope | may |")
    named = {row[0].strip("`") for row in rows if row[0].startswith("`")}
    assert named == {scope.value for scope in Scope}


# --- The README's own commands --------------------------------------------------------------------


def readme_curls() -> list[tuple[str, str, set[str], str]]:
    """(method, path, query parameter names, line) of each curl in the README's ```sh blocks that
    calls the API: its `-X` method (else POST with `-d`, else GET), and its path with each shell
    variable as one segment."""
    found = []
    for block in shell_blocks(README):
        for line in block.replace("\\\n", " ").splitlines():
            for call in re.findall(r"curl\b(.*?)(?=$|\||;|&&)", line):
                url = re.search(r"""(?:https?://[^/\s"']+|\$API|\.\.\.)(/[^\s"'?]*)(?:\?([^\s"']*))?""", call)
                if url is None:
                    continue
                method = re.search(r"-X\s+(\w+)", call)
                verb = method.group(1) if method else "POST" if re.search(r"\s-d\s", call) else "GET"
                path = re.sub(r"\$\{?\w+\}?", "$", url.group(1)).rstrip("/")
                query = {pair.split("=")[0] for pair in (url.group(2) or "").split("&") if pair}
                found.append((verb, path, query, line.strip()))
    return found


def route_of(method: str, path: str) -> str | None:
    """The route (its path as the app declares it) that `method` `path` reaches: a `{parameter}` of
    a route takes any one segment (a shell variable, `$`, included), a literal segment first."""
    from functions.api.app import _scope_table

    segments = path.strip("/").split("/")
    matches = []
    for verb, template in _scope_table().routes():
        parts = template.strip("/").split("/")
        if verb == method and len(parts) == len(segments):
            pairs = list(zip(parts, segments, strict=True))
            if all(part.startswith("{") or part == segment for part, segment in pairs):
                matches.append((sum(part == segment for part, segment in pairs), template))
    return max(matches)[1] if matches else None


def test_every_curl_the_readme_shows_calls_a_route_the_api_has_with_parameters_it_declares():
    # A query parameter a route does not declare is 422 (Security, "Unknown query parameters").
    from functions.api.app import _scope_table

    curls = readme_curls()
    assert len(curls) > 50 and sum(1 for _, _, query, _ in curls if query) >= 5
    assert [line for method, path, _, line in curls if route_of(method, path) is None] == []
    declared = _scope_table().query_parameters
    assert [line for method, path, query, line in curls if not query <= declared(method, route_of(method, path))] == []


def test_the_query_parameters_the_api_overview_shows_are_the_routes():
    from functions.api.app import _scope_table

    shown = [
        route
        for cell, *_ in OVERVIEW
        for route in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?]*)\?([^`]*)`", cell)
    ]
    assert len(shown) >= 5
    for method, path, query in shown:
        named = {pair.split("=")[0] for pair in query.split("&") if pair}
        assert named <= _scope_table().query_parameters(method, route_of(method, path)), (method, path, query)


def readme_bodies() -> list[tuple[str, str, str]]:
    """(method, path, JSON body) of each curl of the README's ```sh blocks that sends one with `-d
    '...'`, a shell variable spliced into it (`'"$TRACKING"'`, `'$ORDER'`) read as the string X."""
    found = []
    for block in shell_blocks(README):
        for call in re.findall(r"curl\b(.*?)(?=\ncurl|\n[A-Z]+=|\n#|\Z)", block.replace("\\\n", " "), flags=re.DOTALL):
            url = re.search(r"""(?:https?://[^/\s"']+|\$API|\.\.\.)(/[^\s"'?]*)""", call)
            body = re.search(r"-d\s+'(.*?)'(?=\s|$)", call, flags=re.DOTALL)
            if url and body:
                method = re.search(r"-X\s+(\w+)", call)
                path = re.sub(r"\$\{?\w+\}?", "$", url.group(1)).rstrip("/")
                spliced = re.sub(r"""'"?\$\{?\w+\}?"?'""", "X", body.group(1))
                found.append((method.group(1) if method else "POST", path, spliced))
    return found


def test_every_body_the_readme_sends_names_only_fields_its_route_takes_and_every_field_it_needs():
    import json

    from pydantic import ValidationError

    from functions.api.app import _scope_table

    checked = 0
    for method, path, body in readme_bodies():
        for model in _scope_table().body_models(method, route_of(method, path)):
            try:
                model.model_validate(json.loads(body))
            except ValidationError as invalid:
                wrong = [(e["type"], e["loc"]) for e in invalid.errors() if e["type"] in ("extra_forbidden", "missing")]
                assert wrong == [], (method, path, body)
            checked += 1
    assert checked >= 25


def test_every_make_target_the_readme_runs_is_one_of_the_makefiles():
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    commands = re.findall(r"`([^`\n]+)`", prose) + [
        line for block in shell_blocks(README) for line in block.splitlines()
    ]
    named = {
        target
        for command in commands
        for target in re.findall(r"(?:^|&& )(?:[A-Z_]+=\S* )*make ([.a-z][\w./-]*)(?=\s|$)", command.strip())
    }
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    assert {"run", "test", "build", "import", "fuzz", "bench"} <= named
    # Before: the Benchmarks section said the example plugins are what `make .venv` installs; the
    # Makefile has no such rule (the install is `.venv/.installed`, which run, test and bench need).
    assert sorted(named - targets) == []


def test_the_quick_starts_first_order_is_the_banners_with_the_differences_the_readme_names():
    # The Quick start's note: the banner's curl places the same order under the same key, without
    # the promo code and to another address (so after it, the README's body is idempotency_key_reused).
    import inspect
    import json

    from core.ids import order_id_for
    from infra.local.__main__ import FIRST_ORDER, banner

    quick_start = section("## Quick start")
    ((key, body),) = re.findall(r'-H "Idempotency-Key: ([\w-]+)" \\\n\s+-d \'(.*?)\'', quick_start, flags=re.DOTALL)
    ours = json.loads(body)
    assert key == "first-order" and '-H "Idempotency-Key: first-order"' in inspect.getsource(banner)
    assert {name for name in ours.keys() | FIRST_ORDER.keys() if ours.get(name) != FIRST_ORDER.get(name)} == {
        "promo_codes",
        "shipping_address",
    }
    (shown,) = re.findall(r"^ORDER=(ord_\w+)", quick_start, flags=re.MULTILINE)
    assert shown == order_id_for(ours["channel"], ours["external_id"])
    assert "idempotency_key_reused" in quick_start


def test_the_overviews_status_codes_name_every_error_status_the_api_documents():
    # Before: 428 (an edit without If-Match, `if_match_required`) was missing from the list.
    import json

    from functions.api.app import every_route

    document = json.loads(every_route().get_openapi_json_schema())
    documented = {
        int(status)
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for status in operation.get("responses", {})
        if status[0] in "45"
    }
    overview = section("## API overview")
    listed = {
        int(status) for status in re.findall(r"(?:^|[ ,(])([45]\d\d) ", overview[overview.index("Status codes:") :])
    }
    assert {401, 422, 503} <= documented
    assert sorted(documented - listed) == []


def body_fields(shape: str) -> set[str]:
    """The top-level field names of a body as the overview writes it: `{reason, lines: [...], note?}`."""
    depth, fields, current = 0, [], ""
    for character in shape[1:-1]:
        depth += (character in "[{") - (character in "]}")
        if character == "," and depth == 0:
            fields.append(current)
            current = ""
        else:
            current += character
    return {re.match(r"\s*(\w+)", field).group(1) for field in [*fields, current] if field.strip()}


def test_the_body_an_overview_row_opens_with_has_the_fields_of_its_routes_model():
    from functions.api.app import _scope_table

    checked = 0
    for cell, *rest in OVERVIEW:
        what = "|".join(rest).replace("\\|", "|")
        shape = re.match(r"\s*`(\{.*?\})`", what)
        if shape is None:
            continue
        for method, path in row_routes(cell):
            models = _scope_table().body_models(method, route_of(method, path)) if method != "GET" else []
            for model in models:
                assert body_fields(shape.group(1)) == set(model.model_fields), (method, path)
                checked += 1
    assert checked >= 8


def test_every_test_the_readme_names_exists():
    named = set(re.findall(r"`(test_\w+)`", README)) - {"test_payments"}  # the built-in plugin
    defined = {
        name
        for folder in (ROOT / "tests", ROOT / "plugins" / "examples")
        for path in folder.rglob("test_*.py")
        for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), flags=re.MULTILINE)
    }
    assert "test_the_whole_workflow_again_after_allocation_changes_nothing" in named
    assert sorted(named - defined) == []


def test_every_oms_or_powertools_variable_the_local_stack_reads_has_a_row():
    # Before: POWERTOOLS_TRACE_DISABLED and POWERTOOLS_METRICS_DISABLED, which `make run` sets to
    # true unless the shell sets them, had none.
    read = set()
    for path in (ROOT / "infra").rglob("*.py"):
        read |= set(re.findall(r'"((?:OMS|POWERTOOLS)_[A-Z0-9_]+)"', path.read_text()))
    assert {"OMS_PORT", "POWERTOOLS_METRICS_DISABLED"} <= read
    assert sorted(name for name in read if not documented(name)) == []


def test_the_benchmarks_section_names_every_variable_the_bench_reads():
    # Before: BENCH_ORDERS, BENCH_PROFILE_ORDERS, BENCH_WORKFLOW_RUNS, BENCH_STEADY_ORDERS and
    # BENCH_RETURNS were read by bench/ and named nowhere.
    read = set(re.findall(r'environ\.get\("(BENCH_\w+)"', "\n".join(sources("bench").values())))
    assert {"BENCH_RUNS", "BENCH_IMPORT_SIZES"} <= read
    assert sorted(read - set(re.findall(r"`(BENCH_\w+)", section("## Benchmarks")))) == []


# --- The bench figures the README states --------------------------------------------------------------


def bench_cell(heading: str, first: str, column: int, nth: int = 0) -> str:
    """The `column`-th cell of the `nth` table row under BENCHMARKS.md's `heading` whose first cell
    starts with `first`."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    part = text[text.index(f"\n## {heading}") :].split("\n## ", 2)[1]
    rows = [line for line in part.splitlines() if line.startswith(f"| {first}")]
    return rows[nth].strip("|").split("|")[column].strip()


def numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", text)


def test_the_readme_states_the_last_bench_figures():
    # Before: the Benchmarks section gave the cold path's and POST /orders' figures of the last run
    # in its prose among the runs before it, and nothing told when `make bench` had rewritten them.
    rate, cold, ours, cost = (
        "Orders per second",
        "Cold start of the API function",
        "Our own CPU per",
        "The order workflow",
    )

    def figure(heading: str, first: str, column: int, nth: int = 0) -> str:
        return numbers(bench_cell(heading, first, column, nth))[0]

    def target(heading: str, first: str, column: int, nth: int = 0) -> list[str]:
        return numbers(bench_cell(heading, first, column, nth).partition("target")[2])

    handler, floor = figure(cold, "API handler: import", 2), figure(cold, "the floor:", 2)
    # The handler may run below the floor: the floor's boto3 parses botocore's whole endpoint data,
    # the handler the build's digest of it. The table says how far, and which side.
    gap = float(handler) - float(floor)
    expected = [
        (
            [figure(rate, "ratio: orders / the same calls made raw", 2), figure(rate, "`POST /orders` over", 2),
             figure(rate, "the same AWS calls made raw", 2)],
            target(rate, "ratio: orders / the same calls made raw", 2),
        ),
        ([figure(ours, "**ours**", 1), figure(ours, "inside AWS calls", 1)], []),
        (
            [figure(cold, "ratio |", 2), handler, figure(cold, "boto3: import", 2),
             figure(cold, "ratio of the floor", 2), f"{abs(gap):.3f}"],
            target(cold, "ratio |", 2),
        ),
        ([figure(cold, "ratio |", 2, nth=1)], target(cold, "ratio |", 2, nth=1)),
        (
            [figure(cost, "**total, logs and tracing included", 1),
             figure(cost, "**$ per million orders, logs and tracing included**", 2)],
            target(cost, "**total, logs and tracing included", 1),
        ),
    ]  # fmt: skip
    stated = [(numbers(figures), numbers(goal)) for _, goal, figures in table(section("## Benchmarks"), "| measure |")]
    assert stated == expected, "README's Benchmarks table differs from BENCHMARKS.md: copy the last run's figures"
    cold_path = next(figures for first, _, figures in table(section("## Benchmarks"), "| measure |") if "cold" in first)
    assert f" s {'below' if gap < 0 else 'above'} it" in cold_path


# --- The architecture picture -------------------------------------------------------------------------

PICTURE = section("## Architecture").split("```", 2)[1]
ORDER_WORKFLOW = json.loads((ROOT / "infra" / "order_workflow.asl.json").read_text())["States"]


def test_the_architecture_picture_names_every_step_and_every_outcome_the_order_workflow_catches():
    # Before: it showed PaymentDeclined and OutOfStock only, so a backordered order (ReserveStock's
    # and CreateShipments' Backordered: OrderBackordered) and a held or closed one seemed to end
    # nowhere but in a cancel or a park.
    tasks = {name for name, state in ORDER_WORKFLOW.items() if state["Type"] == "Task"}
    caught = {
        (error, catch["Next"])
        for state in ORDER_WORKFLOW.values()
        for catch in state.get("Catch", [])
        for error in catch["ErrorEquals"]
        if error != "States.ALL" and state["Type"] == "Task"
    }
    assert "CreateShipments" in tasks and ("OutOfStock", "CancelOrder") in caught
    assert sorted(name for name in tasks if not re.search(rf"\b{name}\b", PICTURE)) == []
    assert sorted({name for pair in caught for name in pair if not re.search(rf"\b{name}\b", PICTURE)}) == []


def test_each_arrow_between_two_steps_of_the_architecture_picture_is_a_transition_of_the_workflow():
    arrows = re.findall(r"\b([A-Z]\w+) ──▶ ([A-Z]\w+)\b", PICTURE)
    states = set(ORDER_WORKFLOW)
    between_states = [(a, b) for a, b in arrows if a in states and b in states]
    assert ("AuthorizePayment", "ReserveStock") in between_states

    def successors(state: dict) -> set[str]:
        branches = state.get("Catch", []) + state.get("Choices", [])
        return {state.get("Next"), state.get("Default")} | {branch["Next"] for branch in branches}

    assert [(a, b) for a, b in between_states if b not in successors(ORDER_WORKFLOW[a])] == []


def test_each_stream_the_architecture_picture_draws_feeds_the_function_it_points_to_and_no_other():
    # "Orders stream (...) ──▶ functions/outbox": the tables whose streams the template gives that
    # function are the ones the line names.
    drawn = {}
    for line in PICTURE.splitlines():
        arrow = re.search(r"(.*?)\bstreams?\b.*?──▶ functions/(\w+)", line)
        if arrow:
            tables = re.findall(r"\b(Orders|Inventory|Catalog|Returns|Idempotency)\b", arrow.group(1))
            drawn[arrow.group(2)] = set(tables)
    fed: dict[str, set[str]] = {}
    for resource in TEMPLATE["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        folder = resource["Properties"]["Handler"].split(".")[1]
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "DynamoDB":
                table = event["Properties"]["Stream"]["Fn::GetAtt"][0].removesuffix("Table")
                fed.setdefault(folder, set()).add(table)
    assert drawn.get("outbox") == {"Orders"}
    assert {folder: fed.get(folder) for folder in drawn} == drawn
    assert sorted(folder for folder in fed if folder not in drawn) == []


def test_every_function_and_table_the_architecture_picture_draws_is_the_templates():
    handlers = {
        resource["Properties"]["Handler"].split(".")[1]
        for resource in TEMPLATE["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    boxes = set(re.findall(r"functions/(\w+)", PICTURE)) - {"adapters"}
    assert "reconciler" in boxes and sorted(boxes - handlers) == []
    tables = {
        name.removesuffix("Table")
        for name, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::DynamoDB::Table"
    }
    drawn = re.search(r"DynamoDB: (.*)", PICTURE).group(1)
    assert set(re.findall(r"\b([A-Z][a-z]+)\b", drawn)) == tables


def test_each_file_and_class_the_local_runtime_picture_draws_is_in_infra_local():
    # `process.py      ProcessEnvironment`, `EmbeddedStack (stack.py)`: bare names the path check misses.
    picture = README[README.index("### The local runtime (`infra/local/`)") :].split("```", 2)[1]
    files = set(re.findall(r"(?<![\w/])(\w+\.py)\b", picture))
    pairs = set(re.findall(r"(\w+\.py)\s+([A-Z]\w+)", picture)) | {
        (path, name) for name, path in re.findall(r"\b([A-Z]\w+) \((\w+\.py)\)", picture)
    }
    local = ROOT / "infra" / "local"
    assert {"event_sources.py", "lambdas.py"} <= files and ("stack.py", "EmbeddedStack") in pairs
    assert sorted(path for path in files if not (local / path).is_file()) == []
    defined = [(path, name) for path, name in pairs if re.search(rf"^class {name}\b", (local / path).read_text(), re.M)]
    assert sorted(pairs - set(defined)) == []


def test_the_built_in_shipping_rows_name_the_currencies_the_plugins_quote_and_no_other():
    from plugins.flat_rate_shipping import FLAT_RATES
    from plugins.weight_based_shipping import GROUND_RATES

    rows = {row[0]: row[1] for row in table(section("### Configuring the built-in plugins"), "| plugin |")}
    named = re.search(r"in ((?:[A-Z]{3}, )+[A-Z]{3}) and ([A-Z]{3}) only", rows["`flat_rate_shipping`"])

    assert named, rows["`flat_rate_shipping`"]
    assert [*named.group(1).split(", "), named.group(2)] == list(FLAT_RATES) == list(GROUND_RATES)
    assert "the same six as `flat_rate_shipping`" in rows["`weight_based_shipping`"]
