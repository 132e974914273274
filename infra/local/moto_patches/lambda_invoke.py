"""moto's Lambda Invoke answered by the local stack's in-process functions.

No function is created in moto (that would need a zip and Docker to run). While a stack routes to
it, LambdaBackend.invoke asks the stack's LambdaService (infra/local/lambdas.py) first;
a name it does not know falls through to moto (ResourceNotFoundException as usual).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from infra.local.moto_patches import MotoPatch, Replacements


def _replacements() -> Replacements:
    from moto.awslambda.models import LambdaBackend

    original = LambdaBackend.__dict__["invoke"]

    def invoke(backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response: Any) -> Any:
        name = function_name if qualifier in (None, "") else f"{function_name}:{qualifier}"
        for service in PATCH.registrations():
            function = service.lookup(name)
            if function is not None:
                return service.invoke(function, body, headers, response)
        return original(backend, function_name, qualifier, body, headers, response)

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


def routing(service: Any) -> AbstractContextManager[None]:
    """Routes Invoke of the service's functions (`lookup(name)`, `invoke(...)`) for the block."""
    return PATCH.registered(service)
