"""The simulation: N shippers and M carriers trading on a running exchange over its
public API, for a bounded time or number of loads, then winding down so that every load
is decided and every deal paid out (or the drain time ran out).

    result = await run(SimConfig(gateway_url, shippers=3, carriers=4, loads_max=50),
                       operator_key=key)
    result.tally.summary()

Participants are registered through the operator API (POST /v1/participants) with an
operator's key; `operator_key_from_database` makes one the way `wlex participants create`
does, straight in the gateway's tables.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from services.sim.api import Api
from services.sim.carrier import SimCarrier
from services.sim.orders import AuctionTiming
from services.sim.population import PARTICIPANTS_MAX, Population, populate
from services.sim.pricing import Reference, fen_text
from services.sim.shipper import SimShipper
from services.sim.tally import Tally

log = logging.getLogger(__name__)

RUN_MAX_S = 86_400.0  # a demo left running "until Ctrl-C" still stops after a day
LOADS_MAX = 1_000_000  # likewise in loads
START_TIMEOUT_S = 60.0  # registering, funding and connecting everyone


@dataclass
class SimConfig:
    gateway_url: str
    shippers: int = 3
    carriers: int = 4
    rate_per_s: float = 2.0  # loads per second, all shippers together
    duration_s: float | None = None  # of posting; None: until stopped (RUN_MAX_S at most)
    loads_max: int | None = None  # loads in all; None: LOADS_MAX
    seed: int = 1
    drain_s: float = 30.0  # winding down, at most
    progress_s: float = 5.0
    timing: AuctionTiming = field(default_factory=AuctionTiming)
    drive_s: tuple[float, float] = (0.5, 2.0)  # each leg of a simulated drive

    def __post_init__(self) -> None:
        for role, n in (("shippers", self.shippers), ("carriers", self.carriers)):
            if not 1 <= n <= PARTICIPANTS_MAX:
                raise ValueError(f"{role}: 1 to {PARTICIPANTS_MAX}")
        if not 0 < self.rate_per_s <= 100:
            raise ValueError("rate_per_s: above 0, at most 100")
        if self.loads_max is not None and not 0 <= self.loads_max <= LOADS_MAX:
            raise ValueError(f"loads_max: 0 to {LOADS_MAX}")


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    role: str
    participant_id: str
    api_key: str


@dataclass
class SimResult:
    tally: Tally
    population: Population
    shippers: list[Member]
    carriers: list[Member]
    elapsed_s: float
    drained: bool  # every load decided and every deal paid out before the drain ran out


def _never() -> bool:
    return False


async def run(
    config: SimConfig,
    *,
    operator_key: str,
    should_stop: Callable[[], bool] = _never,
    should_abort: Callable[[], bool] = _never,
    progress: Callable[[str], None] | None = None,
) -> SimResult:
    """Run the simulation. should_stop() ends the posting early (then it winds down);
    should_abort() also cuts the winding down short. progress gets the progress line
    every progress_s."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    tally = Tally()
    operator = Api(config.gateway_url, operator_key)
    shippers: list[SimShipper] = []
    carriers: list[SimCarrier] = []
    tasks: list[asyncio.Task] = []
    drained = False
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            reference = Reference.from_document(await operator.get("/v1/reference"))
            population = populate(reference, config.seed, config.shippers, config.carriers)
            for plan in population.shippers:
                pid, key = await _register(operator, "shipper", plan.name)
                shippers.append(
                    SimShipper(plan, pid, key, config.gateway_url, tally, config.timing)
                )
            for plan in population.carriers:
                pid, key = await _register(operator, "carrier", plan.name)
                carriers.append(
                    SimCarrier(plan, pid, key, config.gateway_url, tally, config.drive_s)
                )
            await asyncio.gather(*(c.start() for c in carriers))
            await asyncio.gather(*(s.deposit(s.plan.deposit_fen) for s in shippers))

        stop_posting, sweeps_done = asyncio.Event(), asyncio.Event()
        tasks += [asyncio.create_task(c.follow()) for c in carriers]
        tasks += [asyncio.create_task(s.watch(sweeps_done)) for s in shippers]
        if progress is not None:
            tasks.append(asyncio.create_task(_tick(progress, tally, config.progress_s, started)))
        gap_s = len(shippers) / config.rate_per_s
        posters = [
            asyncio.create_task(s.post_loads(quota, gap_s, stop_posting))
            for s, quota in zip(shippers, _quotas(config.loads_max, len(shippers)), strict=True)
        ]
        tasks += posters

        # Posting: until the quotas are posted, the duration is over, or we are told.
        deadline = started + min(config.duration_s or RUN_MAX_S, RUN_MAX_S)
        while not all(p.done() for p in posters):
            if should_stop() or should_abort() or loop.time() >= deadline:
                break
            await asyncio.wait(posters, timeout=0.2)
        stop_posting.set()
        for outcome in await asyncio.gather(*posters, return_exceptions=True):
            if isinstance(outcome, Exception):
                tally.errors["shipper"] += 1
                log.error("a shipper stopped posting: %r", outcome)

        # Winding down: cancel what still rests, let auctions close and trucks arrive.
        drain_deadline = loop.time() + config.drain_s
        for s in shippers:
            s.cancel_all()
        while loop.time() < drain_deadline and not should_abort():
            if _settled_down(tally, shippers, carriers):
                drained = True
                break
            await asyncio.sleep(0.2)
        sweeps_done.set()
        await asyncio.gather(*(c.finish(max(1.0, drain_deadline - loop.time()))
                               for c in carriers))  # fmt: skip
        drained = drained and _settled_down(tally, shippers, carriers)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in [*shippers, *carriers]), return_exceptions=True)
        await operator.close()
    return SimResult(
        tally=tally,
        population=population,
        shippers=[Member(s.plan.name, "shipper", s.participant_id, s.api_key) for s in shippers],
        carriers=[Member(c.plan.name, "carrier", c.participant_id, c.api_key) for c in carriers],
        elapsed_s=loop.time() - started,
        drained=drained,
    )


def _settled_down(tally: Tally, shippers: list[SimShipper], carriers: list[SimCarrier]) -> bool:
    """Every load decided, every dealt load's deal seen by its carrier, every delivery
    paid out."""
    return (
        all(not s.live for s in shippers)
        and tally.deals >= tally.matched
        and all(c.busy == 0 for c in carriers)
    )


def _quotas(loads_max: int | None, n: int) -> list[int]:
    """loads_max split over n shippers as evenly as it goes."""
    total = LOADS_MAX if loads_max is None else loads_max
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


async def _register(operator: Api, role: str, name: str) -> tuple[str, str]:
    created = await operator.post("/v1/participants", {"role": role, "name": name})
    return created["participant"]["participant_id"], created["api_key"]


async def _tick(progress: Callable[[str], None], tally: Tally, every_s: float, t0: float) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(int(RUN_MAX_S / every_s) + 2):  # bounded like the run itself
        await asyncio.sleep(every_s)
        progress(tally.line(loop.time() - t0))


def console_progress(stream: TextIO = sys.stdout) -> Callable[[str], None]:
    """A progress printer: rewrites one line on a terminal, one line each otherwise.
    Call it with "" at the end to finish the line."""
    tty = stream.isatty()

    def show(line: str) -> None:
        if tty:
            stream.write("\r\x1b[2K" + line if line else "\n")
        elif line:
            stream.write(line + "\n")
        stream.flush()

    return show


async def operator_key_from_database(database_url: str, schema: str,
                                     name: str = "wlex sim operator") -> str:  # fmt: skip
    """A new operator's API key, made as `wlex participants create --role operator`
    makes it: in the gateway's tables (schema), after its migrations."""
    from services.common import db
    from services.gateway import registry

    pool = await db.create_pool(database_url, schema=schema, max_size=1,
                                application_name="wlex-sim")  # fmt: skip
    try:
        await db.migrate(pool, "gateway")
        async with pool.acquire() as conn:
            _, key = await registry.create(conn, "operator", name, time.time_ns() // 1_000_000)
    finally:
        await db.close_pool(pool)
    return key


def summary_lines(result: SimResult) -> list[str]:
    """The end-of-run summary, for people."""
    t = result.tally

    def why(counts) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})" if counts else ""

    lines = [
        f"simulation: {len(result.shippers)} shippers, {len(result.carriers)} carriers, "
        f"{len(result.population.lanes)} lanes, {result.elapsed_s:.0f} s"
        + ("" if result.drained else " (stopped before every deal was paid out)"),
        f"  loads    {t.posted} posted ({t.auctions} auctions): {t.matched} matched, "
        f"{sum(t.rejected.values())} rejected{why(t.rejected)}, {t.cancelled} cancelled, "
        f"{t.expired} expired",
        f"  carriers {t.offers} offers, {t.bids} bids, "
        f"{sum(t.bids_refused.values())} bids refused{why(t.bids_refused)}",
        f"  deals    {t.deals} made ({fen_text(t.deal_value_fen)} yuan), "
        f"{t.picked_up} picked up, {t.delivered} delivered, {t.settled} settled",
        f"  money    {fen_text(t.deposited_fen)} yuan deposited, "
        f"{fen_text(t.payout_fen)} yuan paid to carriers, "
        f"{fen_text(t.fees_fen)} yuan fees earned",
    ]
    if t.refused or t.errors:
        lines.append(f"  refused by the gateway{why(t.refused) or ' none'}; "
                     f"failed requests{why(t.errors) or ' none'}")  # fmt: skip
    return lines
