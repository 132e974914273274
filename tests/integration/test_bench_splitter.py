"""`make bench`'s splitter measurement (bench/imports.py split_only) runs against the splitter as
it is: its stand-in ledger and queue must keep up with the ports they implement."""

from __future__ import annotations

import json

from bench.imports import split_only, write_orders_csv


def test_the_splitter_bench_streams_a_small_file_through_the_real_reader_and_splitter(tmp_path, capsys):
    path = tmp_path / "orders.csv"
    write_orders_csv(path, 20)

    split_only(str(path))

    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["orders"], result["queued"], result["rejected"]) == (10, 10, 0)  # two lines an order
