"""The funding gate against the real broker and PostgreSQL: funded loads reach `orders` on
their own partition in lane order, unfunded ones do not; participants, deposits and
withdrawals; dead letters; and a gate that crashed between its PostgreSQL commit and its
Kafka commit, whose successor produces exactly the recorded bytes, once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from services.common import db, schemas
from services.common.envelope import DecodeError, decode, encode, make
from services.common.kafka import make_producer
from services.common.topics import create_topics
from services.settlement import check
from services.settlement.config import SettlementSettings
from services.settlement.gate_service import FundingGate
from tests.unit.common.samples import DATA

from .matching_helpers import read_partitions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 4
TS = 1_767_225_600_000
CAP_FEN = 500_000  # the hold of an auction without a reserve, small enough to fund in tests
LANES = [
    {"origin": o, "destination": d, "vehicle_class": "van-9.6"}
    for o, d in [("420100", "420600"), ("420600", "420500"), ("420500", "110000"),
                 ("110000", "310000"), ("310000", "420100"), ("420100", "420500")]
]  # fmt: skip


def lane_key(lane: dict) -> str:
    return f"{lane['origin']}>{lane['destination']}>{lane['vehicle_class']}"


def cmd(type_: str, data: dict, cid: str, key: str) -> dict:
    return make(type_, data, key, "gateway", TS, id=cid)


def participant(cid: str, type_: str, **data) -> dict:
    return cmd(type_, data, cid, data["participant_id"])


def register(pid: str, role: str) -> dict:
    return participant(f"reg-{pid}", "participant.register", participant_id=pid, role=role)


def deposit(cid: str, pid: str, amount_fen: int) -> dict:
    return participant(cid, "funds.deposit", participant_id=pid, amount_fen=amount_fen,
                       bank_ref=f"ICBC-{cid}")  # fmt: skip


def withdraw(cid: str, pid: str, amount_fen: int) -> dict:
    return participant(cid, "funds.withdraw", participant_id=pid, amount_fen=amount_fen,
                       bank_ref=f"ICBC-{cid}")  # fmt: skip


def load(cid: str, load_id: str, shipper: str, lane: dict, *, limit_fen: int | None = None,
         auction: dict | None = None, insurance: dict | None = None) -> dict:  # fmt: skip
    data = dict(DATA["load.post"], load_id=load_id, shipper_id=shipper, lane=lane)
    if auction is not None:
        del data["limit_fen"]
        data.update(mode="auction", auction=auction)
    else:
        data["limit_fen"] = limit_fen
    if insurance is not None:
        data["insurance"] = insurance
    return cmd("load.post", data, cid, lane_key(lane))


def market(cid: str, type_: str, lane: dict, **changes) -> dict:
    data = dict(DATA[type_], **changes)
    if "lane" in data:
        data["lane"] = lane
    return cmd(type_, data, cid, lane_key(lane))


def no_reserve_auction() -> dict:
    return {"closes_at": TS + 3_600_000, "reserve_fen": None, "instant_fen": None, "sealed": False}


# -- plumbing ---------------------------------------------------------------------------------


@pytest.fixture
async def pool(database_url, pg_schema):
    p = await db.create_pool(database_url, schema=pg_schema, max_size=4)
    yield p
    await db.close_pool(p)


@pytest.fixture
async def topics(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    return topic_prefix


def settings(bootstrap: str, prefix: str, schema: str, **kw) -> SettlementSettings:
    return SettlementSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix, db_schema=schema,
                              auction_hold_cap_fen=CAP_FEN, gate_batch_max=500, **kw)  # fmt: skip


async def write(bootstrap: str, topic: str, records: list) -> None:
    """Commands (envelopes, or (key, raw bytes)) as the gateway writes them: keyed, the
    producer's hashing picks the partition."""
    producer = make_producer(bootstrap, client_id="test-gateway")
    await producer.start()
    try:
        futures = []
        for r in records:
            key, value = r if isinstance(r, tuple) else (r["key"], encode(r))
            futures.append(await producer.send(topic, value, key=key.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: o for tp, o in (await probe.end_offsets(tps)).items()}
    finally:
        await probe.stop()


async def run_until_caught_up(gates: list[FundingGate], bootstrap: str, timeout_s: float = 60.0):
    """Run the gates until each has committed its partitions of commands to their end,
    then stop them."""
    end = await end_offsets(bootstrap, gates[0].commands)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(g.run_until(stop)) for g in gates]
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t in tasks:
                if t.done():
                    t.result()
            if all(g.ready.is_set() and all(g.committed[p] >= end[p] for p in g.owned)
                   for g in gates):  # fmt: skip
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the gates did not catch up in time")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


def decoded(values: list[bytes]) -> list[dict]:
    return [decode(v) for v in values]


async def settlement_events(bootstrap: str, prefix: str) -> list[dict]:
    by_partition = await read_partitions(bootstrap, prefix + "settlement")
    events = []
    for p, values in by_partition.items():
        for e in decoded(values):
            schemas.validate(e)
            assert e["source"] == "settlement" and e["id"] == e["cause"] + ":gate:0"
            events.append(e)
            assert p == by_partition_of_key(e["key"], len(by_partition))
    return events


def by_partition_of_key(key: str, n: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n


def expected_orders(commands: dict[int, list[bytes]], forwarded: dict[str, Callable]) -> dict:
    """Per partition of commands, what orders must hold: the forwarded commands in their
    order (first occurrence of an id only), each as forwarded[id] makes it."""
    out, seen = {}, set()
    for p, values in commands.items():
        out[p] = []
        for v in values:
            try:
                e = decode(v)
            except DecodeError:
                continue
            if e.get("id") in forwarded and e["id"] not in seen:
                seen.add(e["id"])
                out[p].append(forwarded[e["id"]](v))
    return out


def with_reserve(reserve_fen: int):
    def change(value: bytes) -> bytes:
        e = decode(value)
        e["data"]["auction"]["reserve_fen"] = reserve_fen
        return encode(e)

    return change


def same(value: bytes) -> bytes:
    return value


async def ledger_ok(pool) -> None:
    async with pool.acquire() as conn:
        report = await check.check_database(conn)
    assert report.ok, report.to_text()


async def balances(pool) -> dict[str, tuple[int, int]]:
    """(available, held) fen of every cash account that is not empty."""
    rows = await pool.fetch(
        "SELECT id, credits_posted_fen - debits_posted_fen - debits_pending_fen,"
        " debits_pending_fen FROM accounts WHERE kind = 'cash' ORDER BY id")  # fmt: skip
    return {r[0]: (r[1], r[2]) for r in rows if r[1] or r[2]}


# After the setup, the market batch and the money: what each cash account has and holds.
BALANCES = {
    "cash:S1": (700_000, 300_000),  # L1 held
    "cash:S2": (600_000, 0),  # suspended; 400,000 withdrawn
    "cash:S3": (100_000, 500_000),  # L2 held at the cap
    "cash:S4": (95_000, 105_000),  # L7 held with its premium
    "cash:U1": (42_000, 0),  # deposited before registering
}


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# -- the scenario ---------------------------------------------------------------------------

SETUP = [
    register("S1", "shipper"),
    register("S2", "shipper"),
    register("S3", "shipper"),
    register("S4", "shipper"),
    register("C1", "carrier"),
    register("I1", "insurer"),
    deposit("dep-S1", "S1", 1_000_000),
    deposit("dep-S2", "S2", 1_000_000),
    deposit("dep-S3", "S3", 600_000),
    deposit("dep-S4", "S4", 200_000),
    participant("sus-S2", "participant.suspend", participant_id="S2"),
]


def market_batch() -> tuple[list, dict]:
    """Loads, offers, bids and cancels over six lanes; what the gate forwards, by id.

    Lanes may sit on different partitions, which the gate decides in no particular order
    between them: loads that compete for one shipper's money share a lane."""
    a, b, c, d, e, f = LANES
    commands = [
        load("L1", "L1", "S1", a, limit_fen=300_000),  # funded: 700,000 left
        market("O1", "offer.post", a, offer_id="O1", carrier_id="C1"),
        load("L2", "L2", "S3", b, auction=no_reserve_auction()),  # the cap: 100,000 left
        load("L3", "L3", "S4", c, limit_fen=250_000),  # insufficient_funds (200,000)
        load("L4", "L4", "S2", d, limit_fen=1_000),  # suspended
        load("L5", "L5", "S9", e, limit_fen=1_000),  # unknown_shipper
        load("L6", "L6", "C1", f, limit_fen=1_000),  # a carrier: unknown_shipper
        market("B1", "bid.place", b, bid_id="B1", load_id="L2", carrier_id="C1", price_fen=90_000),
        load("L7", "L7", "S4", c, limit_fen=100_000,
             insurance={"insurer_id": "I1", "premium_fen": 5_000}),  # funded: 95,000 left
        load("L1-again", "L1", "S1", a, limit_fen=10),  # duplicate_id
        market("X1", "load.cancel", a, load_id="L1", shipper_id="S1"),
        market("X2", "offer.cancel", a, offer_id="O1", carrier_id="C1"),
        market("X3", "bid.withdraw", b, bid_id="B1", carrier_id="C1"),
        market("O2", "offer.post", e, offer_id="O2", carrier_id="C1"),
    ]  # fmt: skip
    forwarded = {i: same for i in ("L1", "O1", "B1", "L7", "X1", "X2", "X3", "O2")}
    forwarded["L2"] = with_reserve(CAP_FEN)
    return commands, forwarded


# Only S2's money and others' (S2 is suspended: it may still take its money out), so
# these may be decided in any order with the loads of S1 on other partitions.
MONEY = [
    withdraw("w-ok", "S2", 400_000),
    withdraw("w-short", "S2", 600_001),
    withdraw("w-nobody", "X9", 5),
    deposit("dep-U1", "U1", 42_000),  # not registered: kept on a new cash account
    # Bank references sent again under new command ids: refused, nothing moves.
    participant("again-dep-S1", "funds.deposit", participant_id="S1", amount_fen=1_000_000,
                bank_ref="ICBC-dep-S1"),
    participant("w-ok-again", "funds.withdraw", participant_id="S2", amount_fen=400_000,
                bank_ref="ICBC-w-ok"),
]  # fmt: skip

# Bad records: undecodable, a valid envelope of a type that is no gate command, bad data.
GARBAGE = [
    (lane_key(LANES[0]), b"{not json"),
    (lane_key(LANES[0]), encode(make("clock.tick", {}, "k", "gateway", TS, id="tick-1"))),
    (lane_key(LANES[1]), encode(make("load.post", {"load_id": "bad"}, "k", "gateway", TS, id="bad-1"))),
]  # fmt: skip


async def run_phase(gates_factory, bootstrap: str, prefix: str, records: list) -> None:
    await write(bootstrap, prefix + "commands", records)
    await run_until_caught_up(gates_factory(), bootstrap)


@pytest.mark.parametrize("instances", [1, 2])
async def test_gate_funds_forwards_in_lane_order_and_rejects_without_forwarding(
    kafka_bootstrap, topics, pool, pg_schema, instances
):
    prefix = topics

    def gates():
        return [FundingGate(settings(kafka_bootstrap, prefix, pg_schema, settlement_instance=i,
                                     settlement_instances=instances), pool)
                for i in range(instances)]  # fmt: skip

    # Participants and money first: across partitions the gate keeps no order, and a real
    # shipper registers and deposits long before it posts.
    await run_phase(gates, kafka_bootstrap, prefix, SETUP)
    commands, forwarded = market_batch()
    o2 = commands[-1]
    await run_phase(gates, kafka_bootstrap, prefix, commands + GARBAGE + [o2])  # O2 twice
    await run_phase(gates, kafka_bootstrap, prefix, MONEY)

    # orders: every forwarded command on its own partition number, in commands order,
    # once; nothing else.
    commands_log = await read_partitions(kafka_bootstrap, prefix + "commands")
    orders = await read_partitions(kafka_bootstrap, prefix + "orders")
    assert orders == expected_orders(commands_log, forwarded)
    assert sum(map(len, orders.values())) == 9
    l2 = next(e for p in orders.values() for e in decoded(p) if e["id"] == "L2")
    assert l2["data"]["auction"]["reserve_fen"] == CAP_FEN

    events = await settlement_events(kafka_bootstrap, prefix)
    got = Counter((e["type"], e["key"], e["data"].get("reason")) for e in events)
    assert got == Counter({
        ("funds.deposited", "S1", None): 1, ("funds.deposited", "S2", None): 1,
        ("funds.deposited", "S3", None): 1, ("funds.deposited", "S4", None): 1,
        ("load.funded", "L1", None): 1, ("load.funded", "L2", None): 1,
        ("load.funded", "L7", None): 1,
        ("load.rejected", "L3", "insufficient_funds"): 1,
        ("load.rejected", "L4", "suspended"): 1,
        ("load.rejected", "L5", "unknown_shipper"): 1,
        ("load.rejected", "L6", "unknown_shipper"): 1,
        ("load.rejected", "L1", "duplicate_id"): 1,
        ("funds.withdrawn", "S2", None): 1,
        ("withdrawal.rejected", "S2", "insufficient_funds"): 1,
        ("withdrawal.rejected", "X9", "unknown_participant"): 1,
        ("funds.deposited", "U1", None): 1,
        ("deposit.rejected", "S1", "duplicate_bank_ref"): 1,
        ("withdrawal.rejected", "S2", "duplicate_bank_ref"): 1,
    })  # fmt: skip
    funded = {e["key"]: e["data"]["hold_fen"] for e in events if e["type"] == "load.funded"}
    assert funded == {"L1": 300_000, "L2": CAP_FEN, "L7": 105_000}

    dlq = await read_partitions(kafka_bootstrap, prefix + "dlq")
    assert sum(map(len, dlq.values())) == len(GARBAGE)

    holds = {r["load_id"]: r for r in await pool.fetch("SELECT * FROM load_hold")}
    assert {k: (r["state"], r["hold_fen"], r["hold_id"], r["insurer_id"], r["premium_fen"])
            for k, r in holds.items()} == {
        "L1": ("held", 300_000, "L1:hold", None, 0),
        "L2": ("held", CAP_FEN, "L2:hold", None, 0),
        "L7": ("held", 105_000, "L7:hold", "I1", 5_000),
    }  # fmt: skip
    assert holds["L2"]["lane_key"] == lane_key(LANES[1]) and holds["L2"]["mode"] == "auction"
    assert await balances(pool) == BALANCES
    assert await pool.fetchval("SELECT count(*) FROM accounts WHERE id = 'premiums:I1'") == 1
    participants = {r[0]: (r[1], r[2]) for r in await pool.fetch("SELECT * FROM gate_participants")}
    assert participants == {"S1": ("shipper", "active"), "S2": ("shipper", "suspended"),
                            "S3": ("shipper", "active"), "S4": ("shipper", "active"),
                            "C1": ("carrier", "active"), "I1": ("insurer", "active")}  # fmt: skip
    # One decision per distinct command id; the second O2 and the dead letters have none.
    n_ids = len(SETUP) + len(commands) + len(MONEY)
    assert await pool.fetchval("SELECT count(*) FROM gate_decisions") == n_ids
    await ledger_ok(pool)


# -- a crash between the two commits -----------------------------------------------------------


class Crash(Exception):
    pass


class CrashingGate(FundingGate):
    """Commits its first batch's decisions to PostgreSQL, then dies before the Kafka
    commit: with its outputs sent in an open transaction (send_first) or not sent."""

    def __init__(self, *args, send_first: bool, **kw):
        super().__init__(*args, **kw)
        self.send_first = send_first

    async def commit(self, consumer, producer, batch, decided):
        if self.send_first:
            await producer.begin_transaction()
            futures = [await producer.send(self.topics[t], v, key=k, partition=p)
                       for t, p, k, v in decided.records]  # fmt: skip
            await asyncio.gather(*futures)  # in the log, in a transaction never committed
        raise Crash


@pytest.mark.parametrize("send_first", [True, False], ids=["sent-uncommitted", "never-sent"])
async def test_gate_forwards_same_decision_after_crash(
    kafka_bootstrap, topics, pool, pg_schema, send_first
):
    prefix = topics
    s = settings(kafka_bootstrap, prefix, pg_schema)
    await run_phase(lambda: [FundingGate(s, pool)], kafka_bootstrap, prefix, SETUP)
    commands, forwarded = market_batch()
    await write(kafka_bootstrap, prefix + "commands", commands + MONEY)

    crashing = CrashingGate(s, pool, send_first=send_first)
    with pytest.raises(Crash):
        await asyncio.wait_for(crashing.run_until(asyncio.Event()), 60)
    rows = await pool.fetch(
        "SELECT command_id, outcome, out_topics, out_partitions, out_keys, out_values"
        " FROM gate_decisions WHERE command_type NOT LIKE 'participant.%'"
        " AND command_id NOT LIKE 'dep-S%'")  # fmt: skip
    assert rows, "the crashed gate recorded no decision"
    recorded_orders = {(r["out_partitions"][i], r["out_values"][i])
                       for r in rows for i, t in enumerate(r["out_topics"]) if t == "orders"}  # fmt: skip
    recorded_settlement = {r["out_values"][i] for r in rows
                           for i, t in enumerate(r["out_topics"]) if t == "settlement"}  # fmt: skip
    if send_first:
        # The crashed transaction's records are in the log; read_committed never shows them.
        uncommitted = await read_uncommitted_count(kafka_bootstrap, prefix + "orders")
        assert uncommitted == len(recorded_orders) > 0
    resent = gauge("wlex_settlement_gate_resent_decisions_total")

    await run_until_caught_up([FundingGate(s, pool)], kafka_bootstrap)

    commands_log = await read_partitions(kafka_bootstrap, prefix + "commands")
    orders = await read_partitions(kafka_bootstrap, prefix + "orders")
    assert orders == expected_orders(commands_log, forwarded)  # each once, in order
    in_orders = {(p, v) for p, values in orders.items() for v in values}
    assert recorded_orders <= in_orders  # the recorded bytes, not new ones
    events = await settlement_events(kafka_bootstrap, prefix)
    assert recorded_settlement <= {encode(e) for e in events}
    assert len(events) == len({e["id"] for e in events}) == 4 + 8 + len(MONEY)
    assert gauge("wlex_settlement_gate_resent_decisions_total") - resent == len(rows)
    # The recorded decisions were not taken again: each hold once.
    assert await pool.fetchval("SELECT count(*) FROM transfers WHERE code = 'hold'") == 3
    assert await pool.fetchval("SELECT count(*) FROM load_hold") == 3
    assert await pool.fetchval("SELECT count(*) FROM gate_decisions") == (
        len(SETUP) + len(commands) + len(MONEY))  # fmt: skip
    assert await balances(pool) == BALANCES
    await ledger_ok(pool)


async def read_uncommitted_count(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted",
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        end = await consumer.end_offsets(tps)
        start = await consumer.beginning_offsets(tps)
        return sum(end[tp] - start[tp] for tp in tps)
    finally:
        await consumer.stop()
