"""The process environment of a local stack: environment variables, log levels, moto's patches and
mock, each change undone by restore(), last first."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import ExitStack

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
