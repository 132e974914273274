"""The embedded stack: moto in-process, every resource of template.yaml, and the API over real HTTP.

Environment the functions see: one process runs every function, and a process has one
os.environ, so the stack exports the *union* of Globals.Function.Environment and every function's
own Environment.Variables, resolved (`!Ref OrdersTable` → the table's name, `!Ref OrderWorkflow` →
the state machine's ARN, `!Ref LabelsBucket` → the bucket's name). The template's functions do not
give one name two values; if they ever do, the first wins and a warning says so
(`stack.function_environments` keeps what each function would see on AWS). The stack adds
AWS_* (fake credentials, region, AWS_ACCOUNT_ID_ENDPOINT_MODE=disabled for DynamoDB Streams),
MOTO_PORT (moto's Step Functions interpreter calls back there) and OMS_PUBLIC_S3_ENDPOINT (the
stack's AWS endpoint, for presigned URLs a client outside the process can GET).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from infra.local import moto_apigateway, moto_lock, moto_memory, moto_sqs
from infra.local.asl import AslError, validate_asl
from infra.local.event_sources import (
    POLL_INTERVAL,
    RETRY_DELAY,
    EventSourceMapping,
    MappingContext,
    S3NotificationMapping,
    build_mapping,
    install_s3_hook,
    uninstall_s3_hook,
)
from infra.local.gateway import ApiGateway, GatewayRequestHandler
from infra.local.lambda_service import LambdaService
from infra.local.lambdas import Handler, LocalFunction
from infra.local.seed import DEMO_SEED, seed_demo_data
from infra.local.stepfunctions import install_retry_delay_scale, uninstall_retry_delay_scale
from infra.local.template import ACCOUNT_ID, REGION, Template

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


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _default_admin_key_bootstrap(secret: str) -> Any:
    from functions.bootstrap import Config, bootstrap  # the handlers' code, imported only now

    return bootstrap(Config.from_env()).api_keys.ensure_admin(secret)


_INTERPRETER_LOGGER = "moto.stepfunctions.parser.asl.component.eval_component"


def forget_warm_containers() -> None:
    """A new stack is a new account: the clients and caches a previous stack's functions kept
    (their warm containers, in this process) must not leak into it. start() and stop() call it;
    a test that wants the next invocation cold calls it too."""
    from functions.warm import forget_warm_containers as forget  # the handlers' own, imported only now

    forget()


PARAMETER_ENV = {
    "OMS_RATE_LIMIT": "ApiRateLimit",
    "OMS_BURST_LIMIT": "ApiBurstLimit",
    "OMS_AUTHORIZER_CACHE_SECONDS": "AuthorizerCacheSeconds",
    "OMS_PICKUP_EXPIRY_DAYS": "PickupExpiryDays",
    # The plugin variables a developer may export: the stack sets every Globals variable, so the
    # shell's value must reach the functions as the template parameter that feeds it.
    "OMS_DISABLED_PLUGINS": "DisabledPlugins",
    "OMS_ENABLE_TEST_PAYMENTS": "EnableTestPayments",
    "OMS_REVIEW_THRESHOLD": "ReviewThreshold",
    "OMS_SLA": "Sla",
    "OMS_HOLD_EXPIRY_DAYS": "HoldExpiryDays",
    "OMS_PLUGIN_TAX_TABLE_RATES_FILE": "PluginTaxTableRatesFile",
    "OMS_PLUGIN_PROMOTIONS_FILE": "PluginPromotionsFile",
    "OMS_PLUGIN_NEAREST_SOURCING_CENTROIDS_FILE": "PluginNearestSourcingCentroidsFile",
}

# Template parameters the local stack sets unless the caller does: webhook retries compressed
# from 24 hours to a minute (at least 3 attempts in its first 60 s, API.md).
LOCAL_PARAMETERS = {
    "WebhookRetryBaseSeconds": "2",
    "WebhookRetryMaxDelaySeconds": "8",
    "WebhookRetryWindowSeconds": "60",
}
# What the functions see locally only (the template never sets it): webhook receivers on
# http://127.0.0.1 accepted (on AWS only https to public addresses is).
LOCAL_ENVIRONMENT = {"WEBHOOK_ALLOW_LOCAL_HTTP": "true"}


class EmbeddedStack:
    """Everything `make run` runs, in this process. start() then use .api_url / .aws_endpoint /
    .admin_key; stop() puts the process back as it was (environment, patches, sockets).

    Ports default to OMS_PORT (8080) and OMS_AWS_PORT (4566); pass 0 for free ones. `handlers`
    overrides a function's handler by its logical id (a callable or "module.attribute"), so
    tests can serve fakes; everything else comes from the template. Each function handles one
    event at a time, like one warm Lambda container (`serialize_invocations=False` lifts that).

    State machines run in moto's ASL interpreter, their Lambda tasks dispatched to the handlers.
    Event source mappings (DynamoDB streams, SQS, S3 notifications) are pollers started after the
    API: `event_sources=False` (or OMS_EVENT_SOURCES=0) creates them paused, so records wait until
    resume_mappings(); `stack.mappings` lists them; `wait_until_idle()` waits until no mapping has
    anything to deliver, no handler runs and no execution is running. `retry_delay_scale`
    (OMS_RETRY_DELAY_SCALE) multiplies Step Functions Retry sleeps (1.0: AWS's timing);
    `mapping_retry_delay` is the pause before a mapping retries a failed batch.
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
        event_sources: bool | None = None,
        retry_delay_scale: float | None = None,
        mapping_retry_delay: float = RETRY_DELAY,
        mapping_poll_interval: float = POLL_INTERVAL,
    ):
        # Template parameters a local user may want to change without editing the template.
        parameter_overrides = {
            **LOCAL_PARAMETERS,
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
        self.event_sources = _env_flag("OMS_EVENT_SOURCES", True) if event_sources is None else event_sources
        self.retry_delay_scale = (
            _env_float("OMS_RETRY_DELAY_SCALE", 1.0) if retry_delay_scale is None else retry_delay_scale
        )
        self._mapping_retry_delay = mapping_retry_delay
        self._mapping_poll_interval = mapping_poll_interval

        # Filled by start().
        self.api_port: int | None = None
        self.aws_port: int | None = None
        self.refs: dict[str, str] = {}  # logical id -> what !Ref returns (table name, queue URL, ...)
        self.atts: dict[str, str] = {}  # "Logical.Attr" -> what !GetAtt returns
        self.table_names: dict[str, str] = {}
        self.queue_urls: dict[str, str] = {}
        self.bucket_names: dict[str, str] = {}
        self.event_bus_names: dict[str, str] = {}
        self.environment: dict[str, str] = {}  # what the functions see, as exported
        self.function_environments: dict[str, dict[str, str]] = {}  # each function's own view (as on AWS)
        self.functions: dict[str, LocalFunction] = {}
        self.function_arns: dict[str, str] = {}
        self.state_machine_arns: dict[str, str] = {}
        self.mappings: dict[str, EventSourceMapping] = {}  # "Function.EventName" -> its poller
        self.gateway: ApiGateway | None = None
        self.seeded = False
        self._mock: Any = None
        self._moto_server: Any = None
        self._http_server: Any = None
        self._http_thread: threading.Thread | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_werkzeug_level: int | None = None
        self._saved_interpreter_level: int | None = None
        self._flushing = ExitStack()  # the gateway answering FlushStageAuthorizersCache
        self._moto_patches: list[Any] = []  # the modules whose patch this stack installed
        self._lambda_service: LambdaService | None = None
        self._s3_hooked: list[S3NotificationMapping] = []
        self._retry_scale_installed = False
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
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
            forget_warm_containers()
            self._create_resources()
            self._export_function_environment()
            self._create_event_sources()
            self._admin_key_bootstrap(self.admin_key)
            self._start_moto_server()
            self._start_api()
            self._start_event_sources()
            if self.seed:
                self.seed_demo_data()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Idempotent; safe after a failed start()."""
        for mapping in self.mappings.values():
            mapping.stop()
        forget_warm_containers()
        if self._mock is not None and self.state_machine_arns:
            self._stop_executions()
        if self._lambda_service is not None:
            self._lambda_service.close()  # no handler may outlive the mock it talks to
        self._flushing.close()
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
        if self._s3_hooked:
            uninstall_s3_hook(self._s3_hooked)
            self._s3_hooked = []
        if self._lambda_service is not None:
            self._lambda_service.uninstall()
            self._lambda_service = None
        if self._retry_scale_installed:
            uninstall_retry_delay_scale(self.retry_delay_scale)
            self._retry_scale_installed = False
        self._clients.clear()
        while self._moto_patches:
            self._moto_patches.pop().uninstall()
        if self._saved_werkzeug_level is not None:
            logging.getLogger("werkzeug").setLevel(self._saved_werkzeug_level)
            self._saved_werkzeug_level = None
        if self._saved_interpreter_level is not None:
            logging.getLogger(_INTERPRETER_LOGGER).setLevel(self._saved_interpreter_level)
            self._saved_interpreter_level = None
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

    # --- Event sources and executions --------------------------------------------------------
    def pause_mappings(self) -> None:
        """Every mapping stops taking new batches (records and messages wait at their source)."""
        for mapping in self.mappings.values():
            mapping.pause()

    def resume_mappings(self) -> None:
        for mapping in self.mappings.values():
            mapping.resume()

    def running_executions(self) -> list[str]:
        """ARNs of the executions still running, in every state machine of the template."""
        if not self.state_machine_arns:
            return []
        sfn = self.client("stepfunctions")
        running = []
        for arn in self.state_machine_arns.values():
            answer = sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")
            running.extend(execution["executionArn"] for execution in answer["executions"])
        return running

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """True once every mapping has drained its source, no handler is running and no execution
        is running, twice in a row with no invocation in between; False after `timeout` seconds.
        A paused mapping counts as idle (its records wait); an SQS queue whose messages are in
        flight (invisible after a failure, or held by another consumer) is not drained yet."""
        deadline = time.monotonic() + timeout
        quiet_rounds = 0
        while time.monotonic() < deadline:
            mark = time.monotonic()
            invocations = self._invocation_count()
            if self._busy():
                quiet_rounds = 0
                time.sleep(0.02)
                continue
            while not all(mapping.is_idle_since(mark) for mapping in self.mappings.values()):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
            if self._invocation_count() == invocations and not self._busy():
                quiet_rounds += 1
                if quiet_rounds >= 2:
                    return True
            else:
                quiet_rounds = 0
        return False

    def _stop_executions(self) -> None:
        """Stops what still runs, so no interpreter thread calls a handler after stop()."""
        with suppress(Exception):
            sfn = self.client("stepfunctions")
            for arn in self.running_executions():
                with suppress(Exception):
                    sfn.stop_execution(executionArn=arn, error="LocalStackStopped", cause="the local stack stopped")

    def _invocation_count(self) -> int:
        return sum(function.invocations for function in self.functions.values())

    def _busy(self) -> bool:
        return any(function.in_flight for function in self.functions.values()) or bool(self.running_executions())

    def client(self, service: str) -> Any:
        """An in-process boto3 client of the running stack (cached; boto3 clients are thread-safe)."""
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self._client(service)
            return self._clients[service]

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

        # One request at a time; and, as a stack runs for hours, moto's SQS must not slow down
        # with a queue's depth, nor moto keep every object it ever made (see each module).
        for patch in (moto_lock, moto_sqs, moto_memory):
            patch.install()
            self._moto_patches.append(patch)
        # The ASL interpreter runs state machines for real; it costs nothing until one starts.
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        self._mock.start()

    def _client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION)

    def _create_resources(self) -> None:
        self._create_tables()
        self._create_queues()
        self._create_event_buses()
        self._create_functions()
        self._create_buckets()
        self._create_state_machines()

    def _create_tables(self) -> None:
        tables = self.template.tables()
        if tables:
            dynamodb = self._client("dynamodb")
            for table in tables:
                name = self.physical_name(table.logical_id)
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

    def _create_event_buses(self) -> None:
        """Each AWS::Events::EventBus in moto's EventBridge: what the functions publish to, and what
        a local rule (aws events put-rule --event-bus-name ...) can subscribe a queue to."""
        buses = self.template.resources_of_type("AWS::Events::EventBus")
        if not buses:
            return
        events = self._client("events")
        for logical_id, resource in buses.items():
            name = self.template.resolve((resource.get("Properties") or {}).get("Name"), self.refs, self.atts)
            name = name or self.physical_name(logical_id)
            arn = events.create_event_bus(Name=name)["EventBusArn"]
            self.event_bus_names[logical_id] = name
            self.refs[logical_id] = name
            self.atts[f"{logical_id}.Arn"] = arn
            self.atts[f"{logical_id}.Name"] = name

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

    def _create_functions(self) -> None:
        """A LocalFunction per AWS::Serverless::Function (handlers imported on first use), with the
        ARN `!GetAtt X.Arn` answers, reachable through moto's Lambda Invoke."""
        from moto.sqs.models import DEFAULT_SENDER_ID as SQS_SENDER_ID

        specs = self.template.functions()
        unknown = set(self._handler_overrides) - set(specs)
        if unknown:
            raise ValueError(f"handlers given for functions the template lacks: {sorted(unknown)}")
        for logical_id, spec in specs.items():
            props = self.template.resources[logical_id].get("Properties", {})
            name = self.template.resolve(props.get("FunctionName"), self.refs, self.atts) or self.physical_name(
                logical_id
            )
            function = LocalFunction.from_spec(
                spec,
                name,
                self._handler_overrides.get(logical_id),
                serialize=self._serialize_invocations,
            )
            self.functions[logical_id] = function
            self.function_arns[logical_id] = function.arn
            self.refs[logical_id] = name
            self.atts[f"{logical_id}.Arn"] = function.arn
            # The role SAM makes for it. Every local call is signed with the same credentials, so
            # moto's SQS records one SenderId for every sender: that is each role's unique id here.
            self.atts[f"{logical_id}Role.RoleId"] = SQS_SENDER_ID
            self.atts[f"{logical_id}Role.Arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{name}-role"
        self._lambda_service = LambdaService(self.functions)
        self._lambda_service.install()

    def _create_state_machines(self) -> None:
        """Every state machine, its DefinitionSubstitutions resolved and its ASL validated first."""
        pending = self.template.state_machines()
        if not pending:
            return
        sfn = self.client("stepfunctions")
        while pending:  # a definition may substitute another state machine's ARN
            progressed, unresolved = False, ""
            for spec in list(pending):
                try:
                    name = self.physical_name(spec.logical_id)
                    substitutions = {
                        key: self.template.resolve(value, self.refs, self.atts)
                        for key, value in spec.substitutions.items()
                    }
                except KeyError as error:
                    unresolved = f"{spec.logical_id}: {error.args[0]}"
                    continue
                definition = spec.load_definition(self.template.base_dir, substitutions)
                problems = validate_asl(definition)
                if problems:
                    raise AslError(spec.logical_id, problems)
                arn = sfn.create_state_machine(
                    name=name,
                    definition=json.dumps(definition),
                    roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{name}-role",
                    type=spec.type,
                )["stateMachineArn"]
                self.state_machine_arns[spec.logical_id] = arn
                self.refs[spec.logical_id] = arn
                self.atts[f"{spec.logical_id}.Arn"] = arn
                self.atts[f"{spec.logical_id}.Name"] = name
                pending.remove(spec)
                progressed = True
            if not progressed:
                raise ValueError(f"state machine {unresolved} (in Name or DefinitionSubstitutions)")
        if self.retry_delay_scale != 1.0:
            install_retry_delay_scale(self.retry_delay_scale)
            self._retry_scale_installed = True
        # moto's interpreter logs every failed task at ERROR with a page of its own reprs, even one
        # a Catch expects (a declined payment). The handler's error is logged in one line by
        # infra.local.lambda, and the execution keeps its error and cause (describe-execution).
        interpreter_logger = logging.getLogger(_INTERPRETER_LOGGER)
        self._saved_interpreter_level = interpreter_logger.level
        interpreter_logger.setLevel(logging.CRITICAL)

    def _create_event_sources(self) -> None:
        """The pollers for every function event that is not Api (created now, started after the
        API); S3 events are the buckets' Lambda notifications, which moto matches and we deliver."""
        context = MappingContext(
            resolve=lambda value: self.template.resolve(value, self.refs, self.atts),
            queue_url_for_arn=self._queue_url_for_arn,
            client=self.client,
            poll_interval=self._mapping_poll_interval,
            retry_delay=self._mapping_retry_delay,
        )
        for spec in self.template.event_sources():
            mapping = build_mapping(spec, self.functions[spec.function_logical_id], context)
            self.mappings[mapping.name] = mapping
        s3_mappings = [m for m in self.mappings.values() if isinstance(m, S3NotificationMapping)]
        if s3_mappings:
            s3 = self.client("s3")
            for bucket_name in sorted({m.bucket for m in s3_mappings}):
                lambdas = [m.notification_configuration() for m in s3_mappings if m.bucket == bucket_name]
                s3.put_bucket_notification_configuration(
                    Bucket=bucket_name, NotificationConfiguration={"LambdaFunctionConfigurations": lambdas}
                )
            install_s3_hook(s3_mappings)
            self._s3_hooked = s3_mappings

    def _start_event_sources(self) -> None:
        for mapping in self.mappings.values():
            mapping.start(paused=not self.event_sources)

    def _queue_url_for_arn(self, arn: str) -> str:
        for logical_id, url in self.queue_urls.items():
            if self.atts.get(f"{logical_id}.Arn") == arn:
                return url
        return self.client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]

    def _export_function_environment(self) -> None:
        environment = self.template.global_environment(self.refs)
        for spec in self.template.functions().values():
            own = {
                name: _env_value(self.template.resolve(value, self.refs, self.atts))
                for name, value in spec.environment.items()
            }
            self.function_environments[spec.logical_id] = own
            for name, resolved in own.items():
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
        environment.update(LOCAL_ENVIRONMENT)
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
        # Presigned URLs (shipping labels) must point where a client outside this process can
        # GET them: this endpoint serves the same S3 backend. A value set by the developer wins.
        public_s3 = os.environ.get("OMS_PUBLIC_S3_ENDPOINT") or self.aws_endpoint
        self._set_environment({"OMS_PUBLIC_S3_ENDPOINT": public_s3})
        self.environment["OMS_PUBLIC_S3_ENDPOINT"] = public_s3

    def _start_api(self) -> None:
        from werkzeug.serving import make_server

        self.gateway = ApiGateway.from_template(self.template, self.functions)
        gateway = self.gateway
        self._flushing.enter_context(
            moto_apigateway.flushing(gateway.api_id, gateway.stage, gateway.flush_authorizer_caches)
        )
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


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
    """For tests: a started stack on free ports, without demo data unless seed=True, with the
    `test` payment gateway on unless parameter_overrides say EnableTestPayments "false".

    with running_stack(handlers={"ApiFunction": fake}) as stack:
        requests.get(stack.api_url + "/health")
    """
    kwargs.setdefault("api_port", 0)
    kwargs.setdefault("aws_port", 0)
    kwargs.setdefault("seed", False)
    kwargs["parameter_overrides"] = {"EnableTestPayments": "true", **(kwargs.get("parameter_overrides") or {})}
    stack = EmbeddedStack(**kwargs)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
