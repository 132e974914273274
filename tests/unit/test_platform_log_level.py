"""PlatformLogLevel: Lambda's START/END/REPORT lines as text at INFO, only failed invocations' (JSON) at
WARN, with the functions' own lines and metrics what they were at either."""

from __future__ import annotations

import logging
import uuid
import warnings
from pathlib import Path

import pytest
from aws_lambda_powertools import Logger

from infra.check_template import translate
from infra.local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
PARAMETERS = TEMPLATE["Parameters"]
LOG_LEVELS = PARAMETERS["LogLevel"]["AllowedValues"]
# Lambda's application log levels, least severe first (CloudFormation's LoggingConfig).
LAMBDA_LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
AT_WARN = {"Fn::Equals": [{"Ref": "PlatformLogLevel"}, "WARN"]}


def logging_config() -> dict:
    return TEMPLATE["Globals"]["Function"]["LoggingConfig"]


def lambda_level(log_level: str) -> str:
    return TEMPLATE["Mappings"]["LambdaLogLevel"][log_level]["Level"]


def test_info_leaves_lambda_s_lines_as_they_were_and_warn_keeps_only_failures_in_json():
    parameter = PARAMETERS["PlatformLogLevel"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("INFO", ["INFO", "WARN"])
    assert TEMPLATE["Conditions"]["PlatformLinesOnlyOnFailure"] == AT_WARN
    condition, at_warn, at_info = logging_config()["Fn::If"]
    assert condition == "PlatformLinesOnlyOnFailure"
    # INFO: no LoggingConfig, so plain text (START, END, REPORT with Max Memory Used and Init Duration).
    assert at_info == {"Ref": "AWS::NoValue"}
    # WARN: Lambda filters by level only JSON logs; its WARN keeps platform.runtimeDone of an
    # invocation that did not succeed (an error, a timeout, out of memory) and drops start and report.
    assert at_warn == {
        "LogFormat": "JSON",
        "SystemLogLevel": "WARN",
        "ApplicationLogLevel": {"Fn::FindInMap": ["LambdaLogLevel", {"Ref": "LogLevel"}, "Level"]},
    }
    for name, resource in TEMPLATE["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            assert "LoggingConfig" not in resource["Properties"], f"{name} overrides the Globals' LoggingConfig"


def test_the_sam_transform_gives_every_function_the_logging_config_and_keeps_the_rule():
    translated = translate(TEMPLATE)
    functions = {k: v for k, v in translated["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    assert functions
    for name, function in functions.items():
        assert function["Properties"]["LoggingConfig"] == logging_config(), name
    assert translated["Rules"] == TEMPLATE["Rules"]


@pytest.mark.parametrize("log_level", LOG_LEVELS)
def test_powertools_logs_at_log_level_when_lambda_is_given_its_application_level(log_level, monkeypatch):
    # Lambda sets AWS_LAMBDA_LOG_LEVEL from ApplicationLogLevel, and powertools' Logger obeys it before
    # POWERTOOLS_LOG_LEVEL (and warns when the two differ): a mapping to another level would make
    # LogLevel mean nothing at PlatformLogLevel WARN.
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", log_level)
    monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", lambda_level(log_level))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger = Logger(service=f"platform-level-{uuid.uuid4().hex}")
    assert logger.log_level == logging.getLevelName(log_level)


def test_warn_is_refused_with_a_log_level_at_which_lambda_would_drop_the_metrics():
    # Lambda counts a JSON line without `level` (powertools' EMF records) as INFO and drops it below
    # ApplicationLogLevel; it may count powertools' WARNING as INFO too (its word is WARN). So WARN
    # is allowed with exactly the LogLevels whose Lambda level keeps INFO lines.
    rule = TEMPLATE["Rules"]["PlatformLinesAtWarnKeepTheMetrics"]
    assert rule["RuleCondition"] == AT_WARN
    ((allowed, log_level),) = [assertion["Assert"]["Fn::Contains"] for assertion in rule["Assertions"]]
    assert log_level == {"Ref": "LogLevel"}
    info = LAMBDA_LEVELS.index("INFO")
    keeps_info = [level for level in LOG_LEVELS if LAMBDA_LEVELS.index(lambda_level(level)) <= info]
    assert allowed == keeps_info == ["DEBUG", "INFO"]
    assert set(TEMPLATE["Mappings"]["LambdaLogLevel"]) == set(LOG_LEVELS)
    assert {lambda_level(level) for level in LOG_LEVELS} <= set(LAMBDA_LEVELS)
