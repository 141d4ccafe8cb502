"""The ledger in the real PostgreSQL: the same results and balances as the pure rules,
retries that change nothing, two instances at once, and a check that finds a bad row."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest
from typer.testing import CliRunner

from services.common import db
from services.settlement import check as C
from services.settlement import ledger as L
from services.settlement import postings as P
from services.settlement.cli import app as ledger_cli
from services.settlement.store import LedgerStore, apply_in
from tests.unit.settlement.scenarios import Scenario, chart

pytestmark = pytest.mark.integration


@pytest.fixture
async def unchecked_pool(database_url, pg_schema):
    p = await db.create_pool(database_url, schema=pg_schema, max_size=4)
    await LedgerStore(p).migrate()
    yield p
    await db.close_pool(p)


@pytest.fixture
async def pool(unchecked_pool):
    """The ledger's schema; after the test, whatever it did, every invariant must hold."""
    yield unchecked_pool
    report = await check(unchecked_pool)
    assert report.ok, report.to_text()


@pytest.fixture
async def store(pool):
    s = LedgerStore(pool)
    assert await s.open_accounts(chart()) == [L.OK] * len(chart())
    return s


async def check(pool) -> C.Report:
    async with pool.acquire() as conn:
        return await C.check_database(conn)


def same_books(mine: L.Ledger, theirs: L.Ledger) -> None:
    assert {a.id: a.balances() for a in mine.accounts.values()} == {
        a.id: a.balances() for a in theirs.accounts.values()}  # fmt: skip
    assert mine.pending_states == theirs.pending_states
    assert mine.transfers == theirs.transfers


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_store_gives_the_results_and_balances_of_the_pure_rules(store, pool, seed):
    pure = L.Ledger(chart())
    rng = random.Random(seed)
    scenario = Scenario(rng.randint, lambda p: pure.accounts[P.cash_account_id(p)].available_fen)
    history = []
    for _ in range(60):
        batch = scenario.batch(size_max=10)
        expected = pure.apply(batch)
        assert await store.apply(batch) == expected
        history.append((batch, expected))
    assert L.OK in {r for _, rs in history for r in rs} and len(pure.transfers) > 40
    same_books(await store.load(), pure)
    assert (await check(pool)).ok

    # Every batch again, as a settler restarted from older offsets would: nothing moves.
    for batch, first in history:
        again = await store.apply(batch)
        assert again == pure.apply(batch)
        assert all(a == L.EXISTS for f, a in zip(first, again, strict=True) if f == L.OK)
    same_books(await store.load(), pure)
    assert (await check(pool)).ok


async def test_a_batch_applies_inside_the_callers_transaction(store, pool):
    """The settler's inbox row and the ledger change commit together or not at all."""
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                assert await apply_in(conn, P.deposit("d1", "p0", 500, "d1")) == [L.OK]
                raise RuntimeError("the inbox insert failed")
    assert (await store.accounts(["cash:p0"]))[0].credits_posted_fen == 0
    assert await store.apply(P.deposit("d1", "p0", 500, "d1")) == [L.OK]


def stream(
    name: str, shippers: list[str], carriers: list[str], steps: int, seed: int
) -> list[list[L.Transfer]]:
    """Batches of a settler: holds, then re-sizes, deliveries and releases of earlier ones."""
    rng = random.Random(seed)
    fees = P.FeeSchedule(150, 500)
    batches, placed, dealt = [], [], []
    for n in range(steps):
        batch = []
        for hold_id in dealt:
            ev = f"{hold_id}:end"
            if rng.random() < 0.2:
                batch += P.release_hold(ev, hold_id)
            else:
                price = rng.randint(1_000, 9_000)
                batch += P.settle(ev, hold_id, rng.choice(carriers), price, fees.fee_fen(price))
        dealt = []
        for load in placed:
            batch += P.resize_hold(f"{load}:deal", f"{load}:hold", load.split("/")[1], 9_000)
            dealt.append(f"{load}:deal:hold")
        placed = []
        for k in range(rng.randint(5, 30)):
            load = f"{name}{n}.{k}/{rng.choice(shippers)}"
            batch += P.hold(load, load.split("/")[1], 10_000)
            placed.append(load)
        batches.append(batch)
    return batches


async def test_two_instances_at_once_apply_each_transfer_once_and_keep_balances_right(
    database_url, pg_schema, pool
):
    shippers = [f"s{i}" for i in range(12)]
    carriers = [f"c{i}" for i in range(4)]
    setup = LedgerStore(pool)
    accounts = P.platform_accounts() + [
        a for p in shippers + carriers for a in P.participant_accounts(p)
    ]
    await setup.open_accounts(accounts)
    funding = [t for s in shippers for t in P.deposit(f"fund-{s}", s, 10_000_000, f"fund-{s}")]
    assert await setup.apply(funding) == [L.OK] * len(funding)

    shared = stream("shared", shippers, carriers, 12, seed=7)  # both instances get these
    own = [stream(f"own{i}", shippers, carriers, 12, seed=i) for i in range(2)]
    pools = [await db.create_pool(database_url, schema=pg_schema, max_size=3) for _ in range(2)]
    outcomes: dict[str, list[str]] = {}
    try:

        async def run(store: LedgerStore, batches: list[list[L.Transfer]]) -> None:
            for batch in batches:
                for t, r in zip(batch, await store.apply(batch), strict=True):
                    outcomes.setdefault(t.id, []).append(r)

        stores = [LedgerStore(p) for p in pools]
        await asyncio.gather(
            *(run(s, shared) for s in stores),
            *(run(s, b) for s, b in zip(stores, own, strict=True)),
        )
    finally:
        for p in pools:
            await db.close_pool(p)

    for tid, results in outcomes.items():
        assert results.count(L.OK) == 1, (tid, results)
    shared_ids = {t.id for b in shared for t in b}
    assert all(sorted(outcomes[t]) == [L.EXISTS, L.OK] for t in shared_ids)

    pure = L.Ledger(accounts)
    pure.apply(funding)
    for batches in (shared, *own):
        for b in batches:
            assert set(pure.apply(b)) == {L.OK}
    got = await setup.load()
    assert {a.id: a.balances() for a in got.accounts.values()} == {
        a.id: a.balances() for a in pure.accounts.values()}  # fmt: skip
    assert got.pending_states == pure.pending_states
    report = await check(pool)
    assert report.ok, report.to_text()


async def test_an_id_two_instances_both_thought_new_is_applied_once(store, pool):
    """Disjoint accounts, so no lock orders them: the primary key does, and the loser's
    batch runs again and sees what the winner did."""
    await store.apply(P.deposit("d0", "p0", 1_000, "d0") + P.deposit("d2", "p2", 1_000, "d2"))
    first = L.Transfer("x", L.SINGLE_PHASE, "cash:p0", "cash:p1", 100)
    second = L.Transfer("x", L.SINGLE_PHASE, "cash:p2", "premiums:p2", 100)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await apply_in(conn, [first]) == [L.OK]
        racing = asyncio.create_task(store.apply([second]))
        await asyncio.sleep(0.5)  # it blocks on the uncommitted key
        assert not racing.done()
        await tx.commit()
    assert await racing == [L.EXISTS_WITH_DIFFERENT_FIELDS]
    balances = {a.id: a.credits_posted_fen - a.debits_posted_fen for a in await store.accounts()}
    assert (balances["cash:p0"], balances["cash:p1"], balances["cash:p2"]) == (900, 100, 1_000)
    assert (await check(pool)).ok


async def test_the_database_refuses_a_participant_below_zero_even_around_the_rules(store, pool):
    await store.apply(P.deposit("d", "p0", 1_000, "d"))
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE accounts SET debits_posted_fen = 1001 WHERE id = 'cash:p0'")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount_fen,"
                " pending_id, code, cause, linked) VALUES ('a', 'void_pending', 'x', 'y', 1, 'h', '', '', false),"
                " ('b', 'post_pending', 'x', 'y', 1, 'h', '', '', false)")  # fmt: skip


async def test_check_and_cli_find_a_corrupted_row(unchecked_pool, database_url, pg_schema):
    pool = unchecked_pool
    store = LedgerStore(pool)
    await store.open_accounts(chart())
    await store.apply(
        P.deposit("d", "p0", 10_000, "d") + P.hold("l", "p0", 4_000) + P.hold("m", "p0", 1_000)
    )
    await store.apply(P.settle("x", "l:hold", "p1", 4_000, 500))
    # No hold left live: the CLI also runs the settler's hooks, and a live hold with no
    # load behind it is a violation of its own (hold_belongs_to_live_order).
    await store.apply(P.release_hold("r", "m:hold"))
    runner = CliRunner()
    args = ["check", "--database-url", database_url, "--schema", pg_schema]
    result = await asyncio.to_thread(runner.invoke, ledger_cli, args)
    assert result.exit_code == 0, result.output
    assert "ok" in result.output

    async with pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET credits_posted_fen = credits_posted_fen + 1"
                           " WHERE id = 'cash:p1'")  # fmt: skip
        await conn.execute("UPDATE transfers SET state = 'pending' WHERE id = 'l:hold'")
    report = await check(pool)
    assert not report.ok
    counts = {k: v for k, v in report.counts.items() if v}
    assert counts == {
        C.DEBITS_EQUAL_CREDITS: 1,
        C.BALANCES_MATCH_TRANSFERS: 3,
        C.PENDING_RESOLVED_ONCE: 1,
    }
    assert {v.subject for v in report.violations} >= {"cash:p1", "l:hold", "ledger"}

    result = await asyncio.to_thread(runner.invoke, ledger_cli, [*args, "--json"])
    assert result.exit_code == 1
    assert '"ok": false' in result.output and "cash:p1" in result.output


async def test_cli_says_when_there_is_no_ledger_to_check(database_url, pg_schema):
    result = await asyncio.to_thread(
        CliRunner().invoke,
        ledger_cli,
        ["check", "--database-url", database_url, "--schema", pg_schema],
    )
    assert result.exit_code == 2
