"""The S3 label store: the order keeps a key, links are signed per read, legacy URLs signed again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto import mock_aws

from functions.adapters.labels import LABEL_LINK_SECONDS, S3Labels

ORDER = "ord_" + "a" * 24
SHIPMENT = "shp_" + "b" * 24


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="labels")
        yield client


def test_put_label_stores_the_document_and_returns_its_key_not_a_link(s3: Any):
    labels = S3Labels("labels")

    key = labels.put_label(ORDER, SHIPMENT, b"%PDF-1.4", "application/pdf")

    assert key == f"labels/{ORDER}/{SHIPMENT}.pdf"
    stored = s3.get_object(Bucket="labels", Key=key)
    assert stored["Body"].read() == b"%PDF-1.4" and stored["ContentType"] == "application/pdf"


def test_a_link_is_a_presigned_get_of_the_key_valid_fifteen_minutes(s3: Any):
    labels = S3Labels("labels")
    key = labels.put_label(ORDER, SHIPMENT, b"%PDF-1.4", "application/pdf")

    link = urlsplit(labels.link(key))

    assert link.path.endswith(f"/{key}")
    query = parse_qs(link.query)
    assert query["X-Amz-Expires"] == [str(LABEL_LINK_SECONDS)] == ["900"]
    assert query["X-Amz-Signature"]


@pytest.mark.parametrize(
    "legacy",
    [
        f"https://labels.s3.amazonaws.com/labels/{ORDER}/{SHIPMENT}.pdf?X-Amz-Expires=604800&X-Amz-Signature=old",
        f"http://127.0.0.1:4566/labels/labels/{ORDER}/{SHIPMENT}.pdf?X-Amz-Expires=604800&X-Amz-Signature=old",
        f"https://labels.s3.eu-west-1.amazonaws.com/labels/{ORDER}/{SHIPMENT}.pdf?X-Amz-Signature=old",
        f"https://labels.s3-eu-west-1.amazonaws.com/labels/{ORDER}/{SHIPMENT}.pdf?X-Amz-Signature=old",
    ],
)
def test_a_stored_legacy_url_is_signed_again_for_the_same_object(s3: Any, legacy: str):
    labels = S3Labels("labels")

    link = labels.link(legacy)

    assert urlsplit(link).path.endswith(f"/labels/{ORDER}/{SHIPMENT}.pdf")
    query = parse_qs(urlsplit(link).query)
    assert query["X-Amz-Expires"] == ["900"] and query["X-Amz-Signature"] != ["old"]


@pytest.mark.parametrize(
    "foreign",
    [
        "https://carrier.example/label/123.pdf",
        # A carrier's hosted label whose path has a label key's shape (filed under the OMS's
        # reference, or naming another order's label): it was signed for that key of the bucket.
        f"https://carrier.example/labels/{ORDER}/{SHIPMENT}.pdf",
        f"https://labels.carrier.example/labels/{ORDER}/{SHIPMENT}.pdf",
        f"https://other.s3.amazonaws.com/labels/{ORDER}/{SHIPMENT}.pdf",
        f"https://labels.s3x.s3.amazonaws.com/labels/{ORDER}/{SHIPMENT}.pdf",  # another bucket, "labels.s3x"
        f"https://labels-other.s3.amazonaws.com/labels/{ORDER}/{SHIPMENT}.pdf",
        f"https://carrier.example/other/labels/{ORDER}/{SHIPMENT}.pdf",
        # A host that merely starts with our bucket's S3 name (a domain of its own under it).
        f"https://labels.s3.amazonaws.com.carrier.example/labels/{ORDER}/{SHIPMENT}.pdf",
        # Our bucket, but a path that only starts with a label key (no label of ours is there).
        f"https://labels.s3.amazonaws.com/labels/{ORDER}/{SHIPMENT}.pdf/copy",
    ],
)
def test_a_url_that_is_not_one_of_ours_is_shown_as_stored(s3: Any, foreign: str):
    assert S3Labels("labels").link(foreign) == foreign


def test_a_carriers_link_is_shown_as_stored_by_a_function_without_a_bucket(s3: Any):
    hosted = f"https://carrier.example/labels/{ORDER}/{SHIPMENT}.pdf"

    assert S3Labels("").link(hosted) == hosted


def test_signing_without_a_bucket_is_a_configuration_error(s3: Any):
    with pytest.raises(RuntimeError, match="LABELS_BUCKET"):
        S3Labels("").link(f"labels/{ORDER}/{SHIPMENT}.pdf")


@pytest.mark.parametrize("region", ["eu-north-1", "eu-west-1", "ap-south-1"])
def test_a_link_names_the_bucket_s_regional_endpoint(s3: Any, monkeypatch: pytest.MonkeyPatch, region: str):
    # botocore signed for the function's region but on the legacy global endpoint
    # (labels.s3.amazonaws.com): S3 answers a request there for a bucket outside us-east-1 with a
    # redirect while the bucket is new (the signature, made for the other host, then fails) and
    # with SignatureDoesNotMatch or IllegalLocationConstraint in the newer regions, so on AWS the
    # printer's label link did not open; moto serves any host. The regional name always works.
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)

    link = urlsplit(S3Labels("labels").link(f"labels/{ORDER}/{SHIPMENT}.pdf"))

    assert link.scheme == "https" and link.hostname == f"labels.s3.{region}.amazonaws.com"
    assert link.path == f"/labels/{ORDER}/{SHIPMENT}.pdf"
    assert f"/{region}/s3/aws4_request" in parse_qs(link.query)["X-Amz-Credential"][0]


def test_a_link_stays_on_a_configured_endpoint_such_as_the_local_stack_s(s3: Any, monkeypatch: pytest.MonkeyPatch):
    # The local stack points S3 at its own server (AWS_ENDPOINT_URL_S3): a bucket name before that
    # host (labels.localhost) would not resolve for whoever follows the link.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://localhost:4566")

    link = urlsplit(S3Labels("labels").link(f"labels/{ORDER}/{SHIPMENT}.pdf"))

    assert (link.hostname, link.port, link.path) == ("localhost", 4566, f"/labels/labels/{ORDER}/{SHIPMENT}.pdf")


def test_a_standard_bucket_s_link_is_what_it_was_before_directory_buckets_were_signed_without_sessions(
    s3: Any, monkeypatch: pytest.MonkeyPatch
):
    # LabelsZoneId empty (the default): the setting that signs a directory bucket's links with the
    # role's credentials changes nothing of a general purpose bucket's, byte for byte.
    from botocore.config import Config

    monkeypatch.setenv("AWS_SESSION_TOKEN", "role-session-token")
    signed_at = datetime(2026, 12, 6, 8, 30, tzinfo=UTC)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: signed_at.replace(tzinfo=None))
    key = f"labels/{ORDER}/{SHIPMENT}.pdf"
    before = boto3.client("s3", config=Config(signature_version="s3v4", s3={"addressing_style": "virtual"}))

    link = S3Labels("labels").link(key)

    expected = before.generate_presigned_url("get_object", Params={"Bucket": "labels", "Key": key}, ExpiresIn=900)
    assert link == expected


ZONE = "use1-az4"
DIRECTORY_BUCKET = f"labels--{ZONE}--x-s3"


@pytest.fixture
def directory_bucket(s3: Any) -> str:
    from infra.local.resources import directory_bucket_client

    directory_bucket_client().create_bucket(Bucket=DIRECTORY_BUCKET)
    return DIRECTORY_BUCKET


def test_a_label_is_stored_in_a_directory_bucket_with_the_role_s_own_credentials(directory_bucket: str):
    # botocore's default for a directory bucket asks CreateSession for a 5-minute session first;
    # the store signs with the role's credentials instead (moto has no CreateSession either).
    key = S3Labels(directory_bucket).put_label(ORDER, SHIPMENT, b"%PDF-1.4", "application/pdf")

    from infra.local.resources import directory_bucket_client

    assert directory_bucket_client().get_object(Bucket=directory_bucket, Key=key)["Body"].read() == b"%PDF-1.4"


def test_a_directory_bucket_s_link_is_signed_for_s3express_with_the_role_s_credentials_for_fifteen_minutes(
    directory_bucket: str,
):
    # A link signed with an S3 Express session's credentials dies with the session, in 5 minutes,
    # whatever X-Amz-Expires says; one signed for the `s3` service is refused by the zonal endpoint.
    link = urlsplit(S3Labels(directory_bucket).link(f"labels/{ORDER}/{SHIPMENT}.pdf"))

    query = parse_qs(link.query)
    assert link.scheme == "https" and link.hostname == f"{directory_bucket}.s3express-{ZONE}.us-east-1.amazonaws.com"
    assert link.path == f"/labels/{ORDER}/{SHIPMENT}.pdf"
    assert query["X-Amz-Credential"][0].endswith("/us-east-1/s3express/aws4_request")
    assert "X-Amz-S3session-Token" not in query  # what a session's signature carries
    assert query["X-Amz-Expires"] == [str(LABEL_LINK_SECONDS)]
