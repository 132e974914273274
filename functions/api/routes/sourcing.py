"""Sourcing rules (read, replace, their history) and what-if sourcing."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.models import PlaceOrder
from core.sourcing import SimulateSourcing, Simulation
from core.sourcing_rules import NewSourcingRules, SourcingRules, SourcingRulesHistory
from functions.api.access import ANY_KEY, caller, requires
from functions.api.dependencies import container
from functions.api.errors import ApiError
from functions.api.queries import Cursor, Limit
from functions.api.routes.plugins import plugins_loaded
from functions.api.schemas import errors, ok
from functions.api.versions import if_match_header, seen_version

router = Router()


@router.get(
    "/sourcing/rules",
    summary="The sourcing rules in force, with their version",
    responses={**ok(200, SourcingRules, "The current rules"), **errors(403)},
)
@requires(ANY_KEY)
def get_sourcing_rules() -> SourcingRules:
    return container().sourcing_rules_service.current()


# Optional (the contract names none): with it a change made from a version replaced since is 409, so
# a PUT, which replaces the rules whole, never silently undoes a change its author has not seen.
RulesIfMatch = Annotated[
    str, if_match_header("The rules' `version` you read: a newer one in force is 409 `version_conflict`.")
]


@router.put(
    "/sourcing/rules",
    summary="Replace the sourcing rules (a new version; rules left out take their defaults)",
    description="Rules that are the ones in force already are answered as they are, with no new version, "
    "whatever `If-Match` says: a PUT sent again is idempotent.",
    responses={**ok(200, SourcingRules, "The new version"), **errors(400, 403, 409, 413)},
)
@requires(Scope.ADMIN)
def put_sourcing_rules(rules: NewSourcingRules, if_match: RulesIfMatch = None) -> SourcingRules:
    expected = seen_version(if_match)
    return container().sourcing_rules_service.replace(rules, by=caller(router).key_id, expected_version=expected)


@router.get(
    "/sourcing/rules/history",
    summary="Every version of the sourcing rules, newest first",
    responses={**ok(200, SourcingRulesHistory, "A page of versions"), **errors(403)},
)
@requires(ANY_KEY)
def get_sourcing_rules_history(
    limit: Limit = 25,
    cursor: Cursor = None,
) -> SourcingRulesHistory:
    return container().sourcing_rules_service.history(limit, cursor)


@router.post(
    "/sourcing/simulate",
    summary="What sourcing would plan for orders under the current or given rules (reserves nothing)",
    description="At most 500 order lines in all (422 naming `orders`); a key bound to a channel simulates its "
    "channel's orders and bodies only. A body POST /orders would refuse for a sku is refused as it is: 422 "
    "`unknown_sku` for a sku the catalog lacks, 422 `no_price` for one no pricing plugin prices in the body's "
    "`currency`, each such line named (`orders[1].lines[0].sku`).",
    responses={**ok(200, Simulation, "A plan per order, and their summary"), **errors(400, 403, 413, 502, 503)},
    middlewares=[plugins_loaded],
)
@requires(Scope.ORDERS_READ)
def simulate_sourcing(request: SimulateSourcing) -> Simulation:
    channel = caller(router).channel
    if channel is not None:
        # As POST /orders refuses it such a body: a sourcing plugin may source channels apart.
        others = [
            {"field": f"orders[{index}].channel", "message": f"this API key simulates channel {channel} only"}
            for index, each in enumerate(request.orders)
            if isinstance(each, PlaceOrder) and each.channel != channel
        ]
        if others:
            raise ApiError(403, "forbidden", f"this API key simulates orders of channel {channel} only", others)
    return container().simulator.simulate(request, channel)
