"""The `transactions` patch (its `changes` say what it does): moto's deep copy of a table holds every
item and stream record it ever had, under MOTO_LOCK. The aggregates' transactions on the catalog
table (two markers per order) grew from milliseconds to seconds and the workflow's Lambda tasks
waiting on the lock timed out (TOOL-FACTS: ~550 transactions/s at 200 items, ~8/s at 6,000). The
items a transaction names (at most 100) and its tables' streams are all it can have changed.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements


def _replacements() -> Replacements:
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    original = DynamoDBBackend.__dict__["transact_write_items"]

    def deepcopy(value: Any, memo: Any = None) -> Any:
        # The module's only deep copy of a whole table is the transaction's backup: not made.
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved, streams = [], {}
        for entry in transact_items:
            op = next(iter(entry.values()), {}) if isinstance(entry, dict) else {}
            table = self.tables.get(op.get("TableName")) if isinstance(op, dict) else None
            attributes = op.get("Item") if "Item" in op else op.get("Key")
            names = [table.hash_key_attr, table.range_key_attr] if table is not None else []
            if (
                table is None
                or not isinstance(attributes, dict)
                or not all(name is None or name in attributes for name in names)
            ):
                continue  # moto refuses it before it changes anything
            key = [DynamoType(attributes[name]) if name else None for name in names]
            saved.append((table, *key, copy.deepcopy(table.get_item(*key))))
            if table.stream_shard is not None:
                streams[table.stream_shard] = len(table.stream_shard.items)
        try:
            original(self, transact_items)
        except Exception:
            for table, hash_key, range_key, item in reversed(saved):
                stored = table.items[hash_key] if range_key is not None else table.items
                place = range_key if range_key is not None else hash_key
                if item is None:
                    stored.pop(place, None)
                else:
                    stored[place] = item
            for shard, length in streams.items():
                del shard.items[length:]
            raise

    return {
        (models, "copy"): SimpleNamespace(deepcopy=deepcopy),
        (DynamoDBBackend, "transact_write_items"): transact_write_items,
    }


PATCH = MotoPatch(
    "transactions",
    applied_by=AppliedBy.STACK | AppliedBy.MOCK_AWS,
    changes="a cancelled TransactWriteItems puts back the items it named and drops the stream records it "
    "added, instead of moto deep-copying every table it names (every item and stream record, under "
    "the lock) before it starts.",
    expects={
        "moto.dynamodb.models.copy": "module copy",
        "moto.dynamodb.models.DynamoDBBackend.transact_write_items": "(self, transact_items)",
    },
    replacements=_replacements,
)
