"""The settler against the real broker and PostgreSQL: holds placed as the gate places them,
market and shipments events produced into the test's topics, then the ledger's balances,
the load_hold rows, the settlement events relayed to `settlement`, and `wlex ledger check`
with the settler's invariants after every scenario."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from services.common import db, schemas
from services.common.envelope import decode, encode, make
from services.common.kafka import make_consumer, make_producer
from services.common.observability import HealthChecks
from services.common.runner import ServiceContext
from services.common.topics import create_topics
from services.settlement import check
from services.settlement import ledger as L
from services.settlement import postings as P
from services.settlement.cli import app as ledger_cli
from services.settlement.config import SettlementSettings
from services.settlement.metrics import settlement_metrics
from services.settlement.outbox import SettlementOutboxRelay
from services.settlement.settler_service import SettlerService
from services.settlement.store import LedgerStore, apply_in

from .kafka_helpers import read_committed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 2
TS = 1_767_225_600_000
LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
LANE_KEY = "420100>420600>van-9.6"
DEPOSIT_FEN = 1_000_000
WAIT_S = 30.0


# -- plumbing ---------------------------------------------------------------------------------


@pytest.fixture
async def pool(database_url, pg_schema):
    p = await db.create_pool(database_url, schema=pg_schema, max_size=6)
    await db.migrate(p, "settlement")
    store = LedgerStore(p)
    await store.open_accounts(P.platform_accounts() + P.participant_accounts("S1")
                              + P.participant_accounts("C1")
                              + P.participant_accounts("I1", insurer=True))  # fmt: skip
    assert await store.apply(P.deposit("bank-1", "S1", DEPOSIT_FEN, "bank-1")) == [L.OK]
    yield p
    await db.close_pool(p)


@pytest.fixture
async def conf(kafka_bootstrap, topic_prefix, pg_schema) -> SettlementSettings:
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    return SettlementSettings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
                              db_schema=pg_schema, fee_bps=200, fee_minimum_fen=500)  # fmt: skip


@contextlib.asynccontextmanager
async def running(conf: SettlementSettings, pool) -> AsyncIterator[SettlerService]:
    """The settler and its outbox relay, as the service's __main__ runs them."""
    ctx = ServiceContext(conf, HealthChecks())
    metrics = settlement_metrics(CollectorRegistry())
    settler = SettlerService(conf, pool, metrics)
    relay = SettlementOutboxRelay(conf, pool, metrics)
    tasks = [asyncio.create_task(settler.run(ctx)), asyncio.create_task(relay.run(ctx))]
    try:
        async with asyncio.timeout(WAIT_S):
            await settler.ready.wait()
            await relay.ready.wait()
        yield settler

        async def relayed():  # everything the settler wrote has left through the outbox
            return await relay.unsent() == 0

        await eventually(relayed, "the outbox relayed")
    finally:
        ctx.stop.set()
        for t in tasks:
            await asyncio.wait_for(t, 15)


async def place_hold(pool, load_id: str, hold_fen: int, *, mode: str = "market",
                     premium_fen: int = 0, insurer_id: str | None = None) -> None:  # fmt: skip
    """What the gate does for a funded load.post: the hold and its load_hold row, in one
    transaction."""
    post_id = f"post-{load_id}"
    async with pool.acquire() as conn, conn.transaction():
        assert await apply_in(conn, P.hold(post_id, "S1", hold_fen)) == [L.OK]
        await conn.execute(
            "INSERT INTO load_hold (load_id, shipper_id, post_command_id, lane_key, mode, hold_id,"
            " hold_fen, insurer_id, premium_fen, state, updated_ms)"
            " VALUES ($1, 'S1', $2, $3, $4, $5, $6, $7, $8, 'held', $9)",
            load_id, post_id, LANE_KEY, mode, L.transfer_id(post_id, "hold"), hold_fen,
            insurer_id, premium_fen, TS)  # fmt: skip


def market(type_: str, data: dict, eid: str, cause: str | None = None) -> dict:
    return make(type_, data, LANE_KEY, "matching", TS, cause=cause or eid.split(":")[0], id=eid)


def deal(load_id: str, price_fen: int, eid: str | None = None) -> dict:
    return market("deal.made", {
        "deal_id": f"deal:{load_id}", "load_id": load_id, "offer_id": "O1", "bid_id": None,
        "shipper_id": "S1", "carrier_id": "C1", "price_fen": price_fen, "lane": LANE,
    }, eid or f"offer-{load_id}:0")  # fmt: skip


def shipment(type_: str, load_id: str, eid: str, **extra) -> dict:
    data = {"deal_id": f"deal:{load_id}", "load_id": load_id}
    if type_ == "shipment.delivered":
        data |= {"carrier_id": "C1", "proof_ref": f"pod-{load_id}"}
    elif type_ == "shipment.disputed":
        data |= {"participant_id": "S1", "reason": "cargo wet"}
    elif type_ == "dispute.decided":
        data |= {"operator_id": "OP1", "resolution": "release", "carrier_fen": None}
    data |= extra
    return make(type_, data, f"deal:{load_id}", "gateway", TS + 60_000, id=eid)


async def produce(conf: SettlementSettings, short: str, events: list[dict]) -> None:
    producer = make_producer(conf.kafka_bootstrap, client_id="test")
    await producer.start()
    try:
        futures = [await producer.send(conf.topic(short), encode(e), key=e["key"].encode())
                   for e in events]  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def eventually(probe, what: str, timeout_s: float = WAIT_S):
    """Poll the async `probe` until it returns a truthy value (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = await probe()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def caught_up(conf: SettlementSettings, settler: SettlerService) -> None:
    """Until the settler has committed every record of market and shipments."""
    tps = [TopicPartition(conf.topic(t), p) for t in ("market", "shipments")
           for p in range(PARTITIONS)]  # fmt: skip
    probe = make_consumer(conf.kafka_bootstrap, group_id=settler.group_id, partitions=tps)
    await probe.start()
    try:

        async def done():
            ends = await probe.end_offsets(tps)
            for tp in tps:
                committed = await probe.committed(tp)
                if (committed or 0) < ends[tp]:
                    return False
            return True

        await eventually(done, "the settler's offsets")
    finally:
        await probe.stop()


async def state(pool, load_id: str) -> str:
    return await pool.fetchval("SELECT state FROM load_hold WHERE load_id = $1", load_id)


async def waits_for_state(pool, load_id: str, wanted: str) -> None:
    async def probe():
        return await state(pool, load_id) == wanted

    await eventually(probe, f"{load_id} {wanted}")


async def balances(pool) -> dict[str, tuple[int, int, int, int]]:
    return {a.id: a.balances() for a in await LedgerStore(pool).accounts()}


def available(books: dict, account: str) -> int:
    dp, dpo, _, cpo = books[account]
    return cpo - dpo - dp


async def checked(pool) -> check.Report:
    async with pool.acquire() as conn:
        return await check.check_database(conn, check.settler_hooks())


async def settlement_events(conf: SettlementSettings, until: int) -> list[dict]:
    records = await read_committed(conf.kafka_bootstrap, conf.topic("settlement"), until=until)
    events = [decode(r.value) for r in records]
    for e, r in zip(events, records, strict=True):
        schemas.validate(e)
        assert r.key.decode() == e["key"] and e["source"] == "settlement"
    return events


# -- scenarios --------------------------------------------------------------------------------


async def test_deal_then_delivery_pays_carrier_fee_and_refunds_the_difference_once(conf, pool):
    await place_hold(pool, "L1", 350_000)
    the_deal = deal("L1", 300_000)
    delivered = shipment("shipment.delivered", "L1", "ship-L1-1")
    async with running(conf, pool) as settler:
        await produce(conf, "market", [the_deal])
        await produce(conf, "shipments", [delivered])
        await waits_for_state(pool, "L1", "settled")
        first = await balances(pool)
        assert first["cash:C1"][3] == 294_000  # 300,000 less the 2% fee
        assert first["fee_revenue"][3] == 6_000
        assert available(first, "cash:S1") == DEPOSIT_FEN - 300_000  # 50,000 back at the deal
        assert first["escrow"] == (0, 300_000, 0, 300_000)

        # The same records delivered again (a producer retry, a replay): nothing moves.
        await produce(conf, "market", [the_deal])
        await produce(conf, "shipments", [delivered])
        await caught_up(conf, settler)
        assert await balances(pool) == first

    events = await settlement_events(conf, until=2)
    assert [(e["type"], e["id"], e["cause"]) for e in events] == [
        ("hold.resized", f"{the_deal['id']}:0", the_deal["id"]),
        ("deal.settled", f"{delivered['id']}:0", delivered["id"]),
    ]  # fmt: skip
    assert events[0]["data"]["released_fen"] == 50_000
    assert events[1]["data"] == {
        "deal_id": "deal:L1", "load_id": "L1", "shipper_id": "S1", "carrier_id": "C1",
        "price_fen": 300_000, "fee_fen": 6_000, "payout_fen": 294_000, "premium_fen": 0,
        "insurer_id": None, "refund_fen": 0, "how": "delivered"}  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM settler_outbox WHERE sent_ms IS NULL") == 0
    report = await checked(pool)
    assert report.ok, report.to_text()


async def test_delivery_that_comes_before_its_deal_is_applied_right_after_it(conf, pool):
    await place_hold(pool, "L2", 352_000, premium_fen=2_000, insurer_id="I1")
    delivered = shipment("shipment.delivered", "L2", "ship-L2-1")
    async with running(conf, pool):
        await produce(conf, "shipments", [delivered])

        async def deferred():
            return (
                await pool.fetchval(
                    "SELECT outcome FROM settler_inbox WHERE event_id = $1", delivered["id"]
                )
                == "deferred"
            )

        await eventually(deferred, "the delivery deferred")
        assert await pool.fetchval("SELECT count(*) FROM settler_deferred") == 1
        await produce(conf, "market", [deal("L2", 300_000)])
        await waits_for_state(pool, "L2", "settled")

    books = await balances(pool)
    assert books["cash:C1"][3] == 294_000 and books["premiums:I1"][3] == 2_000
    assert available(books, "cash:S1") == DEPOSIT_FEN - 302_000
    assert await pool.fetchval("SELECT count(*) FROM settler_deferred") == 0
    assert (
        await pool.fetchval(
            "SELECT outcome FROM settler_inbox WHERE event_id = $1", delivered["id"]
        )
        == "applied"
    )
    events = await settlement_events(conf, until=2)
    assert [e["type"] for e in events] == ["hold.resized", "deal.settled"]
    assert (events[1]["data"]["premium_fen"], events[1]["data"]["insurer_id"]) == (2_000, "I1")
    report = await checked(pool)
    assert report.ok, report.to_text()


@pytest.mark.parametrize(
    "resolution, carrier_fen, carrier_gets, fee, shipper_pays, final",
    [("release", None, 294_000, 6_000, 300_000, "settled"),
     ("refund", None, 0, 0, 0, "refunded"),
     ("split", 200_000, 196_000, 4_000, 200_000, "settled")],
)  # fmt: skip
async def test_dispute_freezes_the_escrow_until_the_operator_decides(
    conf, pool, resolution, carrier_fen, carrier_gets, fee, shipper_pays, final
):
    await place_hold(pool, "L3", 300_000)
    async with running(conf, pool):
        await produce(conf, "market", [deal("L3", 300_000)])
        await produce(conf, "shipments", [
            shipment("shipment.picked_up", "L3", "pick-L3", carrier_id="C1"),
            shipment("shipment.disputed", "L3", "dispute-L3"),
            shipment("shipment.delivered", "L3", "ship-L3"),  # under dispute: not paid
        ])  # fmt: skip
        await waits_for_state(pool, "L3", "frozen")

        async def delivery_taken():
            return (
                await pool.fetchval("SELECT reason FROM settler_inbox WHERE event_id = 'ship-L3'")
                == "frozen"
            )

        await eventually(delivery_taken, "the delivery under dispute")
        frozen = await balances(pool)
        assert frozen["cash:C1"][3] == 0 and frozen["escrow"][2] == 300_000
        report = await checked(pool)
        assert report.ok, report.to_text()

        decision = shipment("dispute.decided", "L3", "decide-L3", resolution=resolution,
                            carrier_fen=carrier_fen)  # fmt: skip
        await produce(conf, "shipments", [decision])
        await waits_for_state(pool, "L3", final)

    books = await balances(pool)
    assert books["cash:C1"][3] == carrier_gets and books["fee_revenue"][3] == fee
    assert available(books, "cash:S1") == DEPOSIT_FEN - shipper_pays
    assert books["escrow"][0] == books["escrow"][2] == 0
    events = await settlement_events(conf, until=3)
    last = "escrow.refunded" if resolution == "refund" else "deal.settled"
    assert [e["type"] for e in events] == ["hold.resized", "escrow.frozen", last]
    if last == "deal.settled":
        assert events[2]["data"]["how"] == resolution
        assert events[2]["data"]["refund_fen"] == 300_000 - shipper_pays
    report = await checked(pool)
    assert report.ok, report.to_text()


async def test_cancelled_expired_rejected_and_unawarded_loads_release_their_holds(conf, pool):
    for load_id in ("Lc", "Le", "Lr", "Lx"):
        await place_hold(pool, load_id, 100_000)
    await place_hold(pool, "La", 200_000, mode="auction")
    events = [
        market("order.cancelled", {"ref_id": "Lc"}, "cancel-Lc:0"),
        market("order.expired", {"ref_id": "Le"}, "tick-1:0"),
        # The engine refused the load.post itself...
        market("order.rejected", {"ref_id": "Lr", "reason": "expired"}, "post-Lr:0"),
        # ...and, for Lx, only a cancel by someone else: Lx stays held.
        market("order.rejected", {"ref_id": "Lx", "reason": "not_owner"}, "cancel-Lx:0"),
        market("auction.closed", {"load_id": "La", "bid_id": None, "price_fen": None}, "tick-2:0"),
        market("order.cancelled", {"ref_id": "O7"}, "cancel-O7:0"),  # an offer: no hold
        market("load.rested", {"load_id": "Lx"}, "post-Lx:0"),  # not the settler's
    ]
    async with running(conf, pool) as settler:
        await produce(conf, "market", events)
        await caught_up(conf, settler)

    assert {lid: await state(pool, lid) for lid in ("Lc", "Le", "Lr", "Lx", "La")} == {
        "Lc": "released",
        "Le": "released",
        "Lr": "released",
        "Lx": "held",
        "La": "released",
    }
    books = await balances(pool)
    assert available(books, "cash:S1") == DEPOSIT_FEN - 100_000  # Lx's hold only
    released = await settlement_events(conf, until=4)
    assert sorted((e["data"]["load_id"], e["data"]["reason"], e["data"]["amount_fen"])
                  for e in released) == [  # fmt: skip
        ("La", "unawarded", 200_000), ("Lc", "cancelled", 100_000),
        ("Le", "expired", 100_000), ("Lr", "rejected", 100_000)]  # fmt: skip
    assert (
        await pool.fetchval("SELECT reason FROM settler_inbox WHERE event_id = 'cancel-Lx:0'")
        == "other_command"
    )
    report = await checked(pool)
    assert report.ok, report.to_text()


async def test_a_transfer_the_ledger_refuses_is_kept_and_the_rest_of_the_batch_settles(conf, pool):
    """The carrier C9 has no account: its payout is refused. The delivery is recorded for
    an operator (settler_refusals), its row stays dealt, the other load settles."""
    await place_hold(pool, "L5", 100_000)
    await place_hold(pool, "L6", 100_000)
    metrics = settlement_metrics(CollectorRegistry())
    settler = SettlerService(conf, pool, metrics)
    d5 = deal("L5", 90_000)
    d5["data"]["carrier_id"] = "C9"
    batch = [d5, deal("L6", 90_000), shipment("shipment.delivered", "L5", "ship-L5"),
             shipment("shipment.delivered", "L6", "ship-L6")]  # fmt: skip
    report = await settler.settle(batch)
    assert report.careful and report.ledger_refusals == {"credit_account_not_found": 1}
    assert (await state(pool, "L5"), await state(pool, "L6")) == ("dealt", "settled")
    refusal = await pool.fetchrow("SELECT reason, results FROM settler_refusals")
    assert refusal["reason"] == "credit_account_not_found"
    assert "credit_account_not_found" in refusal["results"]
    assert metrics.settler_ledger_refusals.labels("credit_account_not_found")._value.get() == 1
    assert metrics.settler_events.labels("shipment.delivered", "refused")._value.get() == 1
    assert (
        await pool.fetchval("SELECT outcome FROM settler_inbox WHERE event_id = 'ship-L5'")
        == "refused"
    )
    # Once more: every event is in the inbox, nothing moves.
    before = await balances(pool)
    assert (await settler.settle(batch)).new == 0
    assert await balances(pool) == before
    report = await checked(pool)
    assert report.ok, report.to_text()


async def test_check_reports_a_deal_settled_twice_and_a_hold_without_its_order(
    conf, pool, database_url
):
    await place_hold(pool, "L7", 300_000)
    await place_hold(pool, "L8", 100_000)
    settler = SettlerService(conf, pool, settlement_metrics(CollectorRegistry()))
    await settler.settle([deal("L7", 300_000), shipment("shipment.delivered", "L7", "ship-L7")])
    assert (await checked(pool)).ok
    args = ["check", "--database-url", database_url, "--schema", conf.db_schema, "--json"]
    # In a thread: the command runs its own event loop (asyncio.run).
    result = await asyncio.to_thread(CliRunner().invoke, ledger_cli, args)
    assert result.exit_code == 0, result.output
    assert '"hold_belongs_to_live_order": 0' in result.output

    # A second settlement of deal:L7: another delivery event taken, paid again.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO settler_inbox (event_id, type, load_id, outcome, ts_ms)"
                           " VALUES ('forged', 'shipment.delivered', 'L7', 'applied', 0)")  # fmt: skip
        assert await apply_in(conn, [L.Transfer(L.transfer_id("forged", "payout"), L.SINGLE_PHASE,
                                                "fee_revenue", "cash:C1", 1_000, code="payout",
                                                cause="forged")]) == [L.OK]  # fmt: skip
        await conn.execute(
            "INSERT INTO settler_outbox (topic, key, value, event_id, type, load_id)"
            " SELECT topic, key, value, 'forged:0', type, load_id FROM settler_outbox"
            " WHERE type = 'deal.settled'")  # fmt: skip
        # L8's hold voided behind the settler's back: its load still says held.
        await apply_in(conn, P.release_hold("behind", "post-L8:hold"))
    report = await checked(pool)
    assert report.counts.get(check.DEAL_SETTLED_AT_MOST_ONCE) == 1, report.to_text()
    assert "2 payouts, 2 settlement records" in report.to_text()
    assert report.counts.get(check.HOLD_BELONGS_TO_LIVE_ORDER) == 1, report.to_text()
    # Each delivery of L7 ('ship-L7', 'forged') now finds two settlements, not one.
    assert report.counts.get(check.DELIVERED_DEAL_SETTLED) == 2, report.to_text()

    # `wlex ledger check` runs the settler's hooks.
    result = await asyncio.to_thread(CliRunner().invoke, ledger_cli, args)
    assert result.exit_code == 1, result.output
    assert '"deal_settled_at_most_once": 1' in result.output
    assert '"delivered_deal_settled": 2' in result.output
