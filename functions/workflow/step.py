"""What every order workflow task shares: its input, and the service it calls."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class StepInput(BaseModel):
    """The Parameters the state machine passes (see infra/order_workflow.asl.json)."""

    model_config = ConfigDict(extra="forbid")

    order_id: Annotated[str, Field(pattern=r"^ord_[a-z2-7]{24}$")]
    attempt: Annotated[int, Field(ge=0)] = 0
    error: str = ""
    cause: str = ""
