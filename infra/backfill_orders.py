"""Give orders stored before the sparse by_status_key index its attributes, orders exchanged
before an exchange's credit was held on its original those holds, and orders cancelled before a
void the gateway could not make was marked owed that mark (a one-off upgrade).

    python -m infra.backfill_orders --table <OrdersTableName> --catalog-table <CatalogTableName>

Run once after the first of the two upgrade deploys (README, "Upgrading a stack deployed before
by_status_key"), once after deploying a version that holds exchange credits (README, "Exchange
credits held on the original"), and once after deploying a version that marks a cancelled order's
own void owed (README, "Cancelled orders whose void failed before it was owed"), and once after
deploying a version whose reconciler refunds what returns kept back (README, "What returns kept
back before the reconciler refunded it": the index attributes' step gives those orders their keys),
and once after deploying a version whose hold expiry reads holds by when they began and never
expires a park (README, "Holds by when they began, and parks"), and once after deploying a version
that marks a parcel whose report's capture the gateway refused (README, "Parcels whose delivery was
not recorded before it marked them"), and once after deploying a version with a store's pickup list
(README, "Pickup orders placed before the by_pickup_location index": the index attributes' step
gives each pickup order still open at its store its entry), and, if you like, once after deploying a version whose
pending and authorized orders share the status index's partition (README, "Authorized orders
stored in a partition of their own": their next write moves them anyway); a second run writes
nothing. With `--inventory-table <the Inventory table's name>`, also once after deploying a
version that queues a backordered order for every sku it orders (README, "Backordered orders
queued for the skus they hold"). With
`--returns-table <the ReturnsTable's name>`, also once after deploying a version whose reconciler
finds received returns through the sparse by_receipt index (README, "Returns received before the
by_receipt index"), and once after deploying a version whose gateway answers record the returns
owing a show of what went back (README, "Returns left showing less than went back for them").
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="the stack's OrdersTableName output")
    parser.add_argument(
        "--catalog-table",
        help="the stack's Catalog table (its physical name): the pages of an order's history too long for its item",
    )
    parser.add_argument(
        "--returns-table", help="the stack's ReturnsTable (its physical name): received returns' receipt keys"
    )
    parser.add_argument(
        "--inventory-table",
        help="the stack's Inventory table (its physical name): queue entries for the skus backorders hold",
    )
    args = parser.parse_args()
    from functions.adapters.aws_clients import aws_client
    from functions.adapters.dynamodb import (
        backfill_credit_holds,
        backfill_holding_entries,
        backfill_index_attributes,
        backfill_own_voids_owed,
        backfill_parks,
        backfill_receipt_keys,
        backfill_refused_reports,
        backfill_returns_to_show,
    )
    from infra.tables_named import tables_named

    client = aws_client("dynamodb")
    tables = {
        "--table": args.table,
        "--catalog-table": args.catalog_table,
        "--returns-table": args.returns_table,
        "--inventory-table": args.inventory_table,
    }
    with tables_named(parser, tables, "name the stack's tables"):
        # Parks first: the index step gives every order on hold the hold expiry's keys, and a park
        # still unmarked then would be the expiry's until this step took it out again.
        written, already = backfill_parks(client, args.table, history_table=args.catalog_table)
        print(f"{written} parked orders marked as parks, {already} already right")
        # Before the index step too: a parcel marked refused leaves the kept-back pass's partition.
        written, already = backfill_refused_reports(client, args.table, history_table=args.catalog_table)
        print(f"{written} orders' refused delivery reports marked, {already} already right")
        written, already = backfill_index_attributes(client, args.table)
        print(f"{written} orders written, {already} already right")
        written, already = backfill_credit_holds(client, args.table, history_table=args.catalog_table)
        print(f"{written} orders given their exchanges' credit holds, {already} already right")
        written, already = backfill_own_voids_owed(client, args.table, history_table=args.catalog_table)
        print(f"{written} cancelled orders marked as owing their own void, {already} already right")
        if args.inventory_table:
            written, already = backfill_holding_entries(
                client, args.table, args.inventory_table, history_table=args.catalog_table
            )
            print(
                f"{written} queue entries written for the skus backordered orders hold, {already} orders already right"
            )
        if args.returns_table:
            written, already = backfill_receipt_keys(client, args.returns_table)
            print(f"{written} received returns given their receipt key, {already} already right")
            written, already = backfill_returns_to_show(
                client, args.table, args.returns_table, history_table=args.catalog_table
            )
            print(f"{written} orders marked as owing their returns a show of what went back, {already} already right")


if __name__ == "__main__":
    main()
