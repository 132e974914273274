"""The one place that builds the functions' boto3 clients, each with timeouts and retries that
fit inside a Lambda invocation."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

# The functions run for 10 s (Globals in template.yaml; the authorizer 5 s). A DynamoDB, S3, SQS or
# Step Functions call answers in milliseconds; one that has not connected within 1 s or answered
# within 2 s will not, and is better retried on a new connection than waited for: three attempts
# of 3 s fit in the 10 s. botocore's defaults (60 s each, "legacy" retries) let one stuck call
# outlive the function, which then dies on its own timeout with nothing said about why. "standard"
# retries (jittered exponential backoff, a retry quota) also retry throttling and transient errors
# of every service, not only DynamoDB's, and what still fails surfaces as an error the caller (the
# API's error mapping, the state machine's Retry) handles.
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
MAX_ATTEMPTS = 3  # in all, the first included
DEFAULTS = Config(
    connect_timeout=CONNECT_TIMEOUT,
    read_timeout=READ_TIMEOUT,
    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
)


def aws_client(service: str, *, config: Config | None = None, **kwargs: Any) -> Any:
    """A boto3 client for `service` with DEFAULTS, merged under `config` (e.g. S3 signing) and
    any other client arguments (an endpoint_url)."""
    return boto3.client(service, config=DEFAULTS.merge(config) if config is not None else DEFAULTS, **kwargs)
