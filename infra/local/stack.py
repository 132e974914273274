"""The embedded stack: moto in-process, every resource of template.yaml, and the API over real HTTP."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from infra.local import moto_lock
from infra.local.gateway import ApiGateway, GatewayRequestHandler
from infra.local.lambdas import Handler, LocalFunction
from infra.local.seed import DEMO_SEED, seed_demo_data
from infra.local.template import ACCOUNT_ID, PROJECT_ROOT, REGION, Template

logger = logging.getLogger("infra.local.stack")

DEFAULT_API_PORT = 8080
DEFAULT_AWS_PORT = 4566
DEFAULT_STACK_NAME = "oms-local"

# Set for the stack's lifetime and restored by stop(). Fake credentials keep boto3 away from any
# real account; AWS_ACCOUNT_ID_ENDPOINT_MODE=disabled is what DynamoDB Streams need on moto.
_AWS_ENVIRONMENT = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
}
# A profile or endpoint from the developer's shell would send boto3 elsewhere.
_AWS_ENVIRONMENT_REMOVED = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SFN",
)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _default_admin_key_bootstrap(secret: str) -> Any:
    from functions.bootstrap import ensure_admin_key  # the handlers' code, imported only now

    return ensure_admin_key(secret)


PARAMETER_ENV = {
    "OMS_RATE_LIMIT": "ApiRateLimit",
    "OMS_BURST_LIMIT": "ApiBurstLimit",
    "OMS_AUTHORIZER_CACHE_SECONDS": "AuthorizerCacheSeconds",
}


class EmbeddedStack:
    """Everything `make run` runs, in this process. start() then use .api_url / .aws_endpoint /
    .admin_key; stop() puts the process back as it was (environment, patches, sockets).

    Ports default to OMS_PORT (8080) and OMS_AWS_PORT (4566); pass 0 for free ones. `handlers`
    overrides a function's handler by its logical id (a callable or "module.attribute"), so
    tests can serve fakes; everything else comes from the template. Each function handles one
    event at a time, like one warm Lambda container (`serialize_invocations=False` lifts that).
    """

    def __init__(
        self,
        *,
        template: Template | str | Path | None = None,
        host: str = "127.0.0.1",
        api_port: int | None = None,
        aws_port: int | None = None,
        stack_name: str | None = None,
        admin_key: str | None = None,
        seed: bool | None = None,
        seed_file: Path = DEMO_SEED,
        handlers: Mapping[str, str | Handler] | None = None,
        admin_key_bootstrap: Callable[[str], Any] | None = None,
        parameter_overrides: Mapping[str, Any] | None = None,
        serialize_invocations: bool = True,
    ):
        # Template parameters a local user may want to change without editing the template.
        parameter_overrides = {
            **{param: os.environ[var] for var, param in PARAMETER_ENV.items() if os.environ.get(var)},
            **(parameter_overrides or {}),
        }
        if isinstance(template, Template):
            self.template = template
            self.template.parameter_overrides.update(parameter_overrides or {})
        else:
            self.template = Template.load(template, parameter_overrides=parameter_overrides)
        self.host = host
        self._requested_api_port = _env_port("OMS_PORT", DEFAULT_API_PORT) if api_port is None else api_port
        self._requested_aws_port = _env_port("OMS_AWS_PORT", DEFAULT_AWS_PORT) if aws_port is None else aws_port
        self.stack_name = stack_name or os.environ.get("OMS_STACK_NAME") or DEFAULT_STACK_NAME
        self.template.stack_name = self.stack_name
        self.admin_key = admin_key or os.environ.get("OMS_ADMIN_API_KEY") or "oms_admin_" + secrets.token_urlsafe(24)
        self.seed = _env_flag("OMS_SEED", True) if seed is None else seed
        self.seed_file = seed_file
        self._handler_overrides = dict(handlers or {})
        self._admin_key_bootstrap = admin_key_bootstrap or _default_admin_key_bootstrap
        self._serialize_invocations = serialize_invocations

        # Filled by start().
        self.api_port: int | None = None
        self.aws_port: int | None = None
        self.refs: dict[str, str] = {}  # logical id -> what !Ref returns (table name, queue URL, ...)
        self.atts: dict[str, str] = {}  # "Logical.Attr" -> what !GetAtt returns
        self.table_names: dict[str, str] = {}
        self.queue_urls: dict[str, str] = {}
        self.bucket_names: dict[str, str] = {}
        self.environment: dict[str, str] = {}  # what the functions see, as exported
        self.functions: dict[str, LocalFunction] = {}
        self.gateway: ApiGateway | None = None
        self.seeded = False
        self._mock: Any = None
        self._moto_server: Any = None
        self._http_server: Any = None
        self._http_thread: threading.Thread | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_werkzeug_level: int | None = None
        self._lock_installed = False
        self._started = False

    # --- Addresses -------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def aws_endpoint(self) -> str:
        return f"http://{self.host}:{self.aws_port}"

    def physical_name(self, logical_id: str) -> str:
        return f"{self.stack_name}-{logical_id}"

    # --- Lifecycle -------------------------------------------------------------------------
    def start(self) -> EmbeddedStack:
        if self._started:
            raise RuntimeError("stack already started")
        self._started = True
        try:
            self._set_environment(_AWS_ENVIRONMENT, remove=_AWS_ENVIRONMENT_REMOVED)
            # No X-Ray daemon here, and EMF lines (CloudWatch's input) would bury the console;
            # a developer can still switch either on explicitly.
            for name in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_DISABLED"):
                if name not in os.environ:
                    self._set_environment({name: "true"})
            self._start_moto()
            self._create_resources()
            self._export_function_environment()
            self._admin_key_bootstrap(self.admin_key)
            self._start_moto_server()
            self._start_api()
            if self.seed:
                self.seed_demo_data()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Idempotent; safe after a failed start()."""
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None
        if self._moto_server is not None:
            _stop_promptly(self._moto_server.stop, (self.host, self.aws_port))
            server = getattr(self._moto_server, "_server", None)
            if server is not None:
                server.server_close()  # ThreadedMotoServer.stop() leaves the socket open
            self._moto_server = None
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        if self._lock_installed:
            moto_lock.uninstall()
            self._lock_installed = False
        if self._saved_werkzeug_level is not None:
            logging.getLogger("werkzeug").setLevel(self._saved_werkzeug_level)
            self._saved_werkzeug_level = None
        for name, value in reversed(list(self._saved_env.items())):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        self._started = False

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def seed_demo_data(self) -> bool:
        """The demo data, through the HTTP API as the admin, if the store is empty."""
        self.seeded = seed_demo_data(self.api_url, self.admin_key, self.seed_file)
        return self.seeded

    # --- Steps -----------------------------------------------------------------------------
    def _set_environment(self, values: Mapping[str, str], remove: tuple[str, ...] = ()) -> None:
        for name in (*values, *remove):
            if name not in self._saved_env:
                self._saved_env[name] = os.environ.get(name)
        for name in remove:
            os.environ.pop(name, None)
        os.environ.update(values)

    def _start_moto(self) -> None:
        from moto import mock_aws

        moto_lock.install()
        self._lock_installed = True
        # The ASL interpreter runs state machines for real; it costs nothing until one starts.
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        self._mock.start()

    def _client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION)

    def _create_resources(self) -> None:
        tables = self.template.tables()
        if tables:
            dynamodb = self._client("dynamodb")
            for table in tables:
                name = table.table_name or self.physical_name(table.logical_id)
                description = dynamodb.create_table(**table.create_table_request(name))["TableDescription"]
                if table.ttl_attribute:
                    dynamodb.update_time_to_live(
                        TableName=name,
                        TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
                    )
                self.table_names[table.logical_id] = name
                self.refs[table.logical_id] = name
                self.atts[f"{table.logical_id}.Arn"] = description["TableArn"]
                if "LatestStreamArn" in description:
                    self.atts[f"{table.logical_id}.StreamArn"] = description["LatestStreamArn"]
        self._create_queues()
        self._create_buckets()

    def _create_queues(self) -> None:
        pending = self.template.queues()
        if not pending:
            return
        sqs = self._client("sqs")
        # A queue's RedrivePolicy names its DLQ by !GetAtt, so DLQs are created first.
        while pending:
            progressed = False
            for queue in list(pending):
                try:
                    attributes = _queue_attributes(self.template.resolve(queue.properties, self.refs, self.atts))
                except KeyError:
                    continue
                name = attributes.pop("QueueName", None) or self.physical_name(queue.logical_id)
                if queue.fifo and not name.endswith(".fifo"):
                    name += ".fifo"
                url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
                self.queue_urls[queue.logical_id] = url
                self.refs[queue.logical_id] = url
                self.atts[f"{queue.logical_id}.QueueName"] = name
                self.atts[f"{queue.logical_id}.QueueUrl"] = url
                self.atts[f"{queue.logical_id}.Arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"
                pending.remove(queue)
                progressed = True
            if not progressed:
                raise ValueError(f"cannot resolve the properties of queues {[q.logical_id for q in pending]}")

    def _create_buckets(self) -> None:
        buckets = self.template.buckets()
        if not buckets:
            return
        s3 = self._client("s3")
        for bucket in buckets:
            props = bucket.properties
            name = self.template.resolve(props.get("BucketName"), self.refs, self.atts) or (
                self.physical_name(bucket.logical_id).lower()
            )
            s3.create_bucket(Bucket=name)
            self.bucket_names[bucket.logical_id] = name
            self.refs[bucket.logical_id] = name
            self.atts[f"{bucket.logical_id}.Arn"] = f"arn:aws:s3:::{name}"
            # NotificationConfiguration is emulated by the runtime's pollers, not by moto.

    def _export_function_environment(self) -> None:
        environment = self.template.global_environment(self.refs)
        for spec in self.template.functions().values():
            for name, value in spec.environment.items():
                resolved = str(self.template.resolve(value, self.refs, self.atts))
                if name in environment and environment[name] != resolved:
                    # One process is every function: a name can hold only one value.
                    logger.warning(
                        "%s: %s=%r differs from %r; keeping the first",
                        spec.logical_id,
                        name,
                        resolved,
                        environment[name],
                    )
                    continue
                environment[name] = resolved
        self.environment = environment
        self._set_environment(environment)

    def _start_moto_server(self) -> None:
        from moto.server import ThreadedMotoServer

        werkzeug_logger = logging.getLogger("werkzeug")
        self._saved_werkzeug_level = werkzeug_logger.level
        werkzeug_logger.setLevel(logging.WARNING)  # moto's server logs every request at INFO
        server = ThreadedMotoServer(ip_address=self.host, port=self._requested_aws_port, verbose=False)
        server.start()
        self._moto_server = server
        self.aws_port = server.get_host_and_port()[1]
        # moto's Step Functions interpreter calls back to localhost:$MOTO_PORT.
        self._set_environment({"MOTO_PORT": str(self.aws_port)})

    def _start_api(self) -> None:
        from werkzeug.serving import make_server

        specs = self.template.functions()
        base_dir = self.template.source.parent if self.template.source else PROJECT_ROOT
        self.functions = {
            logical_id: LocalFunction.from_spec(
                spec,
                self.physical_name(logical_id),
                self._handler_overrides.get(logical_id),
                base_dir=base_dir,
                serialize=self._serialize_invocations,
            )
            for logical_id, spec in specs.items()
        }
        unknown = set(self._handler_overrides) - set(specs)
        if unknown:
            raise ValueError(f"handlers given for functions the template lacks: {sorted(unknown)}")
        self.gateway = ApiGateway.from_template(self.template, self.functions)
        self._http_server = make_server(
            self.host,
            self._requested_api_port,
            self.gateway,
            threaded=True,
            request_handler=GatewayRequestHandler,
        )
        self.api_port = self._http_server.server_port
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how soon shutdown() is noticed
            name="oms-local-api",
            daemon=True,
        )
        self._http_thread.start()


def _stop_promptly(stop: Callable[[], None], address: tuple[str, int | None]) -> None:
    """Runs a server's blocking stop() while poking its socket: serve_forever() notices a shutdown
    only between polls (half a second for moto's server), a connection wakes it at once."""
    stopper = threading.Thread(target=stop, name="oms-local-stop", daemon=True)
    stopper.start()
    while stopper.is_alive() and address[1]:
        with suppress(OSError):
            socket.create_connection(address, timeout=0.2).close()
        stopper.join(0.05)
    stopper.join()


def _queue_attributes(properties: Mapping[str, Any]) -> dict[str, str]:
    """CloudFormation's AWS::SQS::Queue properties as CreateQueue attributes (all strings)."""
    import json

    attributes: dict[str, str] = {}
    for key, value in properties.items():
        if key in ("Tags",):
            continue
        if key in ("RedrivePolicy", "RedriveAllowPolicy") and not isinstance(value, str):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        attributes[key] = str(value)
    return attributes


@contextmanager
def running_stack(**kwargs: Any) -> Iterator[EmbeddedStack]:
    """For tests: a started stack on free ports, without demo data unless seed=True.

    with running_stack(handlers={"ApiFunction": fake}) as stack:
        requests.get(stack.api_url + "/health")
    """
    kwargs.setdefault("api_port", 0)
    kwargs.setdefault("aws_port", 0)
    kwargs.setdefault("seed", False)
    stack = EmbeddedStack(**kwargs)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
