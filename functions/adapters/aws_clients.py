"""The one place that builds the functions' boto3 clients, each with timeouts and retries that
fit inside a Lambda invocation."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.session
from botocore.config import Config
from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, instance_cache

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


# The services the functions build clients of (the build digests their endpoints, below).
SERVICES = ("dynamodb", "s3", "sqs", "stepfunctions", "apigateway", "lambda", "events")

# botocore's endpoints.json holds every partition's every service (1.2 MB of JSON): each new
# container's first client parsed it all for its one service, ~100 M instructions, a sixth of the
# API's cold path above the baseline. The build (infra/build.py) writes next to this module the same
# document with only SERVICES' entries, for the botocore it ran with; the loader reads it instead
# when the file botocore would read is its own of that version, and reads the whole file the first
# time a service outside it is asked for: every resolution is botocore's own on the same data.
ENDPOINTS = "endpoints"
ENDPOINTS_DIGEST = Path(__file__).with_name("botocore-endpoints.json")


def write_endpoints_digest(directory: Path) -> Path:
    """Write the digest of the installed botocore's endpoints.json into `directory` (the build's)."""
    whole = JSONFileLoader().load_file(os.path.join(Loader.BUILTIN_DATA_PATH, ENDPOINTS))
    models = Loader()
    prefixes = {models.load_service_model(name, "service-2")["metadata"]["endpointPrefix"] for name in SERVICES}
    digested = {
        **whole,
        "partitions": [
            {**partition, "services": {k: v for k, v in partition["services"].items() if k in prefixes}}
            for partition in whole["partitions"]
        ],
    }
    path = directory / ENDPOINTS_DIGEST.name
    path.write_text(json.dumps({"botocore": botocore.__version__, "endpoints": digested}), encoding="utf-8")
    return path


class _PartitionServices(Mapping[str, Any]):
    """A partition's services as the digest holds them, completed from botocore's whole file the first
    time any other is asked for (or all are listed)."""

    def __init__(self, digested: dict[str, Any], whole: Callable[[], dict[str, Any]]):
        self._services = digested
        self._whole: Callable[[], dict[str, Any]] | None = whole

    def _complete(self) -> dict[str, Any]:
        if self._whole is not None:
            self._services, self._whole = self._whole(), None
        return self._services

    def __getitem__(self, name: str) -> Any:
        if name in self._services:
            return self._services[name]
        return self._complete()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._complete())

    def __len__(self) -> int:
        return len(self._complete())


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

    def load_data_with_path(self, name: str) -> Any:
        if name == ENDPOINTS:
            digested = self._digested_endpoints()
            if digested is not None:
                return digested
        return super().load_data_with_path(name)

    def _digested_endpoints(self) -> tuple[dict[str, Any], str] | None:
        """The endpoint data from the build's digest, with the path botocore would have read it
        from, if that path is botocore's own file (no AWS_DATA_PATH of one's own) and the digest was
        made from this botocore."""
        own = os.path.join(self.BUILTIN_DATA_PATH, ENDPOINTS)
        first = next((path for path in self._potential_locations(ENDPOINTS) if self.file_loader.exists(path)), None)
        if first != own or not ENDPOINTS_DIGEST.is_file():
            return None
        digest = json.loads(ENDPOINTS_DIGEST.read_bytes(), object_pairs_hook=OrderedDict)
        if digest.get("botocore") != botocore.__version__:
            return None

        def whole(partition: str) -> Callable[[], dict[str, Any]]:
            def services() -> dict[str, Any]:
                data, _ = super(ServiceLoader, self).load_data_with_path(ENDPOINTS)
                return next(p["services"] for p in data["partitions"] if p["partition"] == partition)

            return services

        data = digest["endpoints"]
        for partition in data["partitions"]:
            partition["services"] = _PartitionServices(partition["services"], whole(partition["partition"]))
        return data, own


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
