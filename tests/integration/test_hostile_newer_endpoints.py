"""What a hostile or careless client sends to the endpoints added after the first hostile-input
sweeps (webhooks, purchasing, sourcing rules, holds, store execution, customers, reports), through
the in-process gateway in front of the real authorizer and API handler: each answer is the
contract's error shape with its status, never a 500, and names the field at fault."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with pytest.MonkeyPatch.context() as env:
        # The webhooks service is built with its delivery queue; subscribing never sends to it.
        env.setenv("WEBHOOK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/unused")
        env.setenv("WEBHOOK_ALLOW_LOCAL_HTTP", "true")
        with in_process_api() as started:
            yield started


# Host names the resolver cannot even encode (an empty label, one over 63 characters): Python's
# getaddrinfo raises UnicodeError for them, not the OSError of a name that does not resolve.
@pytest.mark.parametrize("url", ["https://hooks..example.com/in", "https://./in", f"https://{'a' * 64}.example.com/in"])
def test_a_webhook_url_whose_host_cannot_be_a_dns_name_is_refused_not_a_500(api: InProcessApi, url: str):
    answer = api.post("/webhooks", json={"url": url, "events": ["*"]})

    assert_error(answer, 422, "webhook_url_refused", "url")
    assert api.get("/webhooks").json()["items"] == []
