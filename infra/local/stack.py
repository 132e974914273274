"""The embedded stack: moto in-process, every resource of template.yaml, and the API over real HTTP.

A composition of four parts, started in this order and stopped in reverse:
- ProcessEnvironment (process.py): environment variables, log levels, moto's patches and mock;
- Resources (resources.py): the template's resources created in moto, and its refs and atts;
- Servers (servers.py): moto's AWS endpoint and the API gateway, over HTTP;
- Activity (activity.py): event source pollers and state machine executions.

Environment the functions see: one process runs every function, and a process has one
os.environ, so the stack exports the *union* of Globals.Function.Environment and every function's
own Environment.Variables, resolved (`stack.function_environments` keeps what each function would
see on AWS). The stack adds AWS_* (fake credentials, region), MOTO_PORT (moto's Step Functions
interpreter calls back there) and OMS_PUBLIC_S3_ENDPOINT (the stack's AWS endpoint, for presigned
URLs a client outside the process can GET).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.local.activity import Activity
from infra.local.gateway import ApiGateway
from infra.local.lambdas import Handler, LambdaService
from infra.local.moto_patches import apigateway, lambda_invoke, lock, memory, retry_delay, s3_notifications, sqs
from infra.local.process import AWS_ENVIRONMENT, AWS_ENVIRONMENT_REMOVED, ProcessEnvironment
from infra.local.resources import Resources
from infra.local.seed import DEMO_SEED, seed_demo_data
from infra.local.servers import Servers
from infra.local.template import REGION, Template

DEFAULT_API_PORT = 8080
DEFAULT_AWS_PORT = 4566
DEFAULT_STACK_NAME = "oms-local"
HOST = "127.0.0.1"

# moto's interpreter logs every failed task at ERROR with a page of its own reprs, even one a
# Catch expects (a declined payment); infra.local.lambda logs the handler's error in one line.
_INTERPRETER_LOGGER = "moto.stepfunctions.parser.asl.component.eval_component"


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _default_admin_key_bootstrap(secret: str) -> Any:
    from functions.bootstrap import Config, bootstrap  # the handlers' code, imported only now

    return bootstrap(Config.from_env()).api_keys.ensure_admin(secret)


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


class EmbeddedStack:
    """Everything `make run` runs, in this process. start() then use .api_url / .aws_endpoint /
    .admin_key; stop() puts the process back as it was (environment, patches, sockets).

    Ports default to OMS_PORT (8080) and OMS_AWS_PORT (4566); pass 0 for free ones. `handlers`
    overrides a function's handler by its logical id (a callable or "module.attribute"), so
    tests can serve fakes; everything else comes from the template. `event_sources=False` (or
    OMS_EVENT_SOURCES=0) starts the mappings paused, so records wait until resume_mappings();
    `retry_delay_scale` (OMS_RETRY_DELAY_SCALE) multiplies Step Functions Retry sleeps (1.0: AWS's
    timing); `mapping_retry_delay` is the pause before a mapping retries a failed batch.
    """

    def __init__(
        self,
        *,
        template: Template | str | Path | None = None,
        api_port: int | None = None,
        aws_port: int | None = None,
        stack_name: str | None = None,
        admin_key: str | None = None,
        seed: bool | None = None,
        handlers: Mapping[str, str | Handler] | None = None,
        admin_key_bootstrap: Callable[[str], Any] | None = None,
        parameter_overrides: Mapping[str, Any] | None = None,
        event_sources: bool | None = None,
        retry_delay_scale: float | None = None,
        mapping_retry_delay: float | None = None,
    ):
        # Template parameters a local user may want to change without editing the template.
        overrides = {
            **LOCAL_PARAMETERS,
            **{param: os.environ[var] for var, param in PARAMETER_ENV.items() if os.environ.get(var)},
            **(parameter_overrides or {}),
        }
        if isinstance(template, Template):
            self.template = template
            self.template.parameter_overrides.update(overrides)
        else:
            self.template = Template.load(template, parameter_overrides=overrides)
        self.host = HOST
        self._requested_api_port = int(_env_number("OMS_PORT", DEFAULT_API_PORT)) if api_port is None else api_port
        self._requested_aws_port = int(_env_number("OMS_AWS_PORT", DEFAULT_AWS_PORT)) if aws_port is None else aws_port
        self.stack_name = stack_name or os.environ.get("OMS_STACK_NAME") or DEFAULT_STACK_NAME
        self.template.stack_name = self.stack_name
        self.admin_key = admin_key or os.environ.get("OMS_ADMIN_API_KEY") or "oms_admin_" + secrets.token_urlsafe(24)
        self.seed = _env_flag("OMS_SEED", True) if seed is None else seed
        self._admin_key_bootstrap = admin_key_bootstrap or _default_admin_key_bootstrap
        self.event_sources = _env_flag("OMS_EVENT_SOURCES", True) if event_sources is None else event_sources
        self.retry_delay_scale = (
            _env_number("OMS_RETRY_DELAY_SCALE", 1.0) if retry_delay_scale is None else retry_delay_scale
        )

        self.process = ProcessEnvironment()
        self.resources = Resources(self.template, self.stack_name, handlers)
        self.servers = Servers(self.host)
        self.activity = Activity(self.resources, self.client, retry_delay=mapping_retry_delay)
        # The parts' maps, by the names tests and tools read (filled by start()).
        self.refs, self.atts = self.resources.refs, self.resources.atts
        self.table_names, self.queue_urls = self.resources.table_names, self.resources.queue_urls
        self.bucket_names, self.event_bus_names = self.resources.bucket_names, self.resources.event_bus_names
        self.functions, self.function_arns = self.resources.functions, self.resources.function_arns
        self.state_machine_arns = self.resources.state_machine_arns
        self.function_environments = self.resources.function_environments
        self.mappings = self.activity.mappings  # "Function.EventName" -> its poller
        self.environment: dict[str, str] = {}  # what the functions see, as exported
        self.api_port: int | None = None
        self.aws_port: int | None = None
        self.gateway: ApiGateway | None = None
        self.seeded = False
        self._lambda_service: LambdaService | None = None
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._started = False

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def aws_endpoint(self) -> str:
        return f"http://{self.host}:{self.aws_port}"

    def physical_name(self, logical_id: str) -> str:
        return self.resources.physical_name(logical_id)

    # --- Lifecycle -------------------------------------------------------------------------
    def start(self) -> EmbeddedStack:
        if self._started:
            raise RuntimeError("stack already started")
        self._started = True
        try:
            self._start_moto()
            forget_warm_containers()
            self.resources.create(self.client)
            self._route_to_functions()
            self.environment = self.resources.environment()
            self.process.set_env(self.environment)
            s3_mappings = self.activity.build()
            if s3_mappings:
                self.process.enter(s3_notifications.routing(s3_mappings))
            self._admin_key_bootstrap(self.admin_key)
            self._start_aws_endpoint()
            self._start_api()
            self.activity.start(paused=not self.event_sources)
            if self.seed:
                self.seed_demo_data()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Idempotent; safe after a failed start()."""
        self.activity.stop()
        forget_warm_containers()
        if self._lambda_service is not None:
            self._lambda_service.close()  # no handler may outlive the mock it talks to
            self._lambda_service = None
        self.servers.stop()
        self._clients.clear()
        self.process.restore()
        self._started = False

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- Event sources and executions --------------------------------------------------------
    def pause_mappings(self) -> None:
        """Every mapping stops taking new batches (records and messages wait at their source)."""
        self.activity.pause()

    def resume_mappings(self) -> None:
        self.activity.resume()

    def running_executions(self) -> list[str]:
        """ARNs of the executions still running, in every state machine of the template."""
        return self.activity.running_executions()

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """True once no mapping has anything to deliver, no handler runs and no execution is
        running (Activity.wait_until_idle); False after `timeout` seconds."""
        return self.activity.wait_until_idle(timeout)

    def client(self, service: str) -> Any:
        """An in-process boto3 client of the running stack (cached; boto3 clients are thread-safe)."""
        import boto3

        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = boto3.client(service, region_name=REGION)
            return self._clients[service]

    def seed_demo_data(self) -> bool:
        """The demo data, through the HTTP API as the admin, if the store is empty."""
        self.seeded = seed_demo_data(self.api_url, self.admin_key, DEMO_SEED)
        return self.seeded

    # --- Steps -----------------------------------------------------------------------------
    def _start_moto(self) -> None:
        from moto import mock_aws

        self.process.set_env(AWS_ENVIRONMENT, remove=AWS_ENVIRONMENT_REMOVED)
        # No X-Ray daemon here, and EMF lines (CloudWatch's input) would bury the console;
        # a developer can still switch either on explicitly.
        for name in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_DISABLED"):
            if name not in os.environ:
                self.process.set_env({name: "true"})
        # One request at a time; and, as a stack runs for hours, moto's SQS must not slow down
        # with a queue's depth, nor moto keep every object it ever made (moto_patches/).
        for patch in (lock.PATCH, sqs.PATCH, memory.PATCH):
            self.process.enter(patch.applied())
        # The ASL interpreter runs state machines for real; it costs nothing until one starts.
        mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        mock.start()
        self.process.callback(mock.stop)

    def _route_to_functions(self) -> None:
        """moto's Lambda Invoke (Step Functions tasks) to the in-process functions, and the state
        machines' Retry sleeps scaled when asked."""
        self._lambda_service = LambdaService(self.functions)
        self.process.enter(lambda_invoke.routing(self._lambda_service))
        if self.state_machine_arns:
            if self.retry_delay_scale != 1.0:
                self.process.enter(retry_delay.scaled(self.retry_delay_scale))
            self.process.set_log_level(_INTERPRETER_LOGGER, logging.CRITICAL)

    def _start_aws_endpoint(self) -> None:
        self.process.set_log_level("werkzeug", logging.WARNING)  # moto's server logs every request at INFO
        self.aws_port = self.servers.start_aws(self._requested_aws_port)
        # Presigned URLs (shipping labels) must point where a client outside this process can
        # GET them: this endpoint serves the same S3 backend. A value set by the developer wins.
        public_s3 = os.environ.get("OMS_PUBLIC_S3_ENDPOINT") or self.aws_endpoint
        self.process.set_env({"MOTO_PORT": str(self.aws_port), "OMS_PUBLIC_S3_ENDPOINT": public_s3})
        self.environment["OMS_PUBLIC_S3_ENDPOINT"] = public_s3

    def _start_api(self) -> None:
        self.gateway = ApiGateway.from_template(self.template, self.functions)
        gateway = self.gateway
        self.process.enter(apigateway.flushing(gateway.api_id, gateway.stage, gateway.flush_authorizer_caches))
        self.api_port = self.servers.start_api(gateway, self._requested_api_port)


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
