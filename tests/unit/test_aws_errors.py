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


def parsed(status: int, body: bytes) -> ClientError:
    """The ClientError botocore raises once its retries are spent on this DynamoDB answer (its own
    parser: what a deployed function meets, which moto never answers)."""
    import botocore.session
    from botocore.parsers import create_parser

    model = botocore.session.get_session().get_service_model("dynamodb")
    operation = model.operation_model("GetItem")
    response = create_parser(model.metadata["protocol"]).parse(
        {"status_code": status, "headers": {}, "body": body}, operation.output_shape
    )
    return ClientError(response, "GetItem")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, b"<html><body>Service Unavailable</body></html>"),  # a front end's page: Code "503"
        (502, b""),  # Code "502"
        (504, b"Gateway Timeout"),
        (500, b'{"__type":"com.amazon.coral.service#InternalFailure","message":"internal failure"}'),
    ],
)
def test_a_server_error_is_the_service_down_whatever_code_botocore_gives_it(status, body):
    # Before: only the codes InternalServerError and ServiceUnavailable were; a 5xx whose body
    # named no error (Code "503") or named another was each return's own, and the pass read on.
    error = parsed(status, body)
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert dependency_down(error)


@pytest.mark.parametrize(
    "code",
    ["AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException", "StateMachineDoesNotExist"],
)  # fmt: skip
def test_a_call_the_function_may_not_make_is_no_single_requests_own(code):
    # A role missing a grant, or credentials refused: every return after it fails alike.
    assert dependency_down(client_error(code))


def test_credentials_not_found_is_no_single_requests_own():
    from botocore.exceptions import NoCredentialsError

    assert dependency_down(NoCredentialsError())


def test_a_refused_item_found_by_botocore_is_still_the_requests_own():
    error = parsed(400, b'{"__type":"com.amazonaws.dynamodb.v20120810#ValidationException",'
                        b'"message":"Item size has exceeded the maximum allowed size"}')  # fmt: skip
    assert not dependency_down(error)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, b""),  # a throttle a front end answers with no body: botocore's Code "429"
        (400, b'{"__type":"TooManyRequestsException","message":"Rate exceeded"}'),
        (400, b'{"__type":"Throttling","message":"Rate exceeded"}'),  # the query protocol's name
        (400, b'{"__type":"KmsThrottlingException","message":"KMS throttled the request"}'),
    ],
)
def test_a_throttle_by_any_name_botocore_retries_as_one_is_busy_and_the_service_down(status, body):
    # Before: only DynamoDB's and Step Functions' own names were: a 429, or a service that names its
    # throttle otherwise, was each return's own (the pass read on into the throttle, every return
    # spending botocore's retries) and answered 500 rather than 503 by the API.
    from functions.adapters.aws_errors import busy

    error = parsed(status, body)
    assert busy(error) and dependency_down(error)
