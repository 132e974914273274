"""moto's Lambda Invoke answered by the local stack's in-process functions.

No function is created in moto (that would need a zip and Docker to run). While a stack routes to
it, LambdaBackend.invoke asks the stack's LambdaService (infra/local/lambdas.py) first;
a name it does not know falls through to moto (ResourceNotFoundException as usual).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from infra.local.moto_patches import MotoPatch, Replacements

_services: list[Any] = []  # the LambdaServices routed to, newest last: lookup(name), invoke(...)
_guard = threading.Lock()


def _replacements() -> Replacements:
    from moto.awslambda.models import LambdaBackend

    original = LambdaBackend.__dict__["invoke"]

    def invoke(
        backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
    ) -> Any:
        name = function_name if qualifier in (None, "") else f"{function_name}:{qualifier}"
        with _guard:
            services = list(reversed(_services))
        for service in services:
            function = service.lookup(name)
            if function is not None:
                return service.invoke(function, body, headers, response_headers)
        return original(backend, function_name, qualifier, body, headers, response_headers)

    return {(LambdaBackend, "invoke"): invoke}


PATCH = MotoPatch(
    "lambda_invoke",
    changes="Lambda Invoke (from Step Functions' Lambda tasks and any boto3 client) runs the template's "
    "function in process; moto would need a zip and Docker.",
    expects={
        "moto.awslambda.models.LambdaBackend.invoke": (
            "(self, function_name, qualifier, body, headers, response_headers)"
        )
    },
    replacements=_replacements,
)


@contextmanager
def routing(service: Any) -> Iterator[None]:
    """Routes Invoke of the service's functions to `service.invoke` for the block."""
    with _guard:
        _services.append(service)
    PATCH.apply()
    try:
        yield
    finally:
        PATCH.undo()
        with _guard:
            _services.remove(service)
