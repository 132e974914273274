"""The If-Match header that names the version a change was made from (an order's, the sourcing rules')."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.openapi.params import Header

# The version as the body showed it (`7`), or as an entity tag (RFC 9110 8.8.3): `"7"`, weak `W/"7"`.
# A quote opened and not closed (`"7`, `7"`) or a weak tag without quotes (`W/7`) is no tag: 400.
VERSION_TAG = r'^(?:[0-9]{1,10}|(?:W/)?"[0-9]{1,10}")$'


def if_match_header(description: str) -> Any:
    """An If-Match header parameter in one of VERSION_TAG's forms."""
    return Header(alias="if-match", pattern=VERSION_TAG, description=description)


def version_in(tag: str) -> int:
    """The version a tag that matched VERSION_TAG names: 7 for `7`, `"7"` and `W/"7"`."""
    return int(tag.removeprefix("W/").strip('"'))


def seen_version(tag: str | None) -> int | None:
    """The version an optional If-Match names (version_in), or None when none was sent."""
    return None if tag is None else version_in(tag)
