"""The one place that builds the functions' boto3 clients, each with timeouts and retries that
fit inside a Lambda invocation."""

from __future__ import annotations

import os
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import DataNotFoundError
from botocore.loaders import Loader, instance_cache

# The functions run for 10 s (Globals in template.yaml; the authorizer, 5 s, asks less of its one
# client). A DynamoDB, S3, SQS or Step Functions call answers in milliseconds; one that has not
# connected within 1 s or answered within 2 s will not, and is better retried on a new connection
# than waited for: three attempts of 3 s fit in the 10 s. botocore's defaults (60 s each, "legacy"
# retries) let one stuck call outlive the function, which then dies on its own timeout with nothing
# said about why. "standard" retries (jittered exponential backoff, a retry quota) also retry
# throttling and transient errors of every service, not only DynamoDB's, and what still fails
# surfaces as an error the caller (the API's error mapping, the state machine's Retry) handles.
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
MAX_ATTEMPTS = 3  # in all, the first included
DEFAULTS = Config(
    connect_timeout=CONNECT_TIMEOUT,
    read_timeout=READ_TIMEOUT,
    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
)


class ServiceLoader(Loader):
    """botocore's loader of service models, which reads the asked service's own directory for its
    latest API version instead of first listing every service it knows to check the name: that
    listing reads about 450 directories and stats a file in each, once for the service model and
    once for its endpoint rules, some 20 ms of CPU (a third of it system time) in every new
    container's first client. A name with no directory is left to botocore's own check, which
    raises its UnknownServiceError; what is loaded (the model, its extras) is the same. It reads
    two of botocore's own members (its extras processor and finder): boto3 is not pinned, so a
    botocore without them gets botocore's own path, slower but the same, rather than a container
    that cannot make a client."""

    @instance_cache
    def load_service_model(self, service_name: str, type_name: str, api_version: str | None = None) -> Any:
        processor, extras = getattr(self, "_extras_processor", None), getattr(self, "_find_extras", None)
        if api_version is not None or processor is None or extras is None:
            return super().load_service_model(service_name, type_name, api_version)
        try:
            api_version = self.determine_latest_version(service_name, type_name)
        except DataNotFoundError:
            return super().load_service_model(service_name, type_name)
        model = self.load_data(os.path.join(service_name, api_version, type_name))
        processor.process(model, extras(service_name, type_name, api_version))
        return model


def botocore_session() -> botocore.session.Session:
    """botocore's session as boto3 makes its default one, with the ServiceLoader in place of the
    data loader botocore would make (on the same search paths: AWS_DATA_PATH, then its own). The
    local runtime builds its default session with it too (infra/local/process.py)."""
    session = botocore.session.get_session()
    data_path = session.get_config_variable("data_path")
    extra = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)] if data_path else None
    session.register_component("data_loader", ServiceLoader(extra_search_paths=extra))
    return session


def aws_client(service: str, *, config: Config | None = None, **kwargs: Any) -> Any:
    """A boto3 client for `service` with DEFAULTS, merged under `config` (e.g. S3 signing) and
    any other client arguments (an endpoint_url), from boto3's default session (made here first,
    with the ServiceLoader, unless something made it before)."""
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session(botocore_session=botocore_session())
    return boto3.client(service, config=DEFAULTS.merge(config) if config is not None else DEFAULTS, **kwargs)
