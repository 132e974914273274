"""`make bench`: measure the local stack and write BENCHMARKS.md."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.cost import AWS_CALL_SECONDS, LAMBDA_PLATFORM_LOG_BYTES
from bench.stack import ROOT, StackProcess, external_id, stack_process

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
ORDERS_PER_RUN = int(os.environ.get("BENCH_ORDERS", "300"))
CLIENT_THREADS = 4


def order_body(external_id: str) -> dict:
    return {
        "channel": "bench",
        "external_id": external_id,
        "currency": "USD",
        "customer": {"id": "cus_bench", "email": "bench@example.com"},
        "lines": [{"sku": "TSHIRT-BLK-M", "quantity": 1}],
        "shipping_address": {
            "name": "Bench",
            "line1": "1 Market St",
            "city": "San Francisco",
            "region": "CA",
            "postal_code": "94105",
            "country": "US",
        },
        "payment": {"method": "test", "token": "tok_approve"},
    }


def post_orders_per_second(stack: StackProcess, count: int) -> float:
    """`count` POST /orders from CLIENT_THREADS keep-alive clients; every answer must be 201."""
    failures: list[int] = []
    per_thread = count // CLIENT_THREADS

    def client() -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        for _ in range(per_thread):
            response = session.post(f"{stack.api_url}/orders", json=order_body(external_id()), headers=headers)
            if response.status_code != 201:
                failures.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} orders failed: {sorted(set(failures))}")
    return per_thread * CLIENT_THREADS / elapsed


# The simplest pair, kept for comparison with earlier runs: one stock key, a two-attribute item,
# tables without indexes or streams.
RAW_PAIR = """
import os, time
os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
from moto import mock_aws
import boto3
with mock_aws():
    c = boto3.client("dynamodb")
    for name in ("orders", "stock"):
        c.create_table(TableName=name, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                       AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                       BillingMode="PAY_PER_REQUEST")
    c.put_item(TableName="stock", Item={"id": {"S": "TSHIRT-BLK-M#wh-west"}, "available": {"N": "1000000"}})
    n = %d
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        c.batch_get_item(RequestItems={"stock": {"Keys": [{"id": {"S": "TSHIRT-BLK-M#wh-west"}}]}})
        c.put_item(TableName="orders", Item={"id": {"S": f"ord_{i}"}, "status": {"S": "pending"}},
                   ConditionExpression="attribute_not_exists(id)")
    print(n / (time.perf_counter() - start), n / (time.process_time() - cpu))
"""

# The calls one order makes, replayed as captured (bench.request_profile --capture): the same
# requests against tables created as the stack's are (keys, indexes, stream), the stock the order
# read put first; each round's writes get their keys made new, so every conditional put succeeds.
RAW_ORDER_CALLS = """
import os, pickle, sys, time
os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
from botocore import xform_name
from moto import mock_aws
import boto3
with open(sys.argv[1], "rb") as file:
    captured = pickle.load(file)
n = int(sys.argv[2])
with mock_aws():
    c = boto3.client("dynamodb")
    keys = {}
    for table in captured["tables"]:
        request = {key: table[key] for key in ("TableName", "KeySchema", "AttributeDefinitions")}
        request["BillingMode"] = "PAY_PER_REQUEST"
        if table.get("GlobalSecondaryIndexes"):
            request["GlobalSecondaryIndexes"] = [{k: index[k] for k in ("IndexName", "KeySchema", "Projection")}
                                                 for index in table["GlobalSecondaryIndexes"]]
        if table.get("StreamSpecification"):
            request["StreamSpecification"] = table["StreamSpecification"]
        c.create_table(**request)
        keys[table["TableName"]] = [key["AttributeName"] for key in table["KeySchema"]]
    for name, item in captured["items"]:
        c.put_item(TableName=name, Item=item)
    calls = [(getattr(c, xform_name(op)), op, params) for op, params in captured["calls"]]
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        for call, op, params in calls:
            if op == "PutItem":
                item = dict(params["Item"])
                for key in keys[params["TableName"]]:
                    item[key] = {"S": f"{item[key]['S']}-{i}"}
                params = {**params, "Item": item}
            call(**params)
    print(n / (time.perf_counter() - start), n / (time.process_time() - cpu))
"""


def raw_pairs_per_second(count: int) -> tuple[float, float]:
    """The simplest pair (RAW_PAIR) in a fresh process: per second of wall time and of CPU time."""
    out = subprocess.run([sys.executable, "-c", RAW_PAIR % count], capture_output=True, text=True, check=True)
    per_second, per_cpu_second = out.stdout.split()
    return float(per_second), float(per_cpu_second)


def capture_order_calls(scratch: Path) -> Path:
    """The AWS calls of one POST /orders, captured from a warm API handler in a fresh process."""
    path = scratch / "order-calls.pickle"
    subprocess.run([sys.executable, "-m", "bench.request_profile", "--capture", str(path)], cwd=ROOT,
                   capture_output=True, check=True)  # fmt: skip
    return path


def raw_order_calls_per_second(captured: Path, count: int) -> tuple[float, float]:
    """The AWS calls one order makes (the stock BatchGetItem and the conditional PutItem), made raw
    with moto in-process in a fresh process, as captured: the least one stored order costs
    locally. Orders per second of wall time and per second of the process's CPU time."""
    out = subprocess.run([sys.executable, "-c", RAW_ORDER_CALLS, str(captured), str(count)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    per_second, per_cpu_second = out.stdout.split()
    return float(per_second), float(per_cpu_second)


COLD_HANDLER = """
import json, sys, uuid
from functions.api.app import lambda_handler
body = json.loads(sys.argv[1])
body["external_id"] = uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))
event = {"resource": "/orders", "path": "/orders", "httpMethod": "POST",
         "headers": {"Content-Type": "application/json"}, "multiValueHeaders": {},
         "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
         "requestContext": {"requestId": "cold", "stage": "v1", "path": "/v1/orders", "resourcePath": "/orders",
                            "httpMethod": "POST",
                            "authorizer": {"key_id": "key_admin", "scopes": "admin", "channel": ""}},
         "body": json.dumps(body), "isBase64Encoded": False}
class Context:
    function_name = "ApiFunction"; memory_limit_in_mb = 512; aws_request_id = "cold"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    def get_remaining_time_in_millis(self): return 10000
status = lambda_handler(event, Context())["statusCode"]
assert status == 201, status
"""

COLD_BASELINE = """
import os, uuid
import boto3
boto3.client("dynamodb").put_item(TableName=os.environ["ORDERS_TABLE"],
    Item={"id": {"S": "ord_" + uuid.uuid4().hex}, "status": {"S": "pending"}})
"""

# The baseline plus the libraries the API function is built on, imported as it imports them
# (pydantic, powertools' Logger and Metrics, its REST resolver with OpenAPI validation): the floor
# under the API function's cold path before any code of ours runs.
COLD_FRAMEWORKS = (
    """
import pydantic
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
import aws_lambda_powertools.event_handler.middlewares.openapi_validation
import aws_lambda_powertools.event_handler.openapi.params
"""
    + COLD_BASELINE
)


def examples_not_deployed() -> str:
    """The `oms` entry points of the repository's example plugin distributions (plugins/examples/),
    which the install (`.venv/.installed`) puts in .venv for the tests, as OMS_DISABLED_PLUGINS
    names them: a deployment's layer holds only the OMS's dependencies and what plugins.txt names,
    so a cold start measured on the artifact loads none of them (unless plugins.txt names one)."""
    import importlib.metadata

    deployed = (ROOT / "plugins.txt").read_text()
    names = set()
    for dist in importlib.metadata.distributions():
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        example = url.partition(f"{ROOT.as_uri()}/")[2]
        if example.startswith("plugins/examples/") and example not in deployed:
            names.update(entry_point.name for entry_point in dist.entry_points if entry_point.group == "oms")
    return ",".join(sorted(names))


@functools.cache
def deployed_constants(function: str = "ApiFunction") -> dict[str, str]:
    """The variables template.yaml fixes for `function` (Globals' and its own, neither a parameter
    nor a resource behind them: POWERTOOLS_SERVICE_NAME, PYDANTIC_DISABLE_PLUGINS...), as a
    deployment sets them: a measured process runs with them, as the local stack's functions do."""
    from infra.local.template import Template, env_string

    variables = Template.load().functions()[function]["Environment"]["Variables"]
    return {name: env_string(value) for name, value in variables.items() if not isinstance(value, dict)}


def fresh_process_seconds(code: str, env: dict[str, str], *args: str, cwd: Path = ROOT) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of a fresh interpreter running `code`; in `cwd`,
    which is first on its sys.path. The CPU time is what the process itself did: on a machine
    that other work shares, its wall time also holds the time it waited for a core."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        # The stack's own functions get these from the template; this process is not one of them.
        env={
            **os.environ,
            **env,
            **deployed_constants(),
            "POWERTOOLS_METRICS_DISABLED": "true",
            "OMS_ENABLE_TEST_PAYMENTS": "true",
            "OMS_DISABLED_PLUGINS": examples_not_deployed(),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    assert process.stderr is not None
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if status != 0:
        raise RuntimeError(f"a measured process failed ({status}):\n{errors[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def built_api_function(scratch: Path) -> Path:
    """The API function's artifact as `make build` makes it (our packages, unchecked-hash .pyc),
    so the cold start is measured on what Lambda runs. Its dependencies come from this virtualenv
    (the layer's aarch64 binaries do not run here), from the .pyc their first import wrote."""
    from infra.build import build_function

    artifact = scratch / "ApiFunction"
    build_function(artifact, ROOT)
    return artifact


# `python -m bench cold profile` runs only the sections named (any of these) and prints their
# report instead of writing BENCHMARKS.md: the whole run takes most of an hour on a loaded machine.
SECTIONS = ("rate", "cold", "profile", "workflow", "returns", "aggregates", "import")


def chosen_sections(argv: list[str]) -> tuple[str, ...]:
    unknown = [name for name in argv if name not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    return tuple(argv) or SECTIONS


def main() -> None:
    sections = chosen_sections(sys.argv[1:])
    # Every section measures what a deployment loads, as the cold start does: the stacks and
    # processes it starts take this variable as the DisabledPlugins parameter.
    os.environ.setdefault("OMS_DISABLED_PLUGINS", examples_not_deployed())
    results: dict[str, list[float]] = {
        "post": [], "raw": [], "post_cpu": [], "raw_cpu": [], "simple": [], "simple_cpu": [],
        "cold_handler": [], "cold_baseline": [],
        "cold_frameworks": [], "authorizer_import": [], "boto3_import": [],
    }  # fmt: skip
    cold = ("cold_handler", "cold_baseline", "cold_frameworks", "authorizer_import", "boto3_import")
    results.update({f"{key}_cpu": [] for key in cold})
    load_at_start = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    artifact = built_api_function(scratch) if "cold" in sections else scratch
    order_calls = capture_order_calls(scratch) if {"rate", "profile"} & set(sections) else scratch
    with stack_process() as stack:
        if "rate" in sections:
            post_orders_per_second(stack, 40)  # warm up: imports, first moto calls
        for run in range(RUNS if {"rate", "cold", "profile"} & set(sections) else 0):
            # The profile's ceiling is a share of the raw calls' rate, so it measures them too.
            if "rate" in sections or "profile" in sections:
                raw, raw_cpu = raw_order_calls_per_second(order_calls, 1000)
                results["raw"].append(raw)
                results["raw_cpu"].append(raw_cpu)
                simple, simple_cpu = raw_pairs_per_second(2000)
                results["simple"].append(simple)
                results["simple_cpu"].append(simple_cpu)
            if "rate" in sections:
                stack_cpu = stack.cpu_seconds()
                results["post"].append(post_orders_per_second(stack, ORDERS_PER_RUN))
                if stack_cpu is not None:
                    results["post_cpu"].append(ORDERS_PER_RUN / ((stack.cpu_seconds() or 0.0) - stack_cpu))
            if "cold" not in sections:
                continue
            body = json.dumps(order_body("cold"))
            # Interleaved, so drift on the machine hits both sides alike.
            for key, code, args, cwd in [
                ("cold_baseline", COLD_BASELINE, (), ROOT),
                ("cold_handler", COLD_HANDLER, (body,), artifact),
                ("cold_frameworks", COLD_FRAMEWORKS, (), artifact),
                ("boto3_import", "import boto3", (), artifact),
                ("authorizer_import", "import functions.authorizer.app", (), artifact),
            ]:
                wall, cpu = fresh_process_seconds(code, stack.env, *args, cwd=cwd)
                results[key].append(wall)
                results[f"{key}_cpu"].append(cpu)
            print(
                f"run {run + 1}/{RUNS}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in results.items() if v),
                flush=True,
            )
    shutil.rmtree(scratch, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items() if v}

    def cell(key: str, fmt: str) -> str:
        if not results[key]:
            return "(not measured here)"
        low, high = min(results[key]), max(results[key])
        return f"{med[key]:{fmt}} ({low:{fmt}}–{high:{fmt}})"

    def ratio(key: str, baseline: str) -> str:
        return f"{med[key] / med[baseline]:.2f}" if key in med and baseline in med else "–"

    report = f"""# Benchmarks

Written by `make bench` on {datetime.date.today().isoformat()}. Machine: {machine()}; load average
{load_at_start:.1f} when it started and {os.getloadavg()[0]:.1f} after the first sections (other work shares the
machine: compare each number with its baseline, not with another day's run).
Each number is the median of {RUNS} runs (min–max in brackets); every baseline was measured in the
same run, interleaved with what it is compared to. The local stack runs in its own process
(`python -m infra.local`), so the load generator does not share its interpreter.
"""
    rate = f"""
## Orders per second on the local stack

Per second of wall time, and per second of CPU time of the process doing the work (the stack's
process for the orders, the fresh process for the raw calls): on a shared machine the wall-time
rates also measure how much of a core each process got, which favours the stack's many threads
over the raw calls' one; the CPU-time rates do not.

| what | per second | per CPU second |
| --- | --- | --- |
| `POST /orders` over local HTTP ({CLIENT_THREADS} clients, {ORDERS_PER_RUN} orders a run) | {cell("post", ".0f")} \
| {cell("post_cpu", ".0f")} |
| the same AWS calls made raw in a fresh process: one order's stock `BatchGetItem` and conditional `PutItem` \
as captured (baseline) | {cell("raw", ".0f")} | {cell("raw_cpu", ".0f")} |
| ratio: orders / the same calls made raw | **{ratio("post", "raw")}** | **{ratio("post_cpu", "raw_cpu")}** \
(target ≥ 0.5) |
| for comparison with runs before 2026-12-01: the simplest pair (one stock key, a two-attribute item, tables \
without indexes or stream) | {cell("simple", ".0f")} | {cell("simple_cpu", ".0f")} |
| ratio: orders / the simplest pair | {ratio("post", "simple")} | {ratio("post_cpu", "simple_cpu")} |

An order makes two AWS calls, captured from a warm API handler in the same run and replayed raw
as the baseline: a BatchGetItem of the SKU's stock at every location that holds it (the capture
check) and the conditional PutItem of the order (its compressed document, history and the
attributes its four indexes read) into a table with those indexes and a stream. Around them the
stack adds the authorizer (its answer cached 5 s per key), HTTP parsing, the local gateway,
pydantic validation and pricing through the plugins; products and locations come from the
container's 10 s cache. The order workflow is off for this measurement (see below). Until
2026-12-01 the baseline was the simplest pair, kept in the table: it is not the same calls, and
moto serves it about twice as fast.
"""
    cold_start = f"""
## Cold start of the API function and the authorizer

A fresh Python process that imports `functions.api.app` and serves one `POST /orders` against the
running stack's AWS endpoint, beside a fresh process that imports boto3 and does one `put_item`
against the same endpoint (both include interpreter start-up and exit). Our code is imported from
the API function's artifact as `make build` makes it (unchecked-hash `.pyc`); the dependencies
from this machine's virtualenv, from their `.pyc` (the layer's aarch64 binaries cannot run here),
with the plugins a deployment ships: the example plugins the virtualenv holds for the tests
(plugins/examples/) are disabled unless plugins.txt names them.
Wall time, and the process's CPU time (user + system), which waiting for a core does not inflate.

| process | seconds | CPU seconds |
| --- | --- | --- |
| API handler: import + one `POST /orders` | {cell("cold_handler", ".3f")} | {cell("cold_handler_cpu", ".3f")} |
| boto3: import + one `put_item` (baseline) | {cell("cold_baseline", ".3f")} | {cell("cold_baseline_cpu", ".3f")} |
| ratio | **{ratio("cold_handler", "cold_baseline")}** | **{ratio("cold_handler_cpu", "cold_baseline_cpu")}** \
(target ≤ 1.5) |
| the floor: the baseline after importing pydantic and powertools' Logger, Metrics and REST resolver | \
{cell("cold_frameworks", ".3f")} | {cell("cold_frameworks_cpu", ".3f")} |
| ratio of the floor to the baseline | {ratio("cold_frameworks", "cold_baseline")} | \
{ratio("cold_frameworks_cpu", "cold_baseline_cpu")} |
| authorizer: `import functions.authorizer.app` | {cell("authorizer_import", ".3f")} | \
{cell("authorizer_import_cpu", ".3f")} |
| `import boto3` alone (baseline) | {cell("boto3_import", ".3f")} | {cell("boto3_import_cpu", ".3f")} |
| ratio | **{ratio("authorizer_import", "boto3_import")}** | **{ratio("authorizer_import_cpu", "boto3_import_cpu")}** \
(target ≤ 1.2) |
"""
    if "rate" in sections:
        report += rate
    if "cold" in sections:
        report += cold_start
    if "profile" in sections:
        report += request_profile_report(med["raw_cpu"])
    if "workflow" in sections:
        report += workflow_report()
    if "returns" in sections:
        report += returns_report()
    if "aggregates" in sections:
        report += aggregates_report()
    if "import" in sections and os.environ.get("BENCH_IMPORT_SIZES", "1000,10000,100000"):
        from bench.imports import markdown, run_import_bench

        report += "\n" + markdown(run_import_bench())
    elif sections == SECTIONS:
        report += previous_import_section()
    if sections == SECTIONS:
        (ROOT / "BENCHMARKS.md").write_text(report)
    print(report)


def previous_import_section() -> str:
    """The bulk import's section of the last BENCHMARKS.md, kept (and said to be kept) when this
    run leaves the import out (BENCH_IMPORT_SIZES empty): it takes most of a full run."""
    previous = (ROOT / "BENCHMARKS.md").read_text() if (ROOT / "BENCHMARKS.md").exists() else ""
    heading = "## Bulk import"
    if heading not in previous:
        return ""
    section = previous[previous.index(heading) :]
    note = "\n\n(Not re-run by the run above: kept from the previous `make bench`"
    if "\n\n(Not re-run by the run above:" not in section:  # a section kept before says where from
        dated = previous.splitlines()[2] if len(previous.splitlines()) > 2 else ""
        origin = dated.split(" on ", 1)[-1].split(".", 1)[0] if dated.startswith("Written by") else "an earlier run"
        first_line_end = section.index("\n")
        section = f"{section[:first_line_end]}{note}, {origin}.){section[first_line_end:]}"
    return "\n" + section


def request_profile_report(raw_calls_per_second: float) -> str:
    """bench.request_profile in a fresh process: our own CPU per POST /orders, and where it goes,
    and what the AWS calls alone would allow against the same calls' raw rate."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.request_profile"], cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    profile = json.loads(out.stdout.strip().splitlines()[-1])
    lines = [
        "",
        "## Our own CPU per `POST /orders`",
        "",
        f"{profile['orders']} orders through the API handler in-process (no HTTP, no authorizer), against the "
        "local stack's in-process moto. CPU time inside botocore's API call (moto's work, standing in for "
        "DynamoDB) is split from the rest, which is ours and is billed Lambda duration on AWS.",
        "",
        "| what | ms of CPU per order |",
        "| --- | --- |",
        f"| the handler, all of it | {profile['cpu_ms_per_order']:.2f} |",
        f"| inside AWS calls (moto here; a network wait on AWS) | {profile['aws_ms_per_order']:.2f} |",
        f"| **ours**: routing, validation, pricing, plugins, serialization | **{profile['own_ms_per_order']:.2f}** |",
        "",
        # The ceiling of the POST /orders ratio above: the order's own AWS calls inside the stack,
        # against the same calls made raw in a fresh process (near 1: moto's work is the same).
        f"The AWS calls of one order alone ({profile['aws_ms_per_order']:.2f} ms) would allow "
        f"{1000 / profile['aws_ms_per_order']:.0f} orders per CPU second if everything else cost nothing: "
        f"**{1000 / profile['aws_ms_per_order'] / raw_calls_per_second:.2f}** of the same calls' raw rate per CPU "
        "second above, the ceiling of that ratio on the local stack.",
        "",
        "Where our share goes (the stack sampled every 0.5 ms of CPU, AWS calls left out; own time per package):",
        "",
        "| package | share of our CPU |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {share:.0%} |" for name, share in profile["own_share_by_owner"].items() if share >= 0.005]
    lines += ["", "The costliest functions of ours, cumulative (share of our CPU):", "", "| function | share |",
              "| --- | --- |"]  # fmt: skip
    own = [(n, v) for n, v in profile["top_own_functions_share_cumulative"] if not n.startswith("aws_lambda")]
    lines += [f"| `{name}` | {share:.0%} |" for name, share in own[:15]]
    return "\n".join(lines) + "\n"


WORKFLOW_RUNS = int(os.environ.get("BENCH_WORKFLOW_RUNS", "3"))


def workflow_run(*args: str) -> dict[str, Any]:
    """One `python -m bench.workflow` in a fresh process: the JSON object it prints last. Its stderr
    (the stack's warnings: a `wait_until_idle` that timed out logs what was busy and every thread's
    stack there) is kept in a file, named on our stderr when the run failed or an order of it did not
    end `allocated` (every order of the run has the stock and the card to be)."""
    with tempfile.NamedTemporaryFile("w", prefix="bench-workflow-", suffix=".stderr", delete=False) as stderr:
        out = subprocess.run([sys.executable, "-m", "bench.workflow", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=stderr, text=True)  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"bench.workflow {' '.join(args)} exited {out.returncode}: its stderr is in {stderr.name}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if set(result["statuses"]) != {"allocated"}:
        print(f"bench.workflow {' '.join(args)}: statuses {result['statuses']}; its stderr is in {stderr.name}",
              file=sys.stderr, flush=True)  # fmt: skip
    else:
        os.unlink(stderr.name)
    return result


def workflow_report() -> str:
    """bench.workflow in fresh processes: orders from POST to allocated, and the AWS bill."""
    runs = []
    for run in range(WORKFLOW_RUNS):
        runs.append(workflow_run())
        print(f"workflow run {run + 1}/{WORKFLOW_RUNS}: {runs[-1]['allocated_per_second']:.1f} orders/s", flush=True)
    runs.sort(key=lambda r: r["total_per_million_orders"])
    typical = runs[len(runs) // 2]
    steady = workflow_run("steady")
    print(f"workflow at a steady rate: {steady['orders']} orders, {steady['statuses']}", flush=True)
    rates = sorted(r["allocated_per_second"] for r in runs)
    lines = [
        "",
        "## The order workflow: POST to `allocated`, and what an order costs on AWS",
        "",
        f"{typical['orders']} orders a run (tok_approve, one line each), placed by {typical['clients']} clients over "
        "HTTP on the local stack with the outbox, the Express state machine (moto's interpreter) and its Lambda tasks "
        "running in-process; then each shipment shipped and delivered: half of the orders with a request per "
        "shipment and action (`POST .../ship`, `.../deliver`), the other half as a warehouse system confirms them, "
        f"in `POST /shipments/confirmations` batches of {typical['confirmation_batch']}; each half's cost is scaled "
        "to every order. The figures below are the batched way; the table after them compares the two. "
        f"{WORKFLOW_RUNS} runs.",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| orders per second from POST to `allocated` (median, min–max) | {statistics.median(rates):.1f} "
        f"({rates[0]:.1f}–{rates[-1]:.1f}) |",
        f"| statuses once the workflow settled (median run) | {typical['statuses']} |",
        f"| API requests per order (POST, then ship and deliver in batches) | "
        f"{typical['api_requests_per_order']:.2f} |",
        f"| Lambda GB-seconds per order (our CPU time here + a network wait per AWS call, x template memory) | "
        f"{typical['lambda_gb_seconds_per_order']:.4f} |",
        f"| DynamoDB write units per order (estimated, incl. index writes) | {typical['wru_per_order']:.1f} |",
        f"| DynamoDB read units per order (estimated) | {typical['rru_per_order']:.1f} |",
        "",
        "AWS requests per order, counted by wrapping botocore's API call and attributing each to the "
        "function that made it (median run):",
        "",
        "| function | request | per order |",
        "| --- | --- | --- |",
    ]
    for key, value in typical["requests_per_order_by_function"].items():
        function, operation = key.split(" ", 1)
        lines.append(f"| {function} | {operation} | {value:.2f} |")
    lines += write_units_markdown(typical)
    lines += ["", "| Lambda function | invocations per order |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in typical["lambda_invocations_per_order"].items()]
    scheduled = typical["scheduled_per_million_orders"]
    lines += [
        "",
        "A scheduled function runs by the clock, not per order: its runs are charged at the template's rate "
        "(its `Schedule` events') for the seconds the run's orders arrived over, each run costing "
        f"what the runs measured here every {typical['schedules_measured_every_seconds']:g} s cost on average "
        "(its requests, units, Lambda time and logs; `bench/workflow.py`, `ScheduledRuns`): "
        + ", ".join(f"{name} ${cost:.4f}" for name, cost in sorted(scheduled.items()))
        + " per million orders at the burst's rate.",
        "",
        "Dollars per million orders from capture to delivery at AWS list prices (us-east-1, on-demand; "
        "the prices and the capacity-unit model are in `bench/cost.py`), at the burst's rate: "
        f"{typical['clients']} clients placing orders as fast as they can, so each batching window gathers many "
        "orders' records (the table after it prices an order at a steady rate, one window to an order):",
        "",
        "| service | $ per million orders |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in typical["dollars_per_million_orders"].items()]
    total = typical["total_per_million_orders"]
    optional = typical["optional_dollars_per_million_orders"]
    lines += [f"| {feature} | {cost:.2f} |" for feature, cost in optional.items()]
    lines += [
        f"| **total, logs and tracing included (the template's defaults)** | **{total + sum(optional.values()):.2f}** "
        "(target ≤ 15) |",
        f"| without the {len(optional)} rows above them (each a setting of the template's) | {total:.2f} |",
        "",
    ]
    lines += rates_markdown(typical, steady)
    lines += confirmations_markdown(typical)
    lines += features_markdown(typical, total + sum(optional.values()))
    logged = typical["log_bytes_per_order"]
    lines += [
        "Lambda's billed duration is modeled, not timed (a loaded machine's waits would count as run time): "
        "each invocation's CPU time here, less the CPU inside AWS calls (moto's work; on AWS the service's), "
        "stretched to the function's share of a CPU (Lambda gives one vCPU's worth at 1,769 MB: a 512 MB function "
        "takes 3.5 times as long as one CPU here), plus "
        "a network wait per AWS call ("
        + ", ".join(f"{service} {seconds * 1000:.0f} ms" for service, seconds in AWS_CALL_SECONDS.items())
        + "; assumptions in `bench/cost.py`). Express executions are billed on the tasks' modeled durations at "
        "64 MB. How the logs and traces are counted: every line the functions write while they run is counted "
        "by its log level (the template's default `LogLevel` INFO), the EMF record each invocation that added metrics "
        "prints as metrics (metrics on, as on Lambda, each function's apart), and "
        f"{LAMBDA_PLATFORM_LOG_BYTES} bytes per invocation for Lambda's START/END/REPORT lines (the template's "
        "default `PlatformLogLevel` INFO, priced as optional: at WARN Lambda writes a line only for an invocation "
        "that fails, none of these): "
        + ", ".join(f"{level} {size:.0f}" for level, size in sorted(logged.items()))
        + f" bytes per order, {sum(logged.values()):.0f} in all, at $0.50 per GB ingested. X-Ray records a "
        f"trace for each API request and each stream-triggered outbox invocation ({typical['traces_per_order']:.2f} "
        "per order), of which its default rule samples 5 % (its reservoir of one trace a second is a fixed "
        "~$13 a month, left out). The median order item weighs "
        f"{typical['order_item_bytes_at_delivery']:.0f} bytes once delivered (DynamoDB's size rules).",
        "",
    ]
    return "\n".join(lines)


def rates_markdown(burst: dict[str, Any], steady: dict[str, Any]) -> list[str]:
    """An order's invocations and bill at the burst's rate and at a steady one. The steady run
    measures the placing (POST to `allocated`) alone; the shipments' confirmations, in batches
    that arrive at once whatever the rate orders come at, are the burst run's."""
    whole, placing, steady_placing = burst["bill"], burst["placing"], steady["placing"]

    def at_steady_rate(key: str, name: str = "") -> float:
        """The burst run's figure with its placing's share swapped for the steady run's (+ 0.0: no -0.000)."""

        def figure(bill: dict[str, Any]) -> float:
            return bill[key].get(name, 0.0) if name else bill[key]

        return round(figure(whole) - figure(placing) + figure(steady_placing), 9) + 0.0

    apart, scale = steady["seconds_apart_on_aws"], steady["time_scale"]
    invocations = "lambda_invocations_per_order"
    lines = [
        f"The same order at a steady rate: one placed every {apart:g} s ({3600 / apart:.0f} an hour), so each "
        "1 s batching window holds one order's records at most (the outbox is invoked "
        f"{steady_placing[invocations]['OutboxFunction']:.2f} times an order), where each window of the burst "
        f"gathers many ({whole[invocations]['OutboxFunction']:.3f}). The steady run places {steady['orders']} orders "
        f"(statuses {steady['statuses']}, one run) with its clock compressed by {scale:g}: the gap, the batching "
        "windows (`OMS_BATCHING_WINDOW_SCALE`) and the authorizer's cache alike, so what shares an invocation "
        "and what the cache answers keep their ratio to the gap (nothing billed is timed; `bench/workflow.py` "
        "says what is not scaled); the scheduled functions are charged at the template's rate for the "
        f"{steady['orders'] * apart:g} s its orders arrive over on AWS, as the burst's are. Its orders are placed "
        f"at its rate and confirmed with the burst run's batches of {burst['confirmation_batch']} (a manifest arrives "
        "at once whatever the rate orders come at).",
        "",
        f"| per order | burst ({burst['clients']} clients, as fast as they can) | steady (one every {apart:g} s) |",
        "| --- | --- | --- |",
    ]
    for name in sorted({*whole[invocations], *steady_placing[invocations]}):
        burst_calls, steady_calls = whole[invocations].get(name, 0.0), at_steady_rate(invocations, name)
        lines.append(f"| {name} invocations | {burst_calls:.3f} | {steady_calls:.3f} |")
    core = ("total_per_million_orders", "optional_per_million_orders")
    everything = (*core, "features_per_million_orders")
    lines += [
        f"| **$ per million orders, logs and tracing included** | **{sum(whole[key] for key in core):.2f}** | "
        f"**{sum(at_steady_rate(key) for key in core):.2f}** |",
        f"| without the logs' INFO lines, Lambda's START/END/REPORT lines and X-Ray | "
        f"{whole['total_per_million_orders']:.2f} | {at_steady_rate('total_per_million_orders'):.2f} |",
        f"| + events, one webhook subscription, aggregates and notifications | "
        f"{whole['features_per_million_orders']:.2f} | {at_steady_rate('features_per_million_orders'):.2f} |",
        f"| **$ per million orders, with all of them** | **{sum(whole[key] for key in everything):.2f}** | "
        f"**{sum(at_steady_rate(key) for key in everything):.2f}** |",
        "",
    ]
    return lines


def write_units_markdown(run: dict[str, Any]) -> list[str]:
    """Where the core's DynamoDB write units go: each function's writes, per table, to the item
    itself or to each index entry it adds, moves or removes."""
    by_write = run.get("wru_per_order_by_write", {})
    lines = [
        "",
        f"The {run['wru_per_order']:.1f} DynamoDB write units of an order (the core, without the optional "
        "features), by the function that writes, the item written and the index entries the write changes "
        "(an entry added or removed is one unit, one whose key moves two; `bench/workflow.py` applies DynamoDB's "
        "rules to the template's indexes):",
        "",
        "| function | request | table: what is written | write units per order |",
        "| --- | --- | --- | --- |",
    ]
    for key, value in by_write.items():
        function, operation, written = key.split(" ", 2)
        lines.append(f"| {function} | {operation} | {written} | {value:.2f} |")
    items = sum(v for k, v in by_write.items() if k.endswith(": item"))
    lines.append(f"| **all** | | items {items:.1f}, index entries {sum(by_write.values()) - items:.1f} | "
                 f"**{sum(by_write.values()):.1f}** |")  # fmt: skip
    return lines


def confirmations_markdown(run: dict[str, Any]) -> list[str]:
    """Shipping and delivering with a request per shipment and action, against batches."""
    one, batched = run["confirmations"]["per shipment"], run["confirmations"]["batched"]
    rows = [
        ("API Gateway requests", "api_requests_per_order", ".2f"),
        ("API function invocations", "api_invocations_per_order", ".2f"),
        ("authorizer invocations (its cache answers the rest)", "authorizer_invocations_per_order", ".3f"),
        ("Lambda GB-seconds", "lambda_gb_seconds_per_order", ".4f"),
    ]
    lines = [
        "Confirming shipments one by one or in batches (the same run; per order):",
        "",
        f"| per order | a request per shipment and action | batches of {run['confirmation_batch']} |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {label} | {one[key]:{fmt}} | {batched[key]:{fmt}} |" for label, key, fmt in rows]
    for service in ("API Gateway", "Lambda"):
        lines.append(
            f"| $ per million orders: {service} | {one['dollars_per_million_orders'][service]:.2f} | "
            f"{batched['dollars_per_million_orders'][service]:.2f} |"
        )
    total = "total_with_optional_per_million_orders"
    lines += [
        f"| **$ per million orders, logs and tracing included** | **{one[total]:.2f}** | **{batched[total]:.2f}** |",
        f"| $ per million orders, logs and tracing included, with a carrier that hosts its labels "
        f"(`label_url`: no S3 PUT) | {one[total] - one['dollars_per_million_orders']['S3']:.2f} | "
        f"{batched[total] - batched['dollars_per_million_orders']['S3']:.2f} |",
        f"| $ per million orders, logs and tracing included, with labels in S3 Express One Zone (`LabelsZoneId` "
        f"set; their 90 days of storage counted, S3 Standard's too) | "
        f"{one[total] + one['labels_in_s3_express_per_million_orders']:.2f} | "
        f"{batched[total] + batched['labels_in_s3_express_per_million_orders']:.2f} |",
        f"| $ per million orders, without the logs' INFO lines, Lambda's START/END/REPORT lines and X-Ray | "
        f"{one['total_per_million_orders']:.2f} | {batched['total_per_million_orders']:.2f} |",
        "",
    ]
    return lines


FEATURE_NAMES = {
    "events": "events: PutEvents to the bus, the events function's Lambda time",
    "webhooks": "one webhook subscription to every event: delivery records, SQS, the delivery function",
    "aggregates": "customer and report counters (the events function's DynamoDB writes for them)",
    "notifications": "customer notifications (the built-in notifier's records)",
    "access log": (
        "the access log: reads, changes that changed nothing, and the label links a change handed out"
        " (SQS, the access-log function)"
    ),
}


def feature_rows(features: dict[str, dict[str, float]]) -> list[str]:
    """A row per optional feature: its dollars per million and the services they go to, largest first."""
    rows = []
    for feature, bill in features.items():
        parts = ", ".join(f"{service} {cost:.2f}" for service, cost in sorted(bill.items(), key=lambda kv: -kv[1]))
        rows.append(f"| + {FEATURE_NAMES[feature]} | {sum(bill.values()):.2f} | {parts} |")
    return rows


def features_markdown(run: dict[str, Any], core_total: float) -> list[str]:
    """The optional features of issue 14, measured in the same run, on top of the core total."""
    features = run["features_per_million_orders"]
    lines = [
        "The optional features, measured in the same run and left out of the figures above (each request "
        "attributed to the feature it is made for; `bench/workflow.py` says how). "
        f"Webhook deliveries per order: {run['webhook_deliveries_per_order']:.2f}.",
        "",
        "| optional feature | $ per million orders | of which |",
        "| --- | --- | --- |",
    ]
    lines += feature_rows(features)
    everything = core_total + sum(sum(bill.values()) for bill in features.values())
    lines += [
        f"| **total, with the events, one subscription, aggregates and notifications** | **{everything:.2f}** | |"
    ]
    reads = run["access_log_per_million_reads"]
    parts = ", ".join(f"{service} {cost:.2f}" for service, cost in sorted(reads.items(), key=lambda kv: -kv[1]))
    lines += [
        "",
        f"The access log is paid per read of an order (one `GET /orders/{{id}}` per order, measured apart): "
        f"**{sum(reads.values()):.2f} $ per million reads** ({parts}), on top of the read itself.",
        "",
    ]
    return lines


def aggregates_report() -> str:
    """bench.aggregates in a fresh process: the write cost of customer and report counters."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.aggregates"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


def returns_report() -> str:
    """bench.returns in a fresh process: what a return costs, from its request to its refund."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.returns"], cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return returns_markdown(json.loads(out.stdout.strip().splitlines()[-1]))


def returns_markdown(run: dict[str, Any]) -> str:
    """A return's usage and bill: the core's, then each optional feature on top (measured in the same
    run, attributed as the order's are), and the total with all of them."""
    lines = [
        "",
        "## What a return costs on AWS",
        "",
        f"{run['returns']} returns of one unit each (of delivered two-unit orders), requested and received over "
        "HTTP on the local stack; the returns workflow (Express, moto's interpreter) restocks, counts and refunds "
        f"each. Returns refunded once the workflow settled: {run['statuses']}. As for orders, one webhook "
        "subscription to every event is answered at once "
        f"({run['webhook_deliveries_per_return']:.2f} deliveries per return).",
        "",
        "| what (the core, without the optional features) | per return |",
        "| --- | --- |",
        f"| API requests (the request, the receipt) | {run['api_requests_per_return']:.2f} |",
        f"| returns workflow executions | {run['sfn_executions_per_return']:.2f} |",
        f"| Lambda GB-seconds (modeled as for orders) | {run['lambda_gb_seconds_per_return']:.4f} |",
        f"| DynamoDB write units (estimated, incl. index writes and the restock transaction) | "
        f"{run['wru_per_return']:.1f} |",
        f"| DynamoDB read units (estimated) | {run['rru_per_return']:.1f} |",
        "",
        "| function | request | per return |",
        "| --- | --- | --- |",
    ]
    for key, value in run["requests_per_return_by_function"].items():
        function, operation = key.split(" ", 1)
        lines.append(f"| {function} | {operation} | {value:.2f} |")
    lines += ["", "| Lambda function | invocations per return |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in run["lambda_invocations_per_return"].items()]
    lines += [
        "",
        "Dollars per million returns, the core's by service, then what each optional feature adds (each request, "
        "invocation and log line attributed to the feature it is made for, as for orders; `bench/workflow.py` "
        "says how):",
        "",
        "| service | $ per million returns | of which |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {v:.2f} | |" for k, v in run["dollars_per_million_returns"].items()]
    optional = run["optional_dollars_per_million_returns"]
    lines += [f"| {k} | {v:.2f} | |" for k, v in optional.items()]
    total = run["total_per_million_returns"]
    included = total + sum(optional.values())
    lines += [
        f"| **total, logs and tracing included (the template's defaults)** | **{included:.2f}** | |",
        f"| without the {len(optional)} rows above them (each a setting of the template's) | {total:.2f} | |",
    ]
    lines += feature_rows(run["features_per_million_returns"])
    lines += [f"| **total, with all of them** | **{run['total_with_all_per_million_returns']:.2f}** | |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
