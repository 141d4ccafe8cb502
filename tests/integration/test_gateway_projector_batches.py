"""The projector's set-based batch writes against the real PostgreSQL: a batch with
duplicates, bids placed and then named in the same batch, a refused cancel, events
parked for a load that comes later and unparked oldest first, gives the read models
the same rows as the same events projected one per transaction, with a number of
statements that does not grow with the batch."""

from __future__ import annotations

import itertools
import time

import orjson
import pytest

from services.common import db
from services.common.envelope import make
from services.gateway.projection_service import Projector
from services.gateway.registry import create as create_participant
from tests.conftest import schema_pool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LANE = "420100>420600>van-9.6"
T0 = 1_767_225_600_000
SHIPPER = "S1"  # the events' shipper (no row needs it)
_IDS = itertools.count()


def _load_row(load_id: str, shipper: str) -> tuple:
    data = {"load_id": load_id, "weight_kg": 8000, "volume_dm3": 20000}
    return (load_id, shipper, f"cmd-{load_id}", orjson.dumps(data).decode(), f"cancel-{load_id}")


async def _insert_load(conn, row: tuple) -> None:
    await conn.execute(
        "INSERT INTO load (load_id, shipper_id, status, origin, destination, vehicle_class,"
        " command_id, data, requested_ms, cancel_command_id) VALUES ($1, $2, 'requested',"
        " '420100', '420600', 'van-9.6', $3, $4::jsonb, 0, $5)",
        *row,
    )


def _ev(type_: str, data: dict, ts: int, cause: str | None = None) -> dict:
    return make(type_, data, LANE, "matching", ts, cause=cause, id=f"e{next(_IDS):04d}")


def _bid(n: int, load_id: str, ts: int) -> dict:
    return _ev("bid.accepted", {"bid_id": f"b{n}", "load_id": load_id, "carrier_id": "c1",
                                "price_fen": 300_000 - n, "best_fen": 300_000 - n}, ts)  # fmt: skip


def _batches(shipper: str = SHIPPER) -> tuple[list[dict], list[dict]]:
    rested_l1 = _ev("load.rested", {"load_id": "L1"}, T0 + 1)
    funded_l3 = _ev("load.funded", {"load_id": "L3", "shipper_id": shipper, "hold_fen": 1,
                                    "transfer_id": "t"}, T0 + 9)  # fmt: skip
    first = [
        rested_l1,
        *(_bid(n, "L1", T0 + 2) for n in range(30)),
        rested_l1,  # the same id twice in one batch
        _ev("order.cancelled", {"ref_id": "b3", "reason": "withdrawn"}, T0 + 3),
        # A refused cancel of L1: logged through the cancel's command id, no status.
        _ev(
            "order.rejected", {"ref_id": "L1", "reason": "not_found"}, T0 + 4, cause="cancel-L1"
        ),  # fmt: skip
        funded_l3,  # L3 is not there yet: parked ...
        _bid(100, "L3", T0 + 5),  # ... and so is this, older: unparked first
        _ev("load.rested", {"load_id": "L2"}, T0 + 6),
        _bid(200, "L2", T0 + 7),
        _ev(
            "deal.made",
            {
                "deal_id": "D2",
                "load_id": "L2",
                "shipper_id": shipper,
                "carrier_id": "c1",
                "offer_id": None,
                "bid_id": "b200",
                "price_fen": 299_800,
            },
            T0 + 8,
        ),  # fmt: skip
        _ev(
            "funds.deposited",
            {"participant_id": shipper, "amount_fen": 1, "bank_ref": "r", "transfer_id": "t2"},
            T0 + 8,
        ),  # fmt: skip
    ]
    second = [
        funded_l3,  # projected before: a duplicate
        _ev("load.rested", {"load_id": "L3"}, T0 + 20),
        _ev("order.cancelled", {"ref_id": "b100", "reason": "withdrawn"}, T0 + 21),
    ]
    return first, second


_DUMP = {
    "load": "SELECT load_id, status, reject_reason, status_ms, last_seq FROM load ORDER BY 1",
    "load_event": "SELECT load_id, seq, event_id, type, ts_ms, envelope FROM load_event"
    " ORDER BY 1, 2",
    "bid": "SELECT bid_id, load_id, carrier_id, price_fen, placed_ms, status FROM bid ORDER BY 1",
    "deal": "SELECT deal_id, load_id, shipper_id, carrier_id, bid_id, price_fen, made_ms"
    " FROM deal ORDER BY 1",
    "projection_parked": "SELECT event_id, kind, subject FROM projection_parked ORDER BY 1",
    "projected_event": "SELECT event_id FROM projected_event ORDER BY 1",
}


async def _run(database_url: str, batches, batched: bool) -> tuple[dict, list[int]]:
    """Projects the two batches (or each of their events alone) into a new schema;
    the rows of every read model, and the statements each apply() ran."""
    statements: list[int] = []
    async with schema_pool(database_url, max_size=2) as (_, pool):
        await db.migrate(pool, "gateway")
        async with pool.acquire() as conn:
            p, _ = await create_participant(conn, "shipper", "s", 0)
            shipper = p["participant_id"]
            for load_id in ("L1", "L2"):
                await _insert_load(conn, _load_row(load_id, shipper))
        first, second = batches
        projector = Projector(pool)
        await projector.start()

        async def project(batch: list[dict]) -> None:
            for part in [batch] if batched else [[e] for e in batch]:
                await projector.apply(part)
                statements.append(projector.statements)

        await project(first)
        async with pool.acquire() as conn:
            await _insert_load(conn, _load_row("L3", shipper))  # the gateway's row comes
        await project(second)
        dump = {}
        for name, sql in _DUMP.items():
            dump[name] = [
                tuple(shipper if v == shipper else v for v in r) for r in await pool.fetch(sql)
            ]
        return dump, statements


async def test_a_batch_writes_the_rows_of_its_events_projected_one_at_a_time(database_url):
    batches = _batches()
    batched, statements = await _run(database_url, batches, batched=True)
    one_by_one, _ = await _run(database_url, batches, batched=False)
    # Which load, which number, which event: the log as an SSE reader sees it.
    assert [r[:3] for r in batched["load_event"]] == [r[:3] for r in one_by_one["load_event"]]
    # Envelopes carry their own ids and times: the same events gave the same text.
    assert batched == one_by_one

    loads = {r[0]: r for r in batched["load"]}
    assert loads["L1"][1] == "open" and loads["L2"][1] == "dealt" and loads["L3"][1] == "open"
    types = {}
    for load_id, seq, _, type_, _, _ in batched["load_event"]:
        types.setdefault(load_id, []).append((seq, type_))
    assert types["L1"] == [(1, "load.rested"), *((n, "bid.accepted") for n in range(2, 32)),
                           (32, "order.cancelled"), (33, "order.rejected")]  # fmt: skip
    assert types["L2"] == [(1, "load.rested"), (2, "bid.accepted"), (3, "deal.made")]
    # Parked in the first batch, applied before the second's own events, oldest first.
    assert types["L3"] == [(1, "bid.accepted"), (2, "load.funded"), (3, "load.rested"),
                           (4, "order.cancelled")]  # fmt: skip
    bids = {r[0]: r[-1] for r in batched["bid"]}
    assert bids["b3"] == "withdrawn" and bids["b200"] == "won" and bids["b100"] == "withdrawn"
    assert sum(s == "live" for s in bids.values()) == 29
    assert batched["projection_parked"] == []
    assert len(batched["projected_event"]) == 41  # every id once
    # 42 records, 36 events applied with a log entry each, 30 of them bids: a dozen
    # statements (one per event was 80), most of them status changes.
    assert statements[0] <= 12, statements


async def test_parked_events_wait_across_batches_and_count_down(database_url):
    async with schema_pool(database_url, max_size=2) as (_, pool):
        await db.migrate(pool, "gateway")
        async with pool.acquire() as conn:
            p, _ = await create_participant(conn, "shipper", "s", 0)
        shipper = p["participant_id"]
        projector = Projector(pool)
        await projector.start()
        now = time.time_ns() // 1_000_000
        await projector.apply([_bid(n, f"X{n % 3}", now + n) for n in range(9)])
        assert projector.parked == 9 and len(projector.subjects) == 3
        await projector.apply([_ev("load.rested", {"load_id": "L9"}, now)])  # not X*
        assert projector.parked == 10
        async with pool.acquire() as conn:
            await _insert_load(conn, _load_row("X1", shipper))
        assert await projector.apply([]) == {"X1"}  # the parked ones of X1 alone
        assert projector.parked == 7 and ("load", "X1") not in projector.subjects
        again = Projector(pool)  # a restart counts the table
        await again.start()
        assert again.subjects == projector.subjects and again.parked == 7
        # The counts by subject alone (what apply(unpark=False) parks behind) agree too.
        assert again._waiting == projector._waiting == {"X0": 3, "X2": 3, "L9": 1}


async def test_without_the_unpark_check_an_event_waits_behind_its_parked_subject(database_url):
    """apply(unpark=False) (the service checks parked events every parked_retry_s, not
    every batch): once X1's row exists, a newer bid on X1 does not overtake the parked
    ones; it is parked behind them, and the next check applies all of them in order."""
    async with schema_pool(database_url, max_size=2) as (_, pool):
        await db.migrate(pool, "gateway")
        async with pool.acquire() as conn:
            p, _ = await create_participant(conn, "shipper", "s", 0)
            await _insert_load(conn, _load_row("X2", p["participant_id"]))
        projector = Projector(pool)
        await projector.start()
        now = time.time_ns() // 1_000_000
        await projector.apply([_bid(n, "X1", now + n) for n in range(3)])
        assert projector.parked == 3
        async with pool.acquire() as conn:
            await _insert_load(conn, _load_row("X1", p["participant_id"]))

        # X1 exists now, but without the check: the newer bid parks behind the three;
        # a bid on X2, which has nothing parked, applies.
        assert await projector.apply(
            [_bid(3, "X1", now + 3), _bid(4, "X2", now + 4)], unpark=False
        ) == {"X2"}
        assert projector.parked == 4
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM bid WHERE load_id = 'X1'") == 0

        assert await projector.apply([]) == {"X1"}
        assert projector.parked == 0
        async with pool.acquire() as conn:
            placed = await conn.fetch(
                "SELECT bid_id FROM bid WHERE load_id = 'X1' ORDER BY placed_ms, bid_id"
            )
            events = await conn.fetch(
                "SELECT event_id FROM load_event WHERE load_id = 'X1' ORDER BY seq"
            )
        assert [r["bid_id"] for r in placed] == ["b0", "b1", "b2", "b3"]
        # The load's log in log order: the parked three, then the one parked behind.
        assert len(events) == 4 and [r["event_id"] for r in events] == sorted(
            r["event_id"] for r in events
        )
