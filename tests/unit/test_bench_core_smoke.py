"""The core benchmark runs end to end on small sizes and reports what it promises.

The figures themselves are not checked here (they depend on the machine); the report's
keys are, and that every contender agreed on the number of trades (bench_core exits
with an error otherwise).
"""

from __future__ import annotations

import json

from loadtests import bench_core, workloads

REPORT_KEYS = {
    "price_only_ops_per_s", "freight_ops_per_s", "peers", "peers_unavailable",
    "ratio_vs_best_peer", "ratio_vs_minimal_book", "bytes_per_resting_order",
    "python", "commit", "machine", "date", "command", "targets",
}  # fmt: skip


def test_quick_run_writes_every_key_and_trade_counts_agree(tmp_path, capsys):
    out = tmp_path / "bench_core.json"
    bench_core.main(["--quick", "--price-only-n", "1000", "--freight-n", "1500",
                     "--resting-n", "1500", "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= report.keys()
    po = report["price_only"]
    assert po["trades"] > 0
    assert po["minimal_book"]["trades"] == po["trades"]
    for name, peer in po["peers"].items():
        assert peer["trades"] == po["trades"], name
        assert report["peers"][name] > 0
    assert report["price_only_ops_per_s"] > 0 and report["freight_ops_per_s"] > 0
    assert report["bytes_per_resting_order"] > 0
    # The target ratios come from the race, whose peers are the fastest sequential ones
    # (none where the peer libraries are not installed: `make test` does not need them).
    race = report["native_race"]
    assert set(race["ops_per_s"]) >= {"native", "minimal_book"}
    assert report["native_ratio_vs_minimal_book"] == (
        race["ops_per_s"]["native"] / race["ops_per_s"]["minimal_book"]
    )
    if report["peers"]:
        assert race["best_peer"] in report["peers"] and race["best_peer"] in race["ops_per_s"]
        assert report["native_ratio_vs_best_peer"] == (
            race["ops_per_s"]["native"] / race["ops_per_s"][race["best_peer"]]
        )
    else:
        assert race["best_peer"] is None and report["native_ratio_vs_best_peer"] is None
    assert "price-only" in capsys.readouterr().out


def test_race_runs_every_contender_each_round_in_rotated_order():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    best = bench_core.race(contenders, 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(best) == {"a", "b", "c"} and all(0 <= s < 1 for s in best.values())


def test_minimal_book_trades_best_price_then_earliest():
    book = bench_core.MinimalBook()
    book.sell(1, 101)
    book.sell(2, 100)
    book.sell(3, 100)
    book.buy(4, 99)  # rests: nothing at or under 99
    book.buy(5, 100)  # takes order 2, the earliest at the best price
    assert book.trades == 1
    assert list(book.asks[100]) == [3]
    book.sell(6, 99)  # takes the resting buy at 99
    assert book.trades == 2 and not book.bids


def test_workloads_are_deterministic_and_shaped_as_commands():
    assert workloads.freight_mix(500, 7) == workloads.freight_mix(500, 7)
    assert workloads.freight_mix(500, 7) != workloads.freight_mix(500, 8)
    commands = workloads.freight_mix(2000, 7)
    kinds = {"load.post", "offer.post", "bid.place", "load.cancel", "offer.cancel",
             "bid.withdraw", "clock.tick"}  # fmt: skip
    ts = 0
    for c in commands:
        assert set(c) == {"id", "type", "v", "ts", "key", "source", "cause", "data"}
        assert c["type"] in kinds and c["source"] == "gateway" and c["v"] == 1
        assert c["ts"] > ts
        ts = c["ts"]
    orders = workloads.price_only_orders(1000, 3)
    commands = workloads.price_only(1000, 3)
    assert sum(buy for buy, _, _ in orders) == 500
    for (buy, _, price), c in zip(orders, commands, strict=True):
        assert c["type"] == ("load.post" if buy else "offer.post")
        assert price == (c["data"]["limit_fen"] if buy else c["data"]["ask_fen"])
