"""The process environment of a local stack: environment variables, log levels, moto's patches and
mock, each change undone by restore(), last first."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from infra.local.template import REGION

# Fake credentials keep boto3 away from any real account; AWS_ACCOUNT_ID_ENDPOINT_MODE=disabled
# is what DynamoDB Streams need on moto.
AWS_ENVIRONMENT = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}
# A profile or endpoint from the developer's shell would send boto3 elsewhere.
AWS_ENVIRONMENT_REMOVED = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                           "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3",
                           "AWS_ENDPOINT_URL_SFN")  # fmt: skip


class ProcessEnvironment(ExitStack):
    def set_env(self, values: Mapping[str, str], remove: tuple[str, ...] = ()) -> None:
        self.callback(_put_back, {name: os.environ.get(name) for name in (*values, *remove)})
        for name in remove:
            os.environ.pop(name, None)
        os.environ.update(values)

    def set_log_level(self, name: str, level: int) -> None:
        logger = logging.getLogger(name)
        self.callback(logger.setLevel, logger.level)
        logger.setLevel(level)

    enter = ExitStack.enter_context
    restore = ExitStack.close  # idempotent


def _put_back(saved: Mapping[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# Search paths -> the process's loader of botocore's data on them, kept across stacks.
_LOADERS: dict[tuple[str, ...], Any] = {}


@contextmanager
def default_session_sharing_models() -> Iterator[None]:
    """boto3's default session for the block (the stack's clients and its functions' aws_client()
    use it), a new one as the functions build theirs, its service models read by the loader the
    process's earlier stacks used: moto's mock sets the default session aside, and each stack's new
    one parsed every service's JSON model again (0.1 to 0.2 s of CPU per stack). Only the parsed
    models are shared; credentials, configuration and clients are the new session's."""
    import boto3

    from functions.adapters.aws_clients import botocore_session

    session = botocore_session()
    made = session.get_component("data_loader")
    loader = _LOADERS.setdefault(tuple(made.search_paths), made)
    session.register_component("data_loader", loader)
    default = boto3.Session(botocore_session=session)  # which appends boto3's own data path to the loader's
    loader.search_paths[:] = dict.fromkeys(loader.search_paths)  # once, not once more per stack
    previous, boto3.DEFAULT_SESSION = boto3.DEFAULT_SESSION, default
    try:
        yield
    finally:
        boto3.DEFAULT_SESSION = previous
