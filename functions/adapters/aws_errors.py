"""What an AWS error says about the request that met it."""

from __future__ import annotations

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

# AWS errors that say "not now" rather than "never": throttling that outlasted botocore's retries
# (DynamoDB's, or another service's), and a DynamoDB write that met another transaction on one of
# its items (TransactionConflict, which botocore does not retry). The call did nothing; the same
# request later can succeed.
_BUSY_CODES = frozenset(
    {"TransactionConflictException", "ProvisionedThroughputExceededException", "ThrottlingException",
     "RequestLimitExceeded", "TransactionInProgressException"}
)  # fmt: skip
_BUSY_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})


def busy(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code")
    if code == "TransactionCanceledException":
        reasons = {reason.get("Code") for reason in error.response.get("CancellationReasons") or []}
        return bool(reasons & _BUSY_REASONS)
    return code in _BUSY_CODES


# Server-side errors botocore retries and that outlasted its retries: the service, not the request.
_DOWN_CODES = frozenset({"InternalServerError", "ServiceUnavailable", "ServiceUnavailableException"})


def dependency_down(error: Exception) -> bool:
    """Whether `error` says an AWS service is down or out of reach rather than that the request
    (one item) is bad: throttling or a conflict (`busy`), a server-side error, a connection or a
    response that failed. A ValidationException (an item too large), a refused condition or a bug
    is the request's own."""
    if isinstance(error, ClientError):
        return busy(error) or error.response.get("Error", {}).get("Code") in _DOWN_CODES
    return isinstance(error, (BotoConnectionError, HTTPClientError))
