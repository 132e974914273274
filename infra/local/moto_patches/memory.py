"""The `memory` patch: a long-running stack's memory is the data it stores, not its history.

moto's `BaseModel.__new__` lists each instance for the moto-api dashboard: every SQS message, every
DynamoDB item *and every copy moto makes of one* (on reads, updates and conditional checks), every
stream record, never removed. Importing 1,808 orders left 3,844 messages and ~11,700 item copies
alive after the queue was empty, and every full garbage collection walked them; a 100,000-line
import kept ~44 KiB per stored order, ~13 KiB with this patch. The dashboard now lists S3 objects
only (moto's reset closes their temporary files through the list); the data is still served.
"""

from __future__ import annotations

from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements


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
    applied_by=AppliedBy.STACK,
    changes="moto's BaseModel stops listing every instance it ever made (for its dashboard; nothing "
    "removed them: a 100,000-line import grew the process to 2.8 GiB), except S3's keys and uploads, "
    "which moto's reset closes through that list.",
    expects={"moto.core.common_models.BaseModel.__new__": "(cls, *args, **kwargs)"},
    replacements=_replacements,
)
