"""`make import` asks the API about its key before it uploads: a wrong key, one without `orders:read`
or one bound to a channel is refused at once, naming what is wrong, and nothing reaches the bucket.
It uploaded first, then exited 1 on GET /imports/{id} answering 401 or 403 (or, to a channel's key,
404 for a minute) while the file it had uploaded was imported all the same."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest

from infra import import_file
from tests.e2e.client import unique
from tests.integration.in_process import InProcessApi

API_URL = "https://abc123.execute-api.us-east-1.amazonaws.com/v1"
BUCKET = "oms-test-imports"


class ThroughTheGateway:
    """The tool's requests.Session, its GETs answered by the in-process API (gateway, authorizer, handler)."""

    def __init__(self, api: InProcessApi):
        self.api = api
        self.headers: dict[str, str] = {}
        self.trust_env = True
        self.asked: list[str] = []

    def get(self, url: str, timeout: float) -> Any:
        self.asked.append(url)
        parts = urlsplit(url)
        path = url.split("?")[0].removeprefix(API_URL)
        return self.api.get(path, key=None, headers=self.headers, params=dict(parse_qsl(parts.query)))


@pytest.fixture
def gateway(api: InProcessApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ThroughTheGateway]:
    """The environment an operator sets for a deployed stack (its key set by each test), its
    imports bucket empty, and the tool's HTTP calls going to the in-process API."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for name in ("OMS_AWS_ENDPOINT", "OMS_ADMIN_API_KEY", "OMS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMS_API_URL", API_URL)
    monkeypatch.setenv("OMS_IMPORTS_BUCKET", BUCKET)
    monkeypatch.setenv("OMS_STATE_FILE", str(tmp_path / "no-state.json"))
    session = ThroughTheGateway(api)
    monkeypatch.setattr(import_file.requests, "Session", lambda: session)
    yield session
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    s3.delete_bucket(Bucket=BUCKET)


def uploaded() -> list[str]:
    return [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def make_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`make import FILE=orders.csv`: its exit status, what it printed and what it said on stderr."""
    orders = tmp_path / "orders.csv"
    orders.write_text("channel,external_id,sku,quantity\nweb,w-1,TSHIRT-BLK-M,1\n")
    status = import_file.main([str(orders)])
    out, err = capsys.readouterr()
    # A refusal is one line however long, never wrapped: its curl is copied whole.
    assert status != 2 or len(err.splitlines()) == 1, err
    return status, out, " ".join(err.split())  # rich wraps the following's long lines


def a_key(api: InProcessApi, *scopes: str, channel: str | None = None) -> dict[str, Any]:
    body = {"name": unique("importer"), "scopes": list(scopes), **({"channel": channel} if channel else {})}
    answer = api.post("/api-keys", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


CREATE_A_KEY = f"curl -sS -X POST {API_URL}/api-keys"


# Each key the check refuses, the environment that names it and what the refusal says of it.
REFUSED_KEYS: dict[str, tuple[Callable[[InProcessApi], dict[str, str]], tuple[str, ...]]] = {
    # OMS_ADMIN_API_KEY is used only when OMS_API_KEY is unset.
    "a key not of this stack": (
        lambda api: {"OMS_API_KEY": "oms_not_a_key_of_this_stack", "OMS_ADMIN_API_KEY": api.admin_key},
        ("the API refused the key in OMS_API_KEY (401)",),
    ),
    # A storefront's orders:write key can place the file's orders but not follow their import.
    "a key without orders:read": (
        lambda api: {"OMS_API_KEY": a_key(api, "orders:write")["key"]},
        ("the key in OMS_API_KEY lacks the scope orders:read (403)",),
    ),
    # Imports are shown only to keys bound to no channel: it waited a minute on 404s, the file
    # uploaded and importing, then said the key might be bound to a channel.
    "a key bound to a channel": (
        lambda api: {"OMS_ADMIN_API_KEY": a_key(api, "orders:read", "orders:write", channel=unique("shop"))["key"]},
        ("the key in OMS_ADMIN_API_KEY is bound to a channel", "imports are shown only to keys bound to no channel"),
    ),
}


@pytest.mark.parametrize("refused", list(REFUSED_KEYS))
def test_a_key_it_cannot_import_with_is_refused_naming_why_before_anything_is_uploaded(
    gateway: ThroughTheGateway,
    api: InProcessApi,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    refused: str,
):
    environment, why = REFUSED_KEYS[refused]
    for name, value in environment(api).items():
        monkeypatch.setenv(name, value)

    status, out, said = make_import(tmp_path, capsys)

    assert (status, uploaded()) == (2, []) and "uploaded" not in out
    assert all(words in said for words in why) and "nothing was uploaded" in said, said
    assert CREATE_A_KEY in said and '"scopes": ["orders:read"]' in said


def test_without_a_key_it_says_so_and_how_to_make_one(
    gateway: ThroughTheGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The API and the bucket known, the key not: it said "no stack found"."""
    status, out, said = make_import(tmp_path, capsys)

    assert (status, uploaded(), gateway.asked) == (2, [], []) and "uploaded" not in out
    assert "no API key: set OMS_API_KEY to a key with orders:read bound to no channel" in said
    assert CREATE_A_KEY in said and "no stack found" not in said


def test_an_api_it_cannot_reach_is_said_before_anything_is_uploaded(
    gateway: ThroughTheGateway,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    def unreachable(url: str, timeout: float) -> Any:
        raise import_file.requests.ConnectionError("Connection refused")

    monkeypatch.setattr(gateway, "get", unreachable)
    monkeypatch.setenv("OMS_API_KEY", "oms_any")

    status, out, said = make_import(tmp_path, capsys)

    assert (status, uploaded()) == (2, []) and "uploaded" not in out
    assert f"cannot reach the API at {API_URL}" in said and "nothing was uploaded" in said


@pytest.mark.parametrize(
    ("answer", "words"),
    [(503, '{"message": "Service Unavailable"}'), (404, '{"message": "Missing Authentication Token"}')],
    ids=["a busy gateway", "an API URL without its stage (/v1): no route, whatever the key"],
)
def test_a_check_the_gateway_answers_not_about_the_key_is_said_as_its_answer_before_anything_is_uploaded(
    gateway: ThroughTheGateway,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answer: int,
    words: str,
):
    """Not a refusal of the key, so not blamed on it (a new key would not help): the command is to
    be run again, or its URL mended, nothing imported meanwhile."""
    said_by_the_gateway = type("Answer", (), {"status_code": answer, "text": words})()
    monkeypatch.setattr(gateway, "get", lambda url, timeout: said_by_the_gateway)
    monkeypatch.setenv("OMS_API_KEY", "oms_any")

    status, out, said = make_import(tmp_path, capsys)

    assert (status, uploaded()) == (2, []) and "uploaded" not in out
    assert f"GET /imports answered {answer}" in said and "nothing was uploaded: try again" in said
    assert words in said  # the gateway's own words
    assert "api-keys" not in said and "the key in" not in said


def test_with_no_stack_known_it_says_how_to_start_or_name_one_not_only_that_a_key_is_missing(
    gateway: ThroughTheGateway,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    """No `make run` state file and nothing in the environment: the API and the bucket are unknown too."""
    monkeypatch.delenv("OMS_API_URL")
    monkeypatch.delenv("OMS_IMPORTS_BUCKET")

    status, out, said = make_import(tmp_path, capsys)

    assert (status, gateway.asked) == (2, []) and "uploaded" not in out
    assert "no stack found (api_url, bucket, api_key unknown): start `make run`" in said
    assert "no API key" not in said


def test_an_oms_api_key_set_empty_is_passed_over_as_an_unset_one_is(
    gateway: ThroughTheGateway,
    api: InProcessApi,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    """`export OMS_API_KEY=` (or a Makefile passing an unset variable on) names no key: the admin key is asked."""
    monkeypatch.setenv("OMS_API_KEY", "")
    monkeypatch.setenv("OMS_ADMIN_API_KEY", a_key(api, "orders:read", channel=unique("shop"))["key"])

    status, _, said = make_import(tmp_path, capsys)

    assert (status, uploaded()) == (2, [])
    assert "the key in OMS_ADMIN_API_KEY is bound to a channel" in said and "no API key" not in said


@pytest.mark.parametrize(
    ("api_url", "through_the_proxy"),
    [("http://127.0.0.1:8080", False), ("http://localhost:8080", False), (API_URL, True)],
    ids=["the local stack", "the local stack as localhost", "a deployed stack"],
)
def test_the_local_stacks_api_is_asked_past_the_environments_proxy_and_a_deployed_one_through_it(
    api_url: str, through_the_proxy: bool
):
    # An HTTPS_PROXY set for the office network would get every check of make run's stack refused.
    session = import_file.api_session({"api_url": api_url, "api_key": "oms_k"})

    assert session.trust_env is through_the_proxy
    assert session.headers["Authorization"] == "Bearer oms_k"


def test_a_key_that_can_follow_imports_is_let_through_to_the_upload_and_the_following(
    gateway: ThroughTheGateway,
    api: InProcessApi,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    """orders:read alone, bound to no channel: uploaded, then followed (no splitter runs here, so
    the import never appears, said as before)."""
    monkeypatch.setenv("OMS_API_KEY", a_key(api, "orders:read")["key"])
    monkeypatch.setattr(import_file, "APPEAR_TIMEOUT", 0)

    status, out, said = make_import(tmp_path, capsys)

    assert status == 1 and len(uploaded()) == 1
    assert f"uploaded {tmp_path / 'orders.csv'} to s3://{BUCKET}/{uploaded()[0]}" in " ".join(out.split())
    assert "did not start within 0 s" in said
    # Asked before the upload without writing anything: a list of one import, and one of a channel
    # no key is bound to (403 to a channel's key), both reads.
    assert [url.split("?")[0] for url in gateway.asked[:2]] == [f"{API_URL}/imports", f"{API_URL}/orders"]


def test_a_key_revoked_after_the_check_is_reported_as_the_following_finds_it(
    gateway: ThroughTheGateway,
    api: InProcessApi,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    key = a_key(api, "orders:read")
    monkeypatch.setenv("OMS_API_KEY", key["key"])
    upload = import_file.upload

    def revoked_meanwhile(stack: dict[str, str | None], file: Path) -> tuple[str, str]:
        assert api.request("DELETE", f"/api-keys/{key['id']}").status_code == 204
        return upload(stack, file)

    monkeypatch.setattr(import_file, "upload", revoked_meanwhile)

    status, _, said = make_import(tmp_path, capsys)

    assert status == 1 and len(uploaded()) == 1
    assert "GET /imports/imp_" in said and "answered 401" in said
