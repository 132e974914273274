"""What the operator's tools (infra.admin_key, infra.backfill_orders, infra.backfill_gateway_keys)
say when a table they were given is not where they look: its name and the region, not a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import ClientError
from botocore.session import Session


@contextmanager
def tables_named(parser: argparse.ArgumentParser, tables: dict[str, str | None], advice: str) -> Iterator[None]:
    """Exit 1 naming `tables` (option: name), the region and `advice` (what to name instead) when
    DynamoDB answers that a table the block used is not there: a shell in another region than the
    stack's (`sam deploy --guided` keeps the stack's in samconfig.toml, for SAM alone), or a
    logical id typed for a table's name."""
    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        region = Session().get_config_variable("region")
        named = {option: name for option, name in tables.items() if name}
        if len(named) == 1:
            (name,) = named.values()
            where = f"no table {name} in {region}"
        else:
            where = f"a table named is not in {region} ({', '.join(f'{o} {n}' for o, n in named.items())})"
        parser.exit(
            1, f"{parser.prog}: error: {where}: {advice}, in the stack's region (AWS_DEFAULT_REGION or the profile's)\n"
        )
