"""The embedded stack: moto in-process, every resource of template.yaml, and the API over real HTTP.

Its parts (README "The local runtime"), started in this order and stopped in reverse:
ProcessEnvironment, Resources, Servers and Activity. One process runs every function and has one
os.environ: the union of every function's variables (`function_environments` keeps each one's).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core import settings
from core.secret_hashes import is_usable_secret
from functions.warm import forget_warm_containers  # imports nothing heavy (tests take it from here too)
from infra.local.activity import Activity
from infra.local.event_sources import ScheduleMapping
from infra.local.gateway import ApiGateway
from infra.local.lambdas import LOG_KEYS, WORKER_THREADS, Handler, LambdaService
from infra.local.moto_patches import (
    AppliedBy,
    apigateway,
    arrivals,
    lambda_invoke,
    patches_applied_by,
    retry_delay,
    s3_notifications,
)
from infra.local.process import (
    AWS_ENVIRONMENT,
    AWS_ENVIRONMENT_REMOVED,
    ProcessEnvironment,
    default_session_sharing_models,
)
from infra.local.resources import Resources
from infra.local.seed import seed_demo_data
from infra.local.servers import Servers
from infra.local.template import ACCOUNT_ID, REGION, Template

# moto's interpreter logs every failed task at ERROR with a page of its own reprs, even one a
# Catch expects (a declined payment); infra.local.lambdas logs the handler's error in one line.
_INTERPRETER_LOGGER = "moto.stepfunctions.parser.asl.component.eval_component"


def _env(name: str, default: Any, parse: Callable[[str], Any]) -> Any:
    """The variable's value (surrounding spaces ignored) as `parse` reads it, `default` when unset or
    empty, or ValueError naming the variable (`parse`'s error says what it must be)."""
    value = os.environ.get(name, "").strip()
    try:
        return parse(value) if value else default
    except ValueError as refused:
        raise ValueError(f"{name} {refused}, got {value!r}") from None


def _port(text: str) -> int:
    """A TCP port in ASCII digits (not int()'s `8_080` or other scripts' digits), 0 to 65535."""
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return int(text)


# What the imports bucket's name (`<stack>-imports-<account>-<region>`, at most 63 characters)
# leaves of it for the stack's name here.
_STACK_NAME_LENGTH = 63 - len(f"-imports-{ACCOUNT_ID}-{REGION}")


def _stack_name(text: str) -> str:
    """OMS_STACK_NAME as a deploy takes it: CloudFormation's stack name (a letter, then letters,
    digits or hyphens), in lower case and short enough for the imports bucket the template names
    after it; `a/b` was a botocore traceback (CreateQueue), `Oms` a stack no deploy creates."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", text) or len(text) > _STACK_NAME_LENGTH:
        raise ValueError(
            f"must be a lower-case letter, then lower-case letters, digits or hyphens, at most {_STACK_NAME_LENGTH}"
            " characters (the imports bucket is named <stack>-imports-<account>-<region>)"
        )
    return text


def _scale(variable: str, given: float | None) -> float:
    """OMS_RETRY_DELAY_SCALE, OMS_BATCHING_WINDOW_SCALE (or the value given), written as every
    numeric setting is (core.settings.number): a finite number, 0 or more, or ValueError naming
    the variable at construction."""
    raw = os.environ.get(variable, "") if given is None else str(given)
    scale = settings.number(raw) if raw.strip() else 1.0
    if scale is None or not scale >= 0:
        raise ValueError(f"{variable} must be a number of 0 or more (1: AWS's timing), got {raw!r}")
    return scale


def _flag(value: str) -> bool:
    """OMS_SEED, OMS_EVENT_SOURCES: `1` or `0` as README writes them, or `true` or `false` as the
    functions' switches (any case); anything else is refused (`none`, `paused`: not guessed)."""
    switch = {"1": True, "true": True, "0": False, "false": False}.get(value.lower())
    if switch is None:
        raise ValueError("must be 1 or 0 (or true or false)")
    return switch


def _default_admin_key_bootstrap(secret: str) -> Any:
    from functions.bootstrap import Config, bootstrap  # the handlers' code, imported only now

    return bootstrap(Config.from_env()).api_keys.ensure_admin(secret)


def _schedule_periods(mappings: Any, declared: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Each scheduled function's declared period variable (functions/schedule.py; `declared`: each
    function's own environment) set to the period it runs on here, in minutes (the shortest of its
    schedules); an undeclared one is not made up (the function fails naming it, as on AWS)."""
    from functions.schedule import period_variable  # the handlers' code, imported only now

    periods: dict[str, float] = {}
    for mapping in mappings:
        name = period_variable(mapping.function_logical_id) if isinstance(mapping, ScheduleMapping) else ""
        if name in declared.get(mapping.function_logical_id, {}):
            periods[name] = min(mapping.period, periods.get(name, mapping.period))
    return {name: repr(seconds / 60) for name, seconds in periods.items()}


# Template parameters a local user may set from the shell: besides these, every function variable
# the template sets to a parameter (Template.parameter_variables: OMS_SLA, RECONCILE_AFTER_MINUTES,
# ...) is taken as that parameter, with its checks; a variable the template fixes (POWERTOOLS_*,
# the tables) keeps the template's value.
PARAMETER_ENV = {
    "OMS_RATE_LIMIT": "ApiRateLimit",
    "OMS_BURST_LIMIT": "ApiBurstLimit",
    "OMS_AUTHORIZER_CACHE_SECONDS": "AuthorizerCacheSeconds",
    "OMS_LABELS_ZONE_ID": "LabelsZoneId",
    # Per-key usage plans: each key made from then on throttled (and held to a daily quota) apart.
    "OMS_KEY_RATE_LIMIT": "KeyRateLimit",
    "OMS_KEY_BURST_LIMIT": "KeyBurstLimit",
    "OMS_KEY_QUOTA_PER_DAY": "KeyQuotaPerDay",
}

# The webhook retry schedule under `make run`: the contract's 24 hours compressed to a minute
# (API.md: at least 3 attempts within the first 60 s; 8 s is four times the 2 s base: it backs
# off). The functions' variables, set over the template's values, not its parameters: a deploy
# (and the stack's parameter check) refuses a window under 24 hours or a longest wait under 1800 s.
# A variable whose parameter is given keeps that value; function_environments keeps the template's.
COMPRESSED_WEBHOOK_RETRIES = {
    "WEBHOOK_RETRY_BASE_SECONDS": "2",
    "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "8",
    "WEBHOOK_RETRY_WINDOW_SECONDS": "60",
}


def _compressed_retries(template: Template) -> dict[str, str]:
    """COMPRESSED_WEBHOOK_RETRIES' variables that a function sets to a parameter not given here."""
    fed = template.parameter_variables()
    given = {var for var, parameter in fed if parameter in template.parameter_overrides}
    declared = {var for var, _ in fed}
    return {var: value for var, value in COMPRESSED_WEBHOOK_RETRIES.items() if var in declared - given}


def _shell_parameters(template: Template) -> tuple[dict[str, str], dict[str, str]]:
    """(parameter -> the shell's value, parameter -> the variable that set it). Each variable sets
    every parameter it is set to (one process, one value): two variables setting one parameter to
    two values are refused, naming both."""
    values: dict[str, str] = {}
    set_from: dict[str, str] = {}
    settable = sorted({*PARAMETER_ENV.items(), *template.parameter_variables()})
    for var, param in settable:
        if not (value := os.environ.get(var)):
            continue
        if values.setdefault(param, value) != value:
            raise ValueError(
                f"{set_from[param]}={values[param]!r} and {var}={value!r} both set parameter {param}:"
                " set one, or both to the same value"
            )
        set_from.setdefault(param, var)
    return values, set_from


class EmbeddedStack:
    """Everything `make run` runs, in this process. start() then use .api_url / .aws_endpoint /
    .admin_key; stop() puts the process back as it was (environment, patches, sockets).

    An argument left None is read from its variable: ports from OMS_PORT (8080) and OMS_AWS_PORT
    (4566), 0 for free ones. `handlers` overrides a function's handler by its logical id (a
    callable or "module.attribute"), so tests can serve fakes. `event_sources=False`
    (OMS_EVENT_SOURCES=0) starts the mappings paused until resume_mappings(). `retry_delay_scale`
    (OMS_RETRY_DELAY_SCALE) and `batching_window_scale` (OMS_BATCHING_WINDOW_SCALE; the suite sets
    0) multiply Step Functions Retry sleeps and MaximumBatchingWindowInSeconds (1.0: AWS's timing).
    `mapping_retry_delay` is the pause before a mapping retries a failed batch.
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
        batching_window_scale: float | None = None,
        mapping_retry_delay: float | None = None,
    ):
        # Refused before anything is built.
        self.retry_delay_scale = _scale("OMS_RETRY_DELAY_SCALE", retry_delay_scale)
        self.batching_window_scale = _scale("OMS_BATCHING_WINDOW_SCALE", batching_window_scale)
        self.template = template if isinstance(template, Template) else Template.load(template)
        from_shell, set_from = _shell_parameters(self.template)
        self.template.parameter_overrides.update({**from_shell, **(parameter_overrides or {})})
        # What a deploy refuses is refused here, named by the variable when it set the value.
        set_by = self.template.parameter_overrides
        self.template.check_parameters(
            {param: var for param, var in set_from.items() if str(set_by.get(param)) == from_shell[param]},
            settable=PARAMETER_ENV,
        )
        self.host = "127.0.0.1"
        self._api_port_asked = _env("OMS_PORT", 8080, _port) if api_port is None else api_port
        self._aws_port_asked = _env("OMS_AWS_PORT", 4566, _port) if aws_port is None else aws_port
        self.stack_name = self.template.stack_name = stack_name or _env("OMS_STACK_NAME", "oms-local", _stack_name)
        self.admin_key = admin_key or os.environ.get("OMS_ADMIN_API_KEY") or "oms_admin_" + secrets.token_urlsafe(24)
        if not admin_key and not is_usable_secret(self.admin_key):  # refused by start()'s bootstrap, naming nothing
            raise ValueError("OMS_ADMIN_API_KEY must be 16 to 200 characters of A-Z, a-z, 0-9, '_' and '-'")
        self.seed = _env("OMS_SEED", True, _flag) if seed is None else seed
        self._admin_key_bootstrap = admin_key_bootstrap or _default_admin_key_bootstrap
        self.event_sources = _env("OMS_EVENT_SOURCES", True, _flag) if event_sources is None else event_sources

        self.process = ProcessEnvironment()
        self.resources = Resources(self.template, handlers)
        self.servers = Servers(self.host)
        self.activity = Activity(
            self.resources,
            self.client,
            retry_delay=mapping_retry_delay,
            batching_window_scale=self.batching_window_scale,
        )
        # The parts' maps, by the names tests and tools read (filled by start()).
        self.refs, self.atts = self.resources.refs, self.resources.atts
        self.table_names, self.queue_urls = self.resources.table_names, self.resources.queue_urls
        self.bucket_names, self.event_bus_names = self.resources.bucket_names, self.resources.event_bus_names
        self.functions, self.function_arns = self.resources.functions, self.resources.function_arns
        self.state_machine_arns = self.resources.state_machine_arns
        self.usage_plan_ids = self.resources.usage_plan_ids
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

    def start(self) -> EmbeddedStack:
        if self._started:
            raise RuntimeError("stack already started")
        self._started = True
        try:
            self._start_moto()
            forget_warm_containers()  # a new stack is a new account: nothing its functions kept here stays
            self.resources.create(self.client)
            # moto's Lambda Invoke (Step Functions tasks) reaches the in-process functions.
            self._lambda_service = LambdaService(self.functions)
            self.process.enter(lambda_invoke.PATCH.registered(self._lambda_service))
            if self.state_machine_arns:
                if self.retry_delay_scale != 1.0:
                    self.process.enter(retry_delay.PATCH.registered(self.retry_delay_scale))
                self.process.set_log_level(_INTERPRETER_LOGGER, logging.CRITICAL)
            self.environment = self.resources.environment()
            self.process.set_env(self.environment)
            s3_mappings = self.activity.build()
            for mapping in s3_mappings:  # a function with an S3 event may be invoked asynchronously too
                self._lambda_service.asynchronous[mapping.function.name] = mapping.enqueue
            local = {
                **_schedule_periods(self.mappings.values(), self.function_environments),
                **_compressed_retries(self.template),
            }
            self.environment.update(local)  # what the functions see: the template's value, overridden
            self.process.set_env(local)
            if s3_mappings:
                self.process.enter(s3_notifications.PATCH.registered(*s3_mappings))
            self.process.enter(arrivals.PATCH.registered(*self.mappings.values()))  # before they start
            self._admin_key_bootstrap(self.admin_key)
            self.process.set_log_level("werkzeug", logging.WARNING)  # moto's server logs every request at INFO
            self.aws_port = self.servers.start_aws(self._aws_port_asked)
            # AWS_ENDPOINT_URL_S3 (botocore's) makes presigned URLs (shipping labels) point where a
            # client outside the process can GET them; MOTO_S3_CUSTOM_ENDPOINTS has moto serve the
            # functions' own requests to that name ("localhost") in process. A directory bucket
            # (LabelsZoneId) botocore addresses as <bucket>.localhost, a name that need not resolve:
            # with one, the endpoint is the server's address, which botocore addresses path-style,
            # and the functions' S3 requests go to it over loopback HTTP.
            in_process = f"http://localhost:{self.aws_port}"
            s3_endpoint = self.aws_endpoint if self.resources.directory_buckets else in_process
            s3 = {"AWS_ENDPOINT_URL_S3": s3_endpoint, "MOTO_S3_CUSTOM_ENDPOINTS": in_process}
            self.process.set_env({"MOTO_PORT": str(self.aws_port), **s3})
            self.environment["AWS_ENDPOINT_URL_S3"] = s3_endpoint
            self.gateway = gateway = ApiGateway.from_template(
                self.template, self.functions, apigateway=self.client("apigateway")
            )
            self.process.enter(
                apigateway.PATCH.registered((gateway.api_id, gateway.stage, gateway.flush_authorizer_caches))
            )
            self.api_port = self.servers.start_api(gateway, self._api_port_asked)
            self.activity.start(paused=not self.event_sources)
            if self.seed:
                self.seed_demo_data()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_moto(self) -> None:
        from moto import mock_aws

        self.process.set_env(AWS_ENVIRONMENT, remove=AWS_ENVIRONMENT_REMOVED)
        # No X-Ray daemon, and EMF lines would bury the console; either may be switched on.
        for name in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_DISABLED"):
            if name not in os.environ:
                self.process.set_env({name: "true"})
        for patch in patches_applied_by(AppliedBy.STACK):
            self.process.enter(patch.registered())
        self.process.enter(WORKER_THREADS.registered())  # each function as its own process would have it
        self.process.enter(LOG_KEYS.registered())
        # The ASL interpreter runs state machines for real; it costs nothing until one starts.
        mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        mock.start()
        self.process.callback(mock.stop)
        self.process.enter(default_session_sharing_models())

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

    def pause_mappings(self) -> None:
        """Every mapping stops taking new batches (records and messages wait at their source)."""
        self.activity.pause()

    def resume_mappings(self) -> None:
        self.activity.resume()

    def running_executions(self) -> list[str]:
        return self.activity.running_executions()

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """True once nothing is left to deliver, run or execute (Activity.wait_until_idle)."""
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
        self.seeded = seed_demo_data(self.api_url, self.admin_key)
        return self.seeded


@contextmanager
def running_stack(**kwargs: Any) -> Iterator[EmbeddedStack]:
    """For tests: a started stack on free ports, without demo data unless seed=True, with the
    `test` payment gateway on unless parameter_overrides say EnableTestPayments "false"."""
    kwargs = {"api_port": 0, "aws_port": 0, "seed": False, **kwargs}
    kwargs["parameter_overrides"] = {"EnableTestPayments": "true", **(kwargs.get("parameter_overrides") or {})}
    with EmbeddedStack(**kwargs) as stack:
        yield stack
