"""The `action_names` patch: for every request it serves, moto's `BaseResponse.call_action` lists
every function of the response class (`method_names_from_class`: `inspect.getmembers` over the
class's few hundred attributes, reading and testing each) only to ask whether the action's name is
among them: 0.12 ms of CPU per DynamoDB request (0.08 ms per SQS one) where the lookup below takes
0.003 ms, and a GetItem takes 1.3-1.5 ms in all (cProfile, which overstates it, put it at 1.7 % of
tests/integration/test_dynamodb_adapters.py).

The patch hands `call_action` an object that answers that one question as the list would: the
name is an attribute found in the `__dict__` of a class of the response class's MRO (what `dir()`
lists for a class) and reading it from the class gives a function. Nothing is kept, so a method a
patch adds or removes is seen at once. tests/integration/test_moto_patches.py checks that the
answers are the list's for every attribute of moto's response classes, and that `call_action` is
still the only caller and only asks `in`.
"""

from __future__ import annotations

import inspect

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements


class FunctionNames:
    """`name in FunctionNames(owner)` is `name in method_names_from_class(owner)`."""

    __slots__ = ("owner",)

    def __init__(self, owner: type) -> None:
        self.owner = owner

    def __contains__(self, name: object) -> bool:
        owner = self.owner
        if type(name) is not str or not any(name in vars(klass) for klass in owner.__mro__):
            return False
        try:
            value = getattr(owner, name)
        except AttributeError:  # getmembers leaves out what cannot be read
            return False
        return inspect.isfunction(value)


def _replacements() -> Replacements:
    from moto.core import responses

    return {(responses, "method_names_from_class"): FunctionNames}


PATCH = MotoPatch(
    "action_names",
    applied_by=AppliedBy.STACK | AppliedBy.MOCK_AWS,
    changes="moto's responses check that a request's action is a method of the response class by looking "
    "the name up, instead of listing every function of the class (inspect.getmembers over a few hundred "
    "attributes) for every request it serves.",
    expects={"moto.core.responses.method_names_from_class": "(clazz)"},
    replacements=_replacements,
)
