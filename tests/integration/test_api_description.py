"""The API's description (/openapi.json, /docs): built once per container, served with an ETag
(a matching If-None-Match is 304), and throttled like every other route (issue 11 item 6)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from functions.api.routes import meta
from tests.integration.in_process import InProcessApi, in_process_api

BURST = 4


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every page build, as (kind, base); the pages start cold."""
    built: list[tuple[str, str]] = []
    for kind, build in dict(meta._PAGE_BUILDERS).items():

        def counted(base: str, kind: str = kind, build=build) -> meta._Page:
            built.append((kind, base))
            return build(base)

        monkeypatch.setitem(meta._PAGE_BUILDERS, kind, counted)
    meta._pages.forget()
    return built


@pytest.mark.parametrize("path, params", [("/openapi.json", None), ("/docs", None), ("/docs", {"format": "json"})])
def test_the_description_is_built_once_per_container_and_served_alike(api, builds, path, params):
    answers = [api.get(path, key=None, params=params) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.content for a in answers}) == 1
    assert len({a.headers["ETag"] for a in answers}) == 1
    kinds = [kind for kind, _ in builds]
    assert kinds == (["ui", "document"] if path == "/docs" and not params else ["document"])


def test_the_document_and_the_docs_json_share_one_build_and_one_etag(api, builds):
    document = api.get("/openapi.json", key=None)
    as_json = api.get("/docs", key=None, params={"format": "json"})
    ui = api.get("/docs", key=None)

    assert document.content == as_json.content and document.headers["ETag"] == as_json.headers["ETag"]
    assert ui.headers["ETag"] != document.headers["ETag"]
    assert sorted(kind for kind, _ in builds) == ["document", "ui"]
    assert json.loads(document.content)["openapi"].startswith("3.")


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_a_matching_if_none_match_is_304_without_a_body(api, path):
    first = api.get(path, key=None)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and first.headers["Cache-Control"] == "no-cache"

    for asked in [etag, f"W/{etag}", f'"other", {etag}', "*"]:
        again = api.get(path, key=None, headers={"If-None-Match": asked})
        assert again.status_code == 304, asked
        assert again.content == b"" and again.headers["ETag"] == etag

    changed = api.get(path, key=None, headers={"If-None-Match": '"not-this-one"'})
    assert changed.status_code == 200 and changed.content == first.content


def test_the_description_is_throttled_like_every_route(api):
    from infra.local.gateway import TokenBuckets

    # A small burst and next to no refill (the module's last test): every token is counted.
    api.gateway.throttle = TokenBuckets(rate=0.001, burst=BURST)
    statuses = [api.get(path, key=None).status_code for path in ["/openapi.json", "/docs"] * BURST]

    assert statuses[:BURST] == [200] * BURST
    assert set(statuses[BURST:]) == {429}
