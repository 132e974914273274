"""Bulk import at 1k, 10k and 100k lines: orders per second and peak memory.

Three measurements per size, each in fresh processes:
- the local stack end to end (`python -m bench.imports serve`: the stack with the demo catalog and
  only the import's event sources running, so orders stay as captured): upload the CSV through
  the AWS endpoint, follow GET /imports/{id} to its end; the stack process's peak RSS (VmHWM) and
  its RSS before the file. Everything moto stores (the orders, their stream records, the import's
  markers, the stream record of each update to the import's counters) lives in that process too,
  so its growth is mostly the data: it shows the local stack keeps no more than it stores
  (moto_patches/memory.py).
- the splitter alone (`python -m bench.imports split FILE`): the file streamed through the real
  reader and ImportSplitter into a queue and ledger that keep nothing; its peak RSS is what
  streaming costs, and should not grow with the file.

`run_import_bench()` returns the numbers; `python -m bench.imports` prints them as JSON.
BENCH_IMPORT_SIZES=1000,10000 picks other sizes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
SIZES = tuple(int(n) for n in os.environ.get("BENCH_IMPORT_SIZES", "1000,10000,100000").split(","))
WARM_UP_LINES = 200
# The stack's import runs this many times (the median run is reported) up to this size; beyond it
# once: 100,000 lines take about a quarter of an hour.
REPEATS, REPEAT_UP_TO = 3, 10_000
SKUS = ("TSHIRT-BLK-M", "MUG-001", "HOODIE-GRY-L", "STICKER-PACK")
CITIES = (("San Francisco", "CA", "94105"), ("Austin", "TX", "78701"), ("Boston", "MA", "02108"))


# --- The file ---------------------------------------------------------------------------------------


def write_orders_csv(path: Path, lines: int, prefix: str = "B") -> int:
    """A realistic export of `lines` data rows (plus the header): orders of one to three lines,
    sorted by order, about one row in fifty bad (an unknown sku). Written row by row. Returns the
    number of orders."""
    from functions.import_splitter.readers import COLUMNS

    rng = random.Random(lines)
    orders = 0
    written = 0
    with path.open("w", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(COLUMNS)
        while written < lines:
            orders += 1
            city, region, postal = rng.choice(CITIES)
            customer, street = f"cus-{rng.randrange(5000)}", f"{rng.randint(1, 999)} Market St"
            for line in range(min(rng.choice((1, 1, 1, 2, 2, 3)), lines - written)):
                sku = "NO-SUCH-SKU" if rng.random() < 0.02 else rng.choice(SKUS)
                row = {
                    "channel": "bench",
                    "external_id": f"{prefix}-{orders:07d}",
                    "currency": "USD",
                    "customer_id": customer,
                    "customer_email": "buyer@example.com",
                    "customer_name": "Bench Buyer" if line == 0 else "",
                    "sku": sku,
                    "quantity": str(rng.randint(1, 3)),
                    "ship_name": "Bench Buyer",
                    "ship_line1": street,
                    "ship_line2": "",
                    "ship_city": city,
                    "ship_region": region,
                    "ship_postal_code": postal,
                    "ship_country": "US",
                    "shipping_method": "",
                    "payment_method": "test",
                    "payment_token": "tok_approve",
                }
                out.writerow([row[c] for c in COLUMNS])
                written += 1
    return orders


# --- Processes ---------------------------------------------------------------------------------------


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


@contextlib.contextmanager
def stack_process(state: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.imports", "serve", str(state)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "POWERTOOLS_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not state.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local stack did not start")
            time.sleep(0.2)
        yield process, json.loads(state.read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def serve(state_path: str) -> None:
    """The stack for the benchmark, until SIGTERM: demo catalog, import event sources only."""
    from infra.local.stack import running_stack

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    parameters = {"ApiRateLimit": 1_000_000, "ApiBurstLimit": 1_000_000}
    with running_stack(seed=True, event_sources=False, parameter_overrides=parameters) as stack:
        stack.seed_demo_data()
        for mapping in stack.mappings.values():
            if mapping.function_logical_id in ("ImportSplitterFunction", "ImportWorkerFunction"):
                mapping.resume()
        state = {
            "api_url": stack.api_url,
            "aws_endpoint": stack.aws_endpoint,
            "bucket": stack.bucket_names["ImportsBucket"],
            "admin_key": stack.admin_key,
        }
        Path(state_path).write_text(json.dumps(state))
        stopping.wait()


def aws_client(service: str, state: dict[str, Any]) -> Any:
    """A boto3 client of the benchmark stack's AWS endpoint."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=state["aws_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def import_file(state: dict[str, Any], path: Path, pid: int, timeout: float) -> dict[str, Any]:
    """Upload, follow to the end; seconds from upload to completion and the RSS seen meanwhile."""
    from core.imports import import_id_for

    s3 = aws_client("s3", state)
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {state['admin_key']}"
    key = f"incoming/{datetime.now().strftime('%H%M%S%f')}/{path.name}"
    started = time.perf_counter()
    s3.upload_file(str(path), state["bucket"], key)
    etag = s3.head_object(Bucket=state["bucket"], Key=key)["ETag"]
    import_id = import_id_for(state["bucket"], key, etag)
    peak_rss = 0
    while time.perf_counter() - started < timeout:
        peak_rss = max(peak_rss, rss_kib(pid))
        response = session.get(f"{state['api_url']}/imports/{import_id}", timeout=30)
        if response.status_code == 200 and response.json()["status"] != "running":
            report = response.json()
            report.pop("errors")
            return {"seconds": time.perf_counter() - started, "report": report, "sampled_peak_rss_kib": peak_rss}
        time.sleep(0.25)
    raise RuntimeError(f"import of {path.name} did not finish in {timeout:.0f} s")


def measure_stack(path: Path, warm_up: Path, lines: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, stack_process(Path(tmp) / "state.json") as (process, state):
        import_file(state, warm_up, process.pid, 120)  # imports, cold starts, first moto calls
        before = rss_kib(process.pid)
        result = import_file(state, path, process.pid, max(600.0, lines / 20))
        peak = rss_kib(process.pid, "VmHWM")
    report = result["report"]
    orders = report["total"]
    return {
        "lines": lines,
        "orders": orders,
        "imported": report["imported"],
        "failed": report["failed"],
        "status": report["status"],
        "seconds": round(result["seconds"], 1),
        "orders_per_second": round(orders / result["seconds"], 1),
        "ms_per_order": round(1000 * result["seconds"] / orders, 2),
        "stack_rss_before_mib": round(before / 1024, 1),
        "stack_peak_rss_mib": round(peak / 1024, 1),
        "stored_kib_per_order": round((peak - before) / max(orders, 1), 2),
    }


# --- The splitter alone ---------------------------------------------------------------------------


def split_only(path: str) -> None:
    """Stream the file through the reader and ImportSplitter into a queue and ledger that keep
    nothing; print the orders and this process's peak RSS."""
    from core.import_service import (
        ImportLedger,
        ImportSource,
        ImportSplitter,
        ImportState,
        ImportStatus,
        OrderQueue,
        Recorded,
    )
    from functions.import_splitter.readers import read_orders

    class Discarded(OrderQueue):
        sent = 0

        def send(self, order: Any) -> None:
            self.sent += 1

        def flush(self) -> None:
            pass

    class Forgetful(ImportLedger):
        recorded = 0
        total = 0

        def begin(self, *args: Any) -> ImportState:
            return ImportState(ImportStatus.RUNNING, False, signing_key="bench")

        def signing_key(self, *args: Any) -> str | None:
            return "bench"

        def restart(self, *args: Any) -> None: ...
        def fail(self, *args: Any) -> None:
            raise RuntimeError(f"import failed: {args}")

        def progress(self, *args: Any) -> None: ...
        def finish_reading(self, import_id: str, file_format: str, total: int, at: Any, last_line: Any = None) -> None:
            self.total = total

        def is_recorded(self, *args: Any) -> bool:
            return False

        def record(self, *args: Any) -> Recorded:
            self.recorded += 1
            return Recorded.COUNTED

        def complete_if_done(self, *args: Any) -> None: ...
        def keep_lost_errors(self, *args: Any) -> None: ...
        def park(self, *args: Any) -> bool:
            return False

        def get(self, *args: Any) -> Any: ...
        def list(self, *args: Any) -> Any: ...

    queue, ledger = Discarded(), Forgetful()
    baseline = rss_kib(os.getpid(), "VmHWM")
    started = time.perf_counter()

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as handle:
            while chunk := handle.read(256 * 1024):
                yield chunk

    source = ImportSource("imp_bench", f"file://{path}")
    ImportSplitter(ledger, queue).split(source, lambda: read_orders(chunks(), path))
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "orders": ledger.total,
                "queued": queue.sent,
                "rejected": ledger.recorded,
                "seconds": seconds,
                "baseline_rss_kib": baseline,
                "peak_rss_kib": rss_kib(os.getpid(), "VmHWM"),
            }
        )
    )


def measure_splitter(path: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.imports", "split", str(path)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "orders": result["orders"],
        "orders_per_second": round(result["orders"] / result["seconds"]),
        "peak_rss_mib": round(result["peak_rss_kib"] / 1024, 1),
        "after_imports_rss_mib": round(result["baseline_rss_kib"] / 1024, 1),
    }


# --- Together -------------------------------------------------------------------------------------


def run_import_bench(sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """{"stack": [...], "splitter": [...]}, one entry per size; see the module
    docstring."""
    from infra.local.moto_patches.sqs import HIGH_WATER

    results: dict[str, Any] = {"sizes": list(sizes), "high_water": HIGH_WATER}
    results.update(stack=[], splitter=[])
    with tempfile.TemporaryDirectory() as tmp:
        warm_up = Path(tmp) / "warm-up.csv"
        write_orders_csv(warm_up, WARM_UP_LINES, prefix="W")
        for lines in sizes:
            path = Path(tmp) / f"orders-{lines}.csv"
            write_orders_csv(path, lines)
            results["splitter"].append({"lines": lines, **measure_splitter(path)})
            runs = sorted(
                (measure_stack(path, warm_up, lines) for _ in range(REPEATS if lines <= REPEAT_UP_TO else 1)),
                key=lambda run: run["orders_per_second"],
            )
            stored = {**runs[len(runs) // 2], "runs": len(runs)}
            stored["range"] = f"{runs[0]['orders_per_second']}–{runs[-1]['orders_per_second']}"
            results["stack"].append(stored)
            print(f"imports: {lines} lines: {results['stack'][-1]}", file=sys.stderr, flush=True)
            path.unlink()
    return results


HEADER = (
    "| lines | orders | runs | seconds | orders/s (min–max) | ms per order "
    "| stack RSS before (MiB) | stack peak RSS (MiB) "
    "| KiB per stored order | splitter alone: orders/s | splitter alone: peak RSS (MiB) |\n" + "| --- " * 11 + "|"
)


def markdown(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for these results."""
    rows = "\n".join(
        f"| {s['lines']:,} | {s['orders']:,} | {s['runs']} | {s['seconds']} | **{s['orders_per_second']}** "
        f"({s['range']}) | {s['ms_per_order']} | "
        f"{s['stack_rss_before_mib']} | {s['stack_peak_rss_mib']} | **{s['stored_kib_per_order']}** | "
        f"{p['orders_per_second']:,} | **{p['peak_rss_mib']}** |"
        for s, p in zip(results["stack"], results["splitter"], strict=True)
    )
    return f"""## Bulk import (`make import`)

A CSV of N lines (orders of 1-3 lines, 2 % unknown skus) uploaded to the local stack's imports bucket
and followed to its end: S3 notification → splitter → SQS → worker → capture, in the stack's own
process (the order workflow paused: orders stay as captured). The splitter keeps at most
{results["high_water"]:,} messages queued (the local stack paces moto's SQS: `infra/local/moto_patches/sqs.py`).
Each measurement runs in fresh processes; the import itself {REPEATS} times up to {REPEAT_UP_TO:,}
lines (the median run is shown), once beyond.

{HEADER}
{rows}

Memory. moto stores the data in the stack's own process, so that process grows with what the
import stores: each order item, its stream record, its line marker and the stream record of the
import's counters it adds to (a check that the local stack keeps nothing more; at small sizes the
figure also carries its working set, up to {results["high_water"]:,} queued messages and warm
containers, spread over few orders). What the product's own code costs is "splitter alone": the
same file streamed through the real reader and splitter into a queue and ledger that keep nothing;
its peak RSS is what streaming a file costs, and must not grow with the file.
"""


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif len(sys.argv) > 2 and sys.argv[1] == "split":
        split_only(sys.argv[2])
    else:
        results = run_import_bench()
        print(json.dumps(results, indent=2))
        print(markdown(results))


if __name__ == "__main__":
    main()
