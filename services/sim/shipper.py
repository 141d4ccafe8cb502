"""A simulated shipper: deposits, posts market and auction loads through the SDK's
ShipperClient at its pace, cancels the loads it changes its mind about or that no
carrier took within its patience, tops its account up when it runs low, and reads back
how each load ended. Pickups and deliveries are the carriers' business."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import httpx

from services.sdk.shipper import ApiError, ShipperClient
from services.sim import orders
from services.sim.api import Api
from services.sim.population import ShipperPlan
from services.sim.tally import Tally

log = logging.getLogger(__name__)

WAITING = ("requested", "open")  # a load the exchange has not finished with
LIVE_MAX = 500  # loads not yet decided; past it the shipper waits before posting more
PAGES_MAX = 10  # of 100 loads per status per sweep
DEPOSIT_WAIT_S = 60.0
TOP_UP_EVERY = 10  # loads between two looks at the balance


@dataclass
class Live:
    """A load of ours the exchange has not finished with."""

    mode: str
    cancel_at: float  # monotonic s: cancel it then if still open (market loads only)
    cancel_sent: bool = False


class SimShipper:
    def __init__(self, plan: ShipperPlan, participant_id: str, api_key: str, gateway_url: str,
                 tally: Tally, timing: orders.AuctionTiming) -> None:  # fmt: skip
        self.plan = plan
        self.participant_id = participant_id
        self.api_key = api_key
        self.tally = tally
        self.timing = timing
        self.rng = random.Random(plan.seed)
        self.client = ShipperClient(gateway_url, api_key)
        self.api = Api(gateway_url, api_key)
        self.live: dict[str, Live] = {}
        self.posted = 0
        self.deposits = 0

    async def close(self) -> None:
        await self.client.close()
        await self.api.close()

    # ------------------------------------------------------------------ money

    async def deposit(self, amount_fen: int) -> bool:
        """POST /v1/deposits and wait until the funding gate booked it; True if it did."""
        self.deposits += 1
        req = await self.api.post("/v1/deposits", {
            "amount_fen": amount_fen, "bank_ref": f"SIM-{self.participant_id}-{self.deposits}",
        })  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEPOSIT_WAIT_S
        while loop.time() < deadline:
            money = await self.api.get(f"/v1/money/{req['request_id']}")
            if money["status"] != "requested":
                if money["status"] == "completed":
                    self.tally.deposited_fen += amount_fen
                    return True
                log.warning("deposit of %s refused: %s", self.plan.name, money)
                return False
            await asyncio.sleep(0.2)
        log.warning("deposit of %s not booked within %.0f s", self.plan.name, DEPOSIT_WAIT_S)
        return False

    async def _top_up(self) -> None:
        if not self.plan.top_up_fen:
            return
        account = await self.api.get("/v1/account")
        if account["available_fen"] < self.plan.low_water_fen:
            await self.deposit(self.plan.top_up_fen)

    # ------------------------------------------------------------------ loads

    async def post_loads(self, quota: int, mean_gap_s: float, stop: asyncio.Event) -> None:
        """Post up to quota loads, one every mean_gap_s on average (exponential gaps),
        until stop is set."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        for n in range(quota):
            # Paced by a schedule, not by sleeps after each request, so the time a
            # request takes does not lower the rate; a late shipper does not burst.
            due = max(due, loop.time() - mean_gap_s)
            due += min(5 * mean_gap_s, self.rng.expovariate(1.0 / mean_gap_s))
            if await _wait(stop, max(0.0, due - loop.time())):
                return
            for _ in range(600):  # bounded: a minute of back-pressure at most
                if len(self.live) < LIVE_MAX or stop.is_set():
                    break
                await asyncio.sleep(0.1)
            if stop.is_set():
                return
            if n and n % TOP_UP_EVERY == 0:
                await self._guard("top_up", self._top_up())
            await self._guard("post", self.post_one())

    async def post_one(self) -> None:
        lane = self.rng.choice(self.plan.lanes)
        body = orders.load_body(self.rng, self.plan, lane, _now_ms(), self.timing)
        try:
            accepted = await self.client.post_load(body)
        except ApiError as exc:
            self.tally.refused[exc.reason or str(exc.status)] += 1
            return
        self.posted += 1
        self.tally.posted += 1
        now = time.monotonic()
        if body["mode"] == "auction":
            self.tally.auctions += 1
            self.live[accepted["load_id"]] = Live("auction", float("inf"))
            return
        if self.rng.randint(1, 1000) <= self.plan.cancel_permille:
            cancel_at = now + self.rng.uniform(1.0, 5.0)  # a change of plans
        else:
            cancel_at = now + self.plan.patience_s  # no truck came
        self.live[accepted["load_id"]] = Live("market", cancel_at)

    def cancel_all(self) -> None:
        """Winding down: every open market load is cancelled at the next sweep."""
        for live in self.live.values():
            live.cancel_at = min(live.cancel_at, 0.0)

    async def sweep(self) -> None:
        """Find which of our loads are still waiting (GET /v1/loads by status), cancel the
        open market loads whose time has come, and count the others' outcomes."""
        if not self.live:
            return
        waiting: dict[str, dict] = {}
        for status in WAITING:
            cursor = None
            for _ in range(PAGES_MAX):
                params = {"status": status, "limit": 100}
                if cursor:
                    params["cursor"] = cursor
                page = await self.api.get("/v1/loads", params)
                waiting.update((item["load_id"], item) for item in page["items"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        now = time.monotonic()
        for load_id, live in list(self.live.items()):
            item = waiting.get(load_id)
            if item is None:
                load = await self.client.get_load(load_id)
                if load["status"] not in WAITING:
                    del self.live[load_id]
                    self.tally.resolve(load)
            elif live.mode == "market" and item["status"] == "open" and not live.cancel_sent \
                    and now >= live.cancel_at:  # fmt: skip
                live.cancel_sent = True
                self.tally.cancels_sent += 1
                # A load dealt meanwhile makes the cancel a refused one: nothing changes.
                await self._guard("cancel", self.api.post(f"/v1/loads/{load_id}/cancel"))

    async def watch(self, done: asyncio.Event, every_s: float = 1.0) -> None:
        """Sweep every every_s until done is set."""
        while not await _wait(done, every_s):
            await self._guard("sweep", self.sweep())

    async def _guard(self, what: str, work) -> None:
        # One failed request must not end a participant: count it and go on.
        try:
            await work
        except (ApiError, httpx.HTTPError, TimeoutError) as exc:
            self.tally.errors[what] += 1
            log.info("%s of %s failed: %s", what, self.plan.name, exc)


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to timeout_s for event; True if it is set."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
