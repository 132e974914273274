"""Which AWS errors say a service is down (a pass stops on them) and which are one request's own
(a pass reads past them: functions/adapters/aws_errors.py's dependency_down)."""

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from functions.adapters.aws_errors import dependency_down


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "it failed"}}, "UpdateItem")


@pytest.mark.parametrize(
    "code",
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
     "InternalServerError", "ServiceUnavailable"],
)  # fmt: skip
def test_a_throttle_or_a_server_error_outlasting_the_retries_is_the_service_down(code):
    assert dependency_down(client_error(code))


def test_an_endpoint_out_of_reach_or_a_response_that_timed_out_is_the_service_down():
    assert dependency_down(EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"))
    assert dependency_down(ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"))


@pytest.mark.parametrize("code", ["ValidationException", "ConditionalCheckFailedException", "ResourceNotFound"])
def test_an_error_of_the_request_itself_is_not(code):
    assert not dependency_down(client_error(code))


def test_a_bug_is_not():
    assert not dependency_down(KeyError("refund"))
