"""A return policy's answer (oms_return_policy), apart from the returns' other models
(core.return_models): the hook specs resolve it when the hook is called, and the built-in return
policy plugin makes it, so both are loaded by every new API container, which never needs a Return."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from core.models import VisibleText
from core.money import Money

# A request field's path as the contract writes it: names and indexes, "lines[0].reason_code".
FIELD_PATH = r"^[a-z][a-z0-9_]{0,63}(\[[0-9]{1,4}\])?(\.[a-z][a-z0-9_]{0,63}(\[[0-9]{1,4}\])?){0,3}$"


class ReturnPolicyDecision(BaseModel):
    """A return policy's answer (oms_return_policy), checked and kept on the Return."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    allowed: bool = True
    # When not allowed: the 422's error code and message.
    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = "return_not_allowed"
    message: Annotated[str, StringConstraints(max_length=500), VisibleText] = ""
    # When not allowed: the request field the policy judged, as the 422's details name it (API.md:
    # "lines[0].quantity"): "lines" when it refuses the return as a whole.
    field: Annotated[str, StringConstraints(pattern=FIELD_PATH)] = "lines"
    needs_approval: bool = False
    fee: Money | None = None  # a restocking fee kept back from the refund; None: no fee
    refund_shipping: bool = False
    # Shipping back with the refund of the return that brings the order's last unit back, when every
    # unit came back on returns decided so: known only as each arrives (one asked for may never).
    refund_shipping_with_whole_order: bool = False
