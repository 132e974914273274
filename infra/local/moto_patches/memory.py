"""Stops moto from keeping every model object it ever created.

A long-running local stack's memory is then the data it stores, not its history.

moto 5.2's `BaseModel.__new__` appends each new instance to its class's `instances_tracked`
list, for the moto-api dashboard (`/moto-api/data.json`), and nothing ever removes them: every
SQS message ever sent, every DynamoDB item ever written *and every copy moto makes of one* (it
deep-copies items on reads, updates and conditional checks), every stream record. Measured on the
local stack importing 1,808 orders: 3,844 SQS messages and ~11,700 DynamoDB item copies still
alive after the queue was empty; a 100,000-line import grew the process to 2.8 GiB, ~44 KiB per
stored order, against ~13 KiB per order once this is installed (the order, its stream record and
its import marker). The live objects also make every full garbage collection walk them all.

Only the classes moto reads that list for keep being tracked: S3's keys and multipart uploads,
whose temporary files moto's reset closes through it. The dashboard then lists S3 objects only;
the stack's data is still there through every API.
"""

from __future__ import annotations

from typing import Any

from infra.local.moto_patches import MotoPatch, Replacements


def _replacements() -> Replacements:
    from moto.core.common_models import BaseModel
    from moto.s3.models import FakeKey, FakeMultipart

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        instance = super(BaseModel, cls).__new__(cls)  # what BaseModel.__new__ does, minus the list
        if issubclass(cls, (FakeKey, FakeMultipart)):
            cls.instances_tracked.append(instance)  # type: ignore[attr-defined]
        return instance

    return {(BaseModel, "__new__"): staticmethod(__new__)}


PATCH = MotoPatch(
    "memory",
    changes="moto's BaseModel stops listing every instance it ever made (for its dashboard; nothing "
    "removed them: a 100,000-line import grew the process to 2.8 GiB), except S3's keys and uploads, "
    "which moto's reset closes through that list.",
    expects={"moto.core.common_models.BaseModel.__new__": "(cls, *args, **kwargs)"},
    replacements=_replacements,
)
