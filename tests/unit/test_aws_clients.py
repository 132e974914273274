"""Every boto3 client the functions build comes from functions/adapters/aws_clients.py, with
timeouts shorter than the functions' and retries in standard mode; the waits the domain counts
on the functions' timeouts agree with them."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import UnknownServiceError
from botocore.loaders import JSONFileLoader, Loader
from botocore.regions import EndpointResolver

from core.returns import PUT_WINDOW
from functions.adapters import aws_clients
from functions.adapters.aws_clients import aws_client
from infra.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "functions" / "adapters" / "aws_clients.py"


def _client_calls(path: Path, source: str | None = None) -> list[str]:
    """`boto3.client(...)`, `boto3.resource(...)`, `Session(...)` and powertools persistence layers
    built without the function's own client, in one module: where a client could be built with
    botocore's defaults."""
    found = []
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: n.lineno):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if (owner == "boto3" and name in ("client", "resource")) or name == "Session":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner}.{name}")
        if name.endswith("PersistenceLayer") and not any(k.arg == "boto3_client" for k in node.keywords):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name} without boto3_client")
    return found


def test_no_function_builds_a_boto3_client_but_through_the_one_builder():
    modules = [p for p in (ROOT / "functions").rglob("*.py") if p != BUILDER]
    assert len(modules) > 20
    assert [call for path in modules for call in _client_calls(path)] == []
    assert _client_calls(BUILDER) == [f"{BUILDER.relative_to(ROOT)}:{_line_of('boto3.client(')} boto3.client"]


def _line_of(text: str) -> int:
    return next(n for n, line in enumerate(BUILDER.read_text().splitlines(), 1) if text in line)


def test_the_check_would_catch_a_stray_client():
    stray = ROOT / "functions" / "_stray_client_for_the_test.py"
    source = (
        "import boto3\nfrom aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer\n"
        "s3 = boto3.client('s3')\nsession = boto3.Session()\ntable = boto3.resource('dynamodb')\n"
        "layer = DynamoDBPersistenceLayer(table_name='t')\n"
    )
    calls = _client_calls(stray, source)
    assert [call.split(" ", 1)[1] for call in calls] == [
        "boto3.client", "boto3.Session", "boto3.resource", "DynamoDBPersistenceLayer without boto3_client",
    ]  # fmt: skip


def test_a_client_gets_short_timeouts_and_standard_retries(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = aws_client("dynamodb")

    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.0, 2.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}


def test_a_clients_own_config_is_merged_over_the_defaults(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = aws_client("s3", endpoint_url="http://localhost:1", config=Config(signature_version="s3v4"))

    config = client.meta.config
    assert config.signature_version == "s3v4"
    assert (config.connect_timeout, config.read_timeout) == (1.0, 2.0)
    assert config.retries["mode"] == "standard"
    assert client.meta.endpoint_url == "http://localhost:1"


def test_a_new_containers_first_client_loads_its_model_without_listing_every_service(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a new container's
    listed: list[str] = []
    listing = Loader.list_available_services
    monkeypatch.setattr(
        Loader, "list_available_services", lambda self, type_name: listed.append(type_name) or listing(self, type_name)
    )

    client = aws_client("dynamodb")

    assert listed == []  # botocore's loader lists ~450 directories for the model and again for its endpoint rules
    own = botocore.session.Session()
    assert client.meta.service_model._service_description == own.get_service_data("dynamodb")
    assert client.meta.config.retries["mode"] == "standard"
    # A name botocore does not know is still refused by botocore's own check, naming the known ones.
    with pytest.raises(UnknownServiceError, match=r"Valid service names are: .*dynamodb"):
        aws_client("no-such-service")


def test_a_botocore_without_the_members_the_loader_reads_leaves_the_loading_to_botocore(monkeypatch):
    # boto3 is not pinned: a botocore whose loader no longer has the extras processor and finder the
    # ServiceLoader reads gets its own loading (a stand-in here, since today's botocore needs them).
    loaded = object()
    monkeypatch.setattr(Loader, "load_service_model", lambda self, service, type_name, api_version=None: loaded)
    assert aws_clients.ServiceLoader().load_service_model("dynamodb", "service-2") is not loaded  # its own path

    monkeypatch.delattr(Loader, "_find_extras")

    assert aws_clients.ServiceLoader().load_service_model("dynamodb", "service-2") is loaded


def _function_timeouts() -> dict[str, int]:
    template = load_template(ROOT / "template.yaml")
    default = template["Globals"]["Function"]["Timeout"]
    return {
        name: resource["Properties"].get("Timeout", default)
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def test_every_attempt_ends_well_within_every_function_timeout_and_all_attempts_within_the_default():
    timeouts = _function_timeouts()
    per_attempt = aws_clients.CONNECT_TIMEOUT + aws_clients.READ_TIMEOUT
    assert all(per_attempt < timeout for timeout in timeouts.values()), timeouts
    default = min(t for t in timeouts.values() if t >= 10)
    assert per_attempt * aws_clients.MAX_ATTEMPTS < default


def _longest_call(config: Config) -> float:
    """The longest one call of a client with `config` can take before it raises: every attempt
    waiting out its connect and read timeouts, and the backoff before each retry (botocore's
    standard mode: at most 50 ms x 2**i after a timeout, or 1 s x 2**i after a throttle, an error
    answered at once)."""
    attempts = config.retries["total_max_attempts"]
    attempt = config.connect_timeout + config.read_timeout
    return attempt + sum(max(attempt + 0.05 * 2**i, 2**i) for i in range(attempts - 1))


def test_the_authorizers_key_lookup_raises_well_before_its_function_times_out(monkeypatch):
    """The authorizer has 5 s (AUTHORIZER_TIMEOUT_SECONDS: a revoked key's second cache flush waits
    for it), not the 10 s the default client's three attempts of 3 s are made for: a stuck
    DynamoDB read would have Lambda kill it (Task timed out, a new container for the next request)
    before botocore's last attempt, where a client that fits answers from its second attempt or
    raises its own error in time."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("CATALOG_TABLE", "test-CatalogTable")
    from functions.authorizer import app

    app.api_keys.forget()
    try:
        config = app.api_keys()._client.meta.config
    finally:
        app.api_keys.forget()
    assert config.retries["mode"] == "standard" and config.retries["total_max_attempts"] >= 2
    assert _longest_call(config) < _function_timeouts()["AuthorizerFunction"] - 1


def test_a_default_clients_call_raises_before_any_other_function_times_out(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config = aws_client("dynamodb").meta.config
    timeouts = _function_timeouts()
    assert _longest_call(config) < min(t for name, t in timeouts.items() if name != "AuthorizerFunction")


def test_a_refused_exchange_waits_past_every_run_that_could_still_place_it_and_less_than_its_retry():
    # Returns._given_up_after_refusal: a run that read the return before the refusal puts its
    # replacement within the returns step function's Timeout; the Exchange step's retry of
    # RefundNotDone must come after the wait, or the return would end stuck instead of refunded.
    asl = json.loads((ROOT / "infra" / "return_workflow.asl.json").read_text())
    (retry,) = [r for r in asl["States"]["Exchange"]["Retry"] if r["ErrorEquals"] == ["RefundNotDone"]]
    assert 2 * _function_timeouts()["ReturnStepFunction"] <= PUT_WINDOW.total_seconds() < retry["IntervalSeconds"]


# --- botocore's endpoint data, digested by the build ---------------------------------------------


def _digested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The digest the build writes into a function's artifact, where the loader looks for it."""
    digest = aws_clients.write_endpoints_digest(tmp_path)
    monkeypatch.setattr(aws_clients, "ENDPOINTS_DIGEST", digest)
    return digest


def _files_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    load = JSONFileLoader.load_file
    monkeypatch.setattr(JSONFileLoader, "load_file", lambda self, path: read.append(path) or load(self, path))
    return read


def _whole_endpoints() -> dict:
    return JSONFileLoader().load_file(os.path.join(Loader.BUILTIN_DATA_PATH, "endpoints"))


def test_a_new_containers_first_client_reads_the_builds_endpoint_digest_not_the_whole_file(tmp_path, monkeypatch):
    # botocore's endpoints.json holds every partition's every service: 1.2 MB of JSON parsed in
    # each new container's first client, ~100 M instructions of the API's cold path.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a new container's
    _digested(tmp_path, monkeypatch)
    read = _files_read(monkeypatch)

    client = aws_client("dynamodb")

    assert os.path.join(Loader.BUILTIN_DATA_PATH, "endpoints") not in read
    own = botocore.session.Session().create_client("dynamodb", region_name="eu-west-1")
    assert client.meta.endpoint_url == own.meta.endpoint_url == "https://dynamodb.eu-west-1.amazonaws.com"
    assert client.meta.region_name == own.meta.region_name
    assert client.meta.partition == own.meta.partition
    assert client.meta.config.signature_version == own.meta.config.signature_version


def test_the_digest_resolves_every_service_in_every_partition_as_botocores_whole_file(tmp_path, monkeypatch):
    _digested(tmp_path, monkeypatch)
    data, path = aws_clients.ServiceLoader().load_data_with_path("endpoints")
    assert path == os.path.join(Loader.BUILTIN_DATA_PATH, "endpoints")  # botocore's own: the same resolution rules
    whole = _whole_endpoints()
    digested, own = EndpointResolver(data, uses_builtin_data=True), EndpointResolver(whole, uses_builtin_data=True)
    # A region of each partition, and one of no partition; services digested or not (any other is
    # read from the whole file when first asked).
    regions = [next(iter(partition["regions"])) for partition in whole["partitions"]] + ["mars-north-1", None]
    services = ["dynamodb", "s3", "states", "sqs", "iam", "route53", "sts", "no-such-service"]
    for service in services:
        for region in regions:
            for dualstack, fips in [(False, False), (True, False), (False, True)]:
                asked = dict(service_name=service, region_name=region, use_dualstack_endpoint=dualstack,
                             use_fips_endpoint=fips)  # fmt: skip
                assert _resolved(digested, asked) == _resolved(own, asked), asked
        assert digested.get_available_endpoints(service) == own.get_available_endpoints(service)
        assert digested.get_service_endpoints_data(service) == own.get_service_endpoints_data(service)


def _resolved(resolver: EndpointResolver, asked: dict) -> object:
    try:
        return resolver.construct_endpoint(**asked)
    except Exception as error:  # the same refusal from both
        return type(error), str(error)


def test_the_digest_holds_every_service_a_function_builds_a_client_of(tmp_path, monkeypatch):
    named = {
        node.args[0].value
        for path in (ROOT / "functions").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "aws_client"
        and node.args and isinstance(node.args[0], ast.Constant)
    }  # fmt: skip
    assert named and named <= set(aws_clients.SERVICES)
    digest = _digested(tmp_path, monkeypatch)
    session = botocore.session.Session()
    prefixes = {session.get_service_model(name).endpoint_prefix for name in aws_clients.SERVICES}
    digested = json.loads(digest.read_text())["endpoints"]["partitions"]
    whole = _whole_endpoints()["partitions"]
    assert [set(partition["services"]) for partition in digested] == [
        prefixes & set(partition["services"]) for partition in whole
    ]
    assert [{k: v for k, v in p.items() if k != "services"} for p in digested] == [
        {k: v for k, v in p.items() if k != "services"} for p in whole
    ]


def test_a_digest_of_another_botocore_or_endpoints_of_ones_own_are_left_to_botocore(tmp_path, monkeypatch):
    digest = _digested(tmp_path, monkeypatch)
    written = json.loads(digest.read_text())
    digest.write_text(json.dumps({**written, "botocore": "0.0.1"}))  # the layer's botocore is not the build's
    whole = _whole_endpoints()
    read = _files_read(monkeypatch)
    assert aws_clients.ServiceLoader().load_data_with_path("endpoints")[0] == whole
    assert read == [os.path.join(Loader.BUILTIN_DATA_PATH, "endpoints")]

    digest.write_text(json.dumps(written))
    own = tmp_path / "models"
    own.mkdir()
    (own / "endpoints.json").write_text(json.dumps({"partitions": [], "version": 3}))
    loader = aws_clients.ServiceLoader(extra_search_paths=[str(own)])  # AWS_DATA_PATH's
    assert loader.load_data_with_path("endpoints") == ({"partitions": [], "version": 3}, str(own / "endpoints"))
