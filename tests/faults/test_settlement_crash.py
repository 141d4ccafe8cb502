"""kill -9 of the settlement service at random moments, and one restart of its
PostgreSQL, while commands, deals and shipments flow: afterwards the ledger equals that
of a clean run over the same input exactly (same transfers, same ids, same balances),
the gate's decisions are the same, every command reached `orders` exactly once and no
settlement event was lost.

Both runs take the same deterministic input: participants and deposits; then loads,
offers and cancels, each shipper's loads on its own lane (one partition: its holds are
decided in one order in both runs); then, for the deals the engine made, pickups,
deliveries, disputes and operators' decisions; then withdrawals. Each phase starts when
the one before has been settled, so no decision depends on a race between partitions.
The clean run uses the session's PostgreSQL; the faulty one its own, which it restarts.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from services.common.envelope import decode
from services.common.topics import create_topics
from services.devenv.stack import start_isolated
from services.settlement import settler
from tests.conftest import new_state_dir, stop_stack
from tests.integration.matching_helpers import clean_run, read_partitions, write_log

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
SEED = 6161
T0 = 1_900_000_000_000  # every command's time: fixed, so both runs are the same log
HOUR = 3_600_000
SHIPPERS, CARRIERS = 16, 8
LOADS_PER_SHIPPER = 24
KILLS = 6
PHASE_TIMEOUT_S = 150.0
REGIONS = ["420100", "420200", "420300", "420500", "420600", "420700", "420800", "420900",
           "421000", "421100", "421200", "421300", "422800", "429004", "429005", "429006"]  # fmt: skip


def env(type_: str, data: dict, key: str, n: int) -> dict:
    return {"id": f"f{n:06d}", "type": type_, "v": 1, "ts": T0 + n, "key": key,
            "source": "gateway", "cause": None, "data": data}  # fmt: skip


def lane_of(i: int) -> dict:
    return {"origin": REGIONS[i], "destination": REGIONS[(i + 5) % len(REGIONS)],
            "vehicle_class": "van-9.6"}  # fmt: skip


def lane_key(lane: dict) -> str:
    return f"{lane['origin']}>{lane['destination']}>{lane['vehicle_class']}"


def phase_participants() -> list[dict]:
    rng = random.Random(SEED)
    out, n = [], 0
    for role, count, prefix in (("shipper", SHIPPERS, "S"), ("carrier", CARRIERS, "C"),
                                ("insurer", 1, "I")):  # fmt: skip
        for i in range(count):
            pid = f"{prefix}{i:02d}"
            out.append(env("participant.register", {"participant_id": pid, "role": role}, pid, n))
            n += 1
    for i in range(SHIPPERS - 1):
        # Enough for every load the shipper posts: whether a hold fits must not depend
        # on how far the settler (re-sizes, releases) is ahead of the gate, which is
        # timing. The last shipper deposits nothing, so its loads are all refused.
        pid = f"S{i:02d}"
        data = {"participant_id": pid, "amount_fen": rng.randrange(10_000_000, 12_000_000),
                "bank_ref": f"B{i}"}  # fmt: skip
        out.append(env("funds.deposit", data, pid, n))
        n += 1
    return out


def phase_market() -> list[dict]:
    """Loads (some insured), offers and cancels; each shipper on its own lane."""
    rng = random.Random(SEED + 1)
    out, n = [], 10_000
    for s in range(SHIPPERS):
        lane = lane_of(s)
        key = lane_key(lane)
        for j in range(LOADS_PER_SHIPPER):
            load_id = f"L{s:02d}-{j:02d}"
            data = {"load_id": load_id, "shipper_id": f"S{s:02d}", "lane": lane,
                    "weight_kg": rng.randrange(1_000, 9_000), "volume_dm3": rng.randrange(5_000, 20_000),
                    "pickup_from": T0 + HOUR, "pickup_to": T0 + 10 * HOUR, "mode": "market",
                    "limit_fen": rng.randrange(100_000, 400_000), "cargo_category": "general"}  # fmt: skip
            if j % 6 == 0:
                data["insurance"] = {"insurer_id": "I00", "premium_fen": 3_000 + j}
            out.append(env("load.post", data, key, n))
            n += 1
            if rng.random() < 0.45:
                c = rng.randrange(CARRIERS)
                offer = {"offer_id": f"O{s:02d}-{j:02d}", "carrier_id": f"C{c:02d}", "lane": lane,
                         "capacity_kg": 10_000, "capacity_dm3": 30_000, "available_from": T0,
                         "available_to": T0 + 10 * HOUR, "ask_fen": rng.randrange(80_000, 380_000),
                         "consolidate": rng.random() < 0.3}  # fmt: skip
                out.append(env("offer.post", offer, key, n))
                n += 1
            if j > 2 and rng.random() < 0.15:
                gone = f"L{s:02d}-{rng.randrange(j):02d}"
                out.append(env("load.cancel", {"load_id": gone, "shipper_id": f"S{s:02d}"}, key, n))
                n += 1
    return out


def phase_shipments(deals: list[dict]) -> list[dict]:
    out, n = [], 50_000
    for i, deal in enumerate(sorted(deals, key=lambda d: d["deal_id"])):
        base = {"deal_id": deal["deal_id"], "load_id": deal["load_id"]}
        key = deal["deal_id"]
        kind = i % 6
        if kind in (0, 1, 2):
            out.append(env("shipment.picked_up", base | {"carrier_id": deal["carrier_id"]}, key, n))
            out.append(env("shipment.delivered", base | {"carrier_id": deal["carrier_id"],
                                                         "proof_ref": f"POD{i}"}, key, n + 1))  # fmt: skip
        elif kind in (3, 4):
            resolution = "refund" if kind == 3 else "split"
            out.append(env("shipment.disputed", base | {"participant_id": deal["shipper_id"],
                                                        "reason": "damaged"}, key, n))  # fmt: skip
            decided = base | {"operator_id": "OP", "resolution": resolution,
                              "carrier_fen": deal["price_fen"] // 2 if resolution == "split" else None}  # fmt: skip
            out.append(env("dispute.decided", decided, key, n + 1))
        n += 2  # kind 5: the deal stays open
    return out


def phase_withdrawals() -> list[dict]:
    out = []
    for c in range(CARRIERS):
        pid = f"C{c:02d}"
        out.append(env("funds.withdraw", {"participant_id": pid, "amount_fen": 300_000,
                                          "bank_ref": f"W{c}"}, pid, 90_000 + c))  # fmt: skip
    return out


@dataclass
class Run:
    name: str
    bootstrap: str
    database_url: str
    prefix: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:8]}.")
    schema: str = field(default_factory=lambda: f"f_{uuid.uuid4().hex[:10]}")
    log_dir: Path = field(default_factory=lambda: new_state_dir("settle-log"))
    settlement: asyncio.subprocess.Process | None = None
    matching: asyncio.subprocess.Process | None = None
    starts: int = 0
    keep_alive: bool = True

    def topic(self, name: str) -> str:
        return self.prefix + name

    def _env(self, service: str, **extra: str) -> dict[str, str]:
        return dict(os.environ, WLEX_KAFKA_BOOTSTRAP=self.bootstrap,
                    WLEX_DATABASE_URL=self.database_url, WLEX_TOPIC_PREFIX=self.prefix,
                    WLEX_SERVICE_NAME=service, WLEX_HTTP_PORT="0", **extra)  # fmt: skip

    async def _spawn(self, service: str, **extra: str) -> asyncio.subprocess.Process:
        log = (self.log_dir / f"{service}.log").open("ab")
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{service}", cwd=ROOT, env=self._env(service, **extra),
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    async def start(self) -> None:
        await create_topics(self.bootstrap, self.prefix, partitions=PARTITIONS)
        # No clock ticks: the orders log must be exactly what the gate forwarded.
        self.matching = await self._spawn("matching", WLEX_MATCHING_TICK_INTERVAL_MS="0")
        await self.start_settlement()

    async def start_settlement(self) -> None:
        # Small batches: kills land between and inside many transactions.
        self.settlement = await self._spawn(
            "settlement", WLEX_DB_SCHEMA=self.schema, WLEX_GATE_BATCH_MAX="40",
            WLEX_SETTLER_BATCH_MAX="40", WLEX_OUTBOX_BATCH_MAX="40",
        )  # fmt: skip
        self.starts += 1

    async def supervise(self) -> None:
        """Restart settlement whenever it exits, as supervisord would."""
        while self.keep_alive:
            proc = self.settlement
            await proc.wait()
            if self.keep_alive and proc is self.settlement:
                await asyncio.sleep(0.3)
                await self.start_settlement()

    async def kill_settlement(self) -> None:
        proc = self.settlement
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

    async def stop(self) -> None:
        self.keep_alive = False
        for proc in (self.settlement, self.matching):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    async def query(self, sql: str, *args):
        """Rows of a query in the run's schema; [] while the database is away."""
        try:
            conn = await asyncpg.connect(self.database_url, timeout=5,
                                         server_settings={"search_path": self.schema})  # fmt: skip
        except (OSError, asyncpg.PostgresError):
            return None
        try:
            return await conn.fetch(sql, *args)
        except (OSError, asyncpg.PostgresError):
            return None
        finally:
            await conn.close()

    async def count(self, sql: str) -> int:
        rows = await self.query(sql)
        return rows[0][0] if rows else -1

    async def wait_count(self, sql: str, want: int, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PHASE_TIMEOUT_S
        got = -1
        while loop.time() < deadline:
            got = await self.count(sql)
            if got == want:
                return
            assert got <= want, f"{self.name}: {what}: {got} > {want}"
            await asyncio.sleep(0.3)
        raise AssertionError(f"{self.name}: {what}: {got} of {want} after {PHASE_TIMEOUT_S} s;"
                             f" logs in {self.log_dir}")  # fmt: skip

    async def feed(self, commands: list[dict], topic: str = "commands") -> None:
        await write_log(self.bootstrap, self.topic(topic), commands)

    async def decided(self, n: int) -> None:
        await self.wait_count("SELECT count(*) FROM gate_decisions", n, "gate decisions")

    async def market_settled(self) -> tuple[list[dict], int]:
        """Wait until matching has answered every forwarded command and the settler has
        taken in every market event; the deals made and the inbox's size."""
        # The gate records a decision before its Kafka transaction commits: wait for
        # every forwarded command to be readable.
        forwarded = await self.count(
            "SELECT count(*) FROM gate_decisions WHERE 'orders' = ANY(out_topics)"
        )
        orders = await read_partitions(self.bootstrap, self.topic("orders"), until=forwarded,
                                       timeout_s=PHASE_TIMEOUT_S)  # fmt: skip
        assert sum(map(len, orders.values())) == forwarded, f"{self.name}: orders"
        expected = [decode(v) for values in clean_run(orders).values() for v in values]
        await read_partitions(self.bootstrap, self.topic("market"), until=len(expected),
                              timeout_s=PHASE_TIMEOUT_S)  # fmt: skip
        # The inbox keeps the events that concern money (settler.MARKET_TYPES).
        concern = sum(1 for e in expected if e["type"] in settler.MARKET_TYPES)
        await self.wait_count("SELECT count(*) FROM settler_inbox", concern, "settler inbox")
        return [e["data"] for e in expected if e["type"] == "deal.made"], concern


async def run_exchange(run: Run, faults: bool, stack=None) -> dict:
    await run.start()
    watcher = asyncio.create_task(run.supervise())
    chaos = asyncio.create_task(_chaos(run, stack)) if faults else None
    try:
        participants = phase_participants()
        await run.feed(participants)
        await run.decided(len(participants))
        market = phase_market()
        await run.feed(market)
        await run.decided(len(participants) + len(market))
        deals, inbox = await run.market_settled()
        assert len(deals) > 20, f"the workload made only {len(deals)} deals"
        shipments = phase_shipments(deals)
        await run.feed(shipments, "shipments")
        # Not a count made after the feed: the settler may have taken batches by then.
        await run.wait_count(
            "SELECT count(*) FROM settler_inbox", inbox + len(shipments), "shipments"
        )
        withdrawals = phase_withdrawals()
        await run.feed(withdrawals)
        await run.decided(len(participants) + len(market) + len(withdrawals))
        await run.wait_count(
            "SELECT count(*) FROM settler_outbox WHERE sent_ms IS NULL", 0, "outbox"
        )
        if chaos is not None:
            kills = await chaos
            chaos = None
            assert kills >= KILLS, f"only {kills} kills happened"
        return await snapshot(run, len(participants) + len(market) + len(withdrawals))
    finally:
        if chaos is not None:
            chaos.cancel()
        await run.stop()
        watcher.cancel()


async def _chaos(run: Run, stack) -> int:
    """KILLS kill -9s of settlement at random moments, and one PostgreSQL restart."""
    rng = random.Random(SEED + 7)
    kills = 0
    for i in range(KILLS):
        await asyncio.sleep(rng.uniform(1.5, 6.0))
        await run.kill_settlement()
        kills += 1
        if i == KILLS // 2:
            # A fast shutdown: open transactions abort, every connection is cut.
            await asyncio.to_thread(stack.kill, "postgres", signal.SIGINT)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(stack.start, "postgres")
    return kills


async def snapshot(run: Run, commands: int) -> dict:
    transfers = await run.query(
        "SELECT id, kind, debit_account_id, credit_account_id, amount_fen, pending_id, code,"
        " cause, linked, state FROM transfers ORDER BY id")  # fmt: skip
    accounts = await run.query(
        "SELECT id, kind, debits_pending_fen, debits_posted_fen, credits_pending_fen,"
        " credits_posted_fen FROM accounts ORDER BY id")  # fmt: skip
    decisions = await run.query(
        "SELECT command_id, outcome, reason, out_topics, out_keys, out_values FROM gate_decisions"
        " ORDER BY command_id")  # fmt: skip
    holds = await run.query(
        "SELECT load_id, state, hold_id, hold_fen, deal_id, carrier_id, price_fen FROM load_hold"
        " ORDER BY load_id")  # fmt: skip
    orders = await read_partitions(run.bootstrap, run.topic("orders"))
    forwarded = Counter(decode(v)["id"] for p in orders.values() for v in p
                        if decode(v)["type"] != "clock.tick")  # fmt: skip
    settlement = await read_partitions(run.bootstrap, run.topic("settlement"))
    events = {}
    for values in settlement.values():
        for v in values:
            events.setdefault(decode(v)["id"], v)
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from services.cli import app; app()", "ledger", "check",
        "--database-url", run.database_url, "--schema", run.schema, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    report = (await check.communicate())[0].decode()
    return {"transfers": [tuple(r) for r in transfers], "accounts": [tuple(r) for r in accounts],
            "decisions": [tuple(r) for r in decisions], "holds": [tuple(r) for r in holds],
            "forwarded": forwarded, "settlement_events": events, "check": (check.returncode, report),
            "starts": run.starts}  # fmt: skip


async def test_settlement_survives_kills_and_a_database_restart(kafka_bootstrap, database_url):
    own = await asyncio.to_thread(start_isolated, new_state_dir("settle-pg"),
                                  external_kafka=kafka_bootstrap,
                                  log=lambda m: print(f"[settle-pg] {m}"))  # fmt: skip
    runs = (
        Run("clean", kafka_bootstrap, database_url),
        Run("faulty", kafka_bootstrap, own.database_url),
    )
    try:
        clean, faulty = await asyncio.gather(
            run_exchange(runs[0], faults=False), run_exchange(runs[1], faults=True, stack=own)
        )
    finally:
        await asyncio.to_thread(stop_stack, own)
    assert faulty["starts"] > KILLS  # restarted after every kill
    assert clean["check"][0] == 0 and faulty["check"][0] == 0, (clean["check"], faulty["check"])
    for part in ("transfers", "accounts", "decisions", "holds"):
        assert faulty[part] == clean[part], f"{part} differ"
    assert len(clean["transfers"]) > 500
    # Every command the gate forwarded reached `orders` exactly once.
    assert set(faulty["forwarded"].values()) == {1}
    assert faulty["forwarded"] == clean["forwarded"]
    # At least once with stable ids: every settlement event, byte for byte, none lost.
    assert faulty["settlement_events"] == clean["settlement_events"]
    for run in runs:  # kept when an assertion fails: the messages name them
        shutil.rmtree(run.log_dir, ignore_errors=True)
