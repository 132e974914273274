"""Bulk imports: their progress, totals and per-line errors (files land in the imports bucket)."""

from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.errors import InvalidCursor, NotFound
from core.import_service import ImportReport, ImportSummary
from core.models import Shown
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.schemas import errors, ok

router = Router()

ImportIdPath = existing("import", r"^imp_[a-z2-7]{24}$", "Import id")


class ImportPage(Shown):
    items: list[ImportSummary]
    next_cursor: str | None = None


# An import spans channels (one file may hold several), and its errors name external ids: a key
# bound to one channel sees no imports at all, exactly as if there were none.


@router.get(
    "/imports",
    summary="List imports, newest first (without their errors)",
    responses={**ok(200, ImportPage, "A page of imports"), **errors(403)},
)
@requires(Scope.ORDERS_READ)
def list_imports(
    limit: Limit = 25,
    cursor: Cursor = None,
) -> ImportPage:
    if caller(router).channel is not None:
        if cursor is not None:  # never one this list returned to it: its pages are always empty
            raise InvalidCursor()
        return ImportPage(items=[], next_cursor=None)
    items, next_cursor = container().import_queries.list(limit, cursor)
    return ImportPage(items=items, next_cursor=next_cursor)


@router.get(
    "/imports/<import_id>",
    summary="An import: status, totals and per-line errors",
    responses={**ok(200, ImportReport, "The import"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def get_import(import_id: ImportIdPath) -> ImportReport:
    if caller(router).channel is not None:
        raise NotFound(f"no import {import_id}")
    return container().import_queries.get(import_id)
