"""LabelsZoneId (issue 10 item 6): labels in an S3 Express One Zone directory bucket, or, empty (the
default), in LabelsBucket exactly as before; the template both ways and the local stack with it set."""

from __future__ import annotations

import functools
import os
import urllib.request
from typing import Any

import pytest

from infra.check_template import translate, with_placeholder_uris
from infra.local.template import Template, load_template

LABEL_WRITERS = ("ApiFunction", "CreateShipmentsFunction", "ReconcilerFunction")
EXPRESS_ONLY = ("LabelsExpressBucket", "LabelsExpressBucketPolicy", "LabelsExpressAccess")


@functools.cache
def _translated() -> dict[str, Any]:
    return translate(with_placeholder_uris(load_template()))["Resources"]


def stack_resources(zone: str) -> dict[str, Any]:
    """The resources CloudFormation creates (SAM's output, conditions applied) with LabelsZoneId `zone`."""
    template = Template(load_template(), parameter_overrides={"LabelsZoneId": zone})
    translated = _translated()
    return {
        name: resource
        for name, resource in translated.items()
        if "Condition" not in resource or template.condition(resource["Condition"])
    }


def labels_bucket_variable(zone: str, function: str) -> str:
    """What a function's LABELS_BUCKET names with LabelsZoneId `zone`: the logical id it refers to."""
    template = Template(load_template(), parameter_overrides={"LabelsZoneId": zone})
    variable = template.functions()[function]["Environment"]["Variables"]["LABELS_BUCKET"]
    return template.resolve(
        variable, refs={"LabelsBucket": "LabelsBucket", "LabelsExpressBucket": "LabelsExpressBucket"}
    )


@pytest.mark.parametrize("function", LABEL_WRITERS)
def test_by_default_labels_stay_in_labels_bucket_and_nothing_of_s3_express_is_created(function: str):
    resources = stack_resources("")

    assert not set(EXPRESS_ONLY) & set(resources)
    assert not [name for name, r in resources.items() if r["Type"].startswith("AWS::S3Express::")]
    assert labels_bucket_variable("", function) == "LabelsBucket"
    assert resources["LabelsBucket"]["Type"] == "AWS::S3::Bucket"


@pytest.mark.parametrize("function", LABEL_WRITERS)
def test_a_zone_id_keeps_labels_in_a_retained_directory_bucket_in_that_zone(function: str):
    resources = stack_resources("use1-az4")

    bucket = resources["LabelsExpressBucket"]
    assert bucket["Type"] == "AWS::S3Express::DirectoryBucket"
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    assert bucket["Properties"]["DataRedundancy"] == "SingleAvailabilityZone"
    assert bucket["Properties"]["LocationName"] == {"Ref": "LabelsZoneId"}
    # The same 90 days as LabelsBucket's.
    assert (
        bucket["Properties"]["LifecycleConfiguration"]
        == resources["LabelsBucket"]["Properties"]["LifecycleConfiguration"]
    )
    assert labels_bucket_variable("use1-az4", function) == "LabelsExpressBucket"
    # Labels stored before the switch stay where they are, retained.
    assert resources["LabelsBucket"]["DeletionPolicy"] == "Retain"


def test_with_a_zone_id_the_label_writers_may_create_sessions_on_that_bucket_only():
    resources = stack_resources("use1-az4")

    access = resources["LabelsExpressAccess"]["Properties"]
    assert sorted(role["Ref"] for role in access["Roles"]) == sorted(f"{f}Role" for f in LABEL_WRITERS)
    assert access["PolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "s3express:CreateSession",
            "Resource": {"Fn::GetAtt": ["LabelsExpressBucket", "Arn"]},
        }
    ]
    # No other grant anywhere names S3 Express.
    others = [
        name
        for name, r in resources.items()
        if name != "LabelsExpressAccess"
        and r["Type"] in ("AWS::IAM::Role", "AWS::IAM::Policy")
        and "s3express" in str(r["Properties"])
    ]
    assert others == []


def test_with_a_zone_id_the_directory_bucket_refuses_plain_http():
    policy = stack_resources("use1-az4")["LabelsExpressBucketPolicy"]["Properties"]

    assert policy["Bucket"] == {"Ref": "LabelsExpressBucket"}
    assert policy["PolicyDocument"]["Statement"] == [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3express:*",
            "Resource": [
                {"Fn::GetAtt": ["LabelsExpressBucket", "Arn"]},
                {"Fn::Sub": "${LabelsExpressBucket.Arn}/*"},
            ],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]


@pytest.mark.parametrize("zone", ["use1-az4", "usw2-az1", "apne1-az4", "use1-bos1-az1"])
def test_the_parameter_takes_availability_and_local_zone_ids(zone: str):
    Template(load_template(), parameter_overrides={"LabelsZoneId": zone}).check_parameters()


@pytest.mark.parametrize("zone", ["us-east-1a", "use1", "USE1-AZ4", "labels--use1-az4--x-s3"])
def test_the_parameter_refuses_what_is_no_zone_id(zone: str):
    # us-east-1a is a zone's name, which differs per account: directory buckets are named by its ID.
    with pytest.raises(ValueError, match="LabelsZoneId"):
        Template(load_template(), parameter_overrides={"LabelsZoneId": zone}).check_parameters()


def test_on_the_local_stack_a_label_is_stored_in_the_directory_bucket_and_its_link_downloads():
    from functions.adapters.labels import S3Labels
    from infra.local.stack import running_stack

    ok = lambda event, context: None  # noqa: E731 (no API request is made)
    with running_stack(
        parameter_overrides={"LabelsZoneId": "use1-az4"},
        handlers={"ApiFunction": ok, "AuthorizerFunction": ok},
        admin_key_bootstrap=lambda secret: None,
        event_sources=False,
    ) as running:
        bucket = running.bucket_names["LabelsExpressBucket"]
        assert bucket == "oms-local-labelsexpressbucket--use1-az4--x-s3"
        for function in LABEL_WRITERS:
            assert running.function_environments[function]["LABELS_BUCKET"] == bucket
        assert os.environ["LABELS_BUCKET"] == bucket

        labels = S3Labels(os.environ["LABELS_BUCKET"])
        key = labels.put_label("ord_1", "shp_1", b"%PDF-label", "application/pdf")
        link = labels.link(key)

        assert link.startswith(f"{running.aws_endpoint}/{bucket}/{key}?")
        assert "%2Fs3express%2Faws4_request" in link
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(link, timeout=10) as response:
            assert response.status == 200
            assert response.read() == b"%PDF-label"
