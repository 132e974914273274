"""What an AWS error says about the request that met it."""

from __future__ import annotations

from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

# AWS errors that say "not now" rather than "never": throttling that outlasted botocore's retries
# (DynamoDB's, or another service's: every name botocore's standard retry mode takes for one, and
# KMS's behind Step Functions), and a DynamoDB write that met another transaction on one of its
# items (TransactionConflict, which botocore does not retry). The call did nothing; the same
# request later can succeed. A 429 too, whatever its code: a throttle answered with no body is
# named by its status ("429"), as botocore's own throttle check reads it.
_BUSY_CODES = frozenset(
    {"TransactionConflictException", "ProvisionedThroughputExceededException", "ThrottlingException",
     "RequestLimitExceeded", "TransactionInProgressException", "Throttling", "ThrottledException",
     "RequestThrottledException", "TooManyRequestsException", "RequestThrottled", "SlowDown",
     "BandwidthLimitExceeded", "PriorRequestNotComplete", "KmsThrottlingException"}
)  # fmt: skip
_BUSY_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})


def busy(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code")
    if code == "TransactionCanceledException":
        reasons = {reason.get("Code") for reason in error.response.get("CancellationReasons") or []}
        return bool(reasons & _BUSY_REASONS)
    return code in _BUSY_CODES or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 429


# Server-side errors botocore retries and that outlasted its retries: the service, not the request.
# By the HTTP status too: botocore names a 5xx whose body names no error by its status ("503"), and
# the service may name one these do not (InternalFailure). Moto answers neither.
_DOWN_CODES = frozenset({"InternalServerError", "ServiceUnavailable", "ServiceUnavailableException"})
# The function may not make the call at all (a grant missing from its role, its credentials
# refused, the state machine it is configured with missing): no one item's fault, every request
# after it fails alike.
_DENIED_CODES = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException", "StateMachineDoesNotExist"}
)


def dependency_down(error: Exception) -> bool:
    """Whether `error` says an AWS service is down or out of reach rather than that the request
    (one item) is bad: throttling or a conflict (`busy`), a server-side error (any 5xx), a call
    the function may not make, a connection, a response or credentials that failed. A
    ValidationException (an item too large), a refused condition or a bug is the request's own."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return busy(error) or code in _DOWN_CODES or code in _DENIED_CODES or status >= 500
    return isinstance(error, (BotoConnectionError, HTTPClientError, NoCredentialsError))


def pass_stopper(error: Exception) -> bool:
    """Whether a scheduled pass stops at `error` rather than reading past the order, return or
    import it met it on: a dependency down as core knows it (core.errors.dependency_down: a
    gateway, a carrier, Step Functions refusing for now, the plugins not loaded) or as AWS says it
    (dependency_down)."""
    from core.errors import dependency_down as core_dependency_down

    return core_dependency_down(error) or dependency_down(error)
