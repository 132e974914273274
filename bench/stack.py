"""Starts `python -m infra.local` in its own process, so load generators don't share its GIL."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests

from infra.local.seed import DEMO_SEED

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "oms_bench_admin_key_0123456789"
# A uuid's hex digits as letters: a random hex id holds a run of digits that passes for a card
# number about once in 6,000 orders, and the API refuses such a body (422 card_data_rejected).
NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def external_id() -> str:
    """A fresh order's external_id that never looks like a card number."""
    return uuid.uuid4().hex.translate(NO_DIGITS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class StackProcess:
    api_url: str
    aws_endpoint: str
    admin_key: str
    env: dict[str, str]
    pid: int | None = None

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the stack's process has used so far (Linux: /proc), or None."""
        if self.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # utime and stime are the 14th and 15th fields of stat(5), the 12th and 13th after the name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table_env(prefix: str = "oms-local") -> dict[str, str]:
    return {
        "ORDERS_TABLE": f"{prefix}-OrdersTable",
        "INVENTORY_TABLE": f"{prefix}-InventoryTable",
        "CATALOG_TABLE": f"{prefix}-CatalogTable",
        "IDEMPOTENCY_TABLE": f"{prefix}-IdempotencyTable",
        "RETURNS_TABLE": f"{prefix}-ReturnsTable",
    }


@contextlib.contextmanager
def stack_process() -> Iterator[StackProcess]:
    api_port, aws_port = free_port(), free_port()
    env = {
        **os.environ,
        "OMS_PORT": str(api_port),
        "OMS_AWS_PORT": str(aws_port),
        "OMS_ADMIN_API_KEY": ADMIN_KEY,
        # Capture alone: the order workflow would run in the same process and take the CPU the
        # measured requests need (bench.workflow measures it on its own).
        "OMS_EVENT_SOURCES": "0",
        # The benchmark measures throughput, not the per-key throttle.
        "OMS_RATE_LIMIT": "1000000",
        "OMS_BURST_LIMIT": "1000000",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.local"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api_url = f"http://127.0.0.1:{api_port}"
    try:
        # Ready once the seed's last stock row is readable: the seed loads products, locations, then
        # stock, and an order placed before its stock lands is refused (409 insufficient_stock).
        last = json.loads(DEMO_SEED.read_text(encoding="utf-8"))["stock"][-1]
        probe = f"{api_url}/inventory/{quote(last['sku'], safe='')}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.ConnectionError):
                answer = requests.get(probe, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=2)
                if answer.status_code == 200 and any(
                    row["location_id"] == last["location_id"] for row in answer.json().get("locations", [])
                ):
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local stack did not start")
            time.sleep(0.2)
        client_env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{aws_port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
            **table_env(),
        }
        yield StackProcess(api_url, f"http://127.0.0.1:{aws_port}", ADMIN_KEY, client_env, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
