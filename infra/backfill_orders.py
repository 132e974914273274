"""Give orders stored before the sparse by_status_key index its attributes (a one-off upgrade).

    python -m infra.backfill_orders --table <OrdersTableName>

Run once after the first of the two upgrade deploys (README, "Upgrading a stack deployed before
by_status_key"); a second run writes nothing.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="the stack's OrdersTableName output")
    args = parser.parse_args()
    from functions.adapters.aws_clients import aws_client
    from functions.adapters.dynamodb import backfill_index_attributes

    written, already = backfill_index_attributes(aws_client("dynamodb"), args.table)
    print(f"{written} orders written, {already} already right")


if __name__ == "__main__":
    main()
