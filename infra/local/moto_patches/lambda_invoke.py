"""The `lambda_invoke` patch: LambdaBackend.invoke asks each registered LambdaService
(infra/local/lambdas.py) first; a name none knows falls through to moto (ResourceNotFoundException)."""

from __future__ import annotations

from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements


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
    applied_by=AppliedBy.STACK_REGISTRY,
    changes="Lambda Invoke (from Step Functions' Lambda tasks and any boto3 client) runs the template's "
    "function in process; moto would need a zip and Docker.",
    expects={
        "moto.awslambda.models.LambdaBackend.invoke": (
            "(self, function_name, qualifier, body, headers, response_headers)"
        )
    },
    replacements=_replacements,
)
