"""A simulated carrier on the SDK's CarrierClient: it keeps a truck offered on each of
its lanes, answers a market load left resting on its lane with an offer that takes it
(when the limit covers its cost), bids on the auctions of its lanes with one of the
SDK's strategies, and for every deal drives: pickup after a short simulated drive, then
delivered with a proof of delivery, then waits for the payout."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Any

import httpx

from services.sdk.carrier import CarrierClient, CommandError, StreamClosed
from services.sdk.shipper import ApiError
from services.sdk.strategies import Fixed, Strategy, Undercut
from services.sim import orders
from services.sim.api import Api
from services.sim.population import CarrierPlan, Lane
from services.sim.tally import Tally

log = logging.getLogger(__name__)

# The gateway's read model may not hold the deal yet when its deal.made reaches the
# stream: "not found" and "wrong state" then mean "not yet".
NOT_YET = frozenset({"not_found", "deal_state"})
SETTLE_WAIT_S = 60.0
COMMANDS_MAX = 16  # in flight on the socket at once (the gateway's own limit)
REMEMBER_MAX = 10_000  # deal ids and rejected refs kept to tell repeats apart


class SimCarrier:
    def __init__(self, plan: CarrierPlan, participant_id: str, api_key: str, gateway_url: str,
                 tally: Tally, drive_s: tuple[float, float]) -> None:  # fmt: skip
        self.plan = plan
        self.participant_id = participant_id
        self.api_key = api_key
        self.tally = tally
        self.drive_s = drive_s
        self.rng = random.Random(plan.seed)
        self.lanes = {lane.key: lane for lane in plan.lanes}
        self.strategies: dict[str, Strategy] = {k: self._strategy(v) for k, v in self.lanes.items()}
        self.client = CarrierClient(gateway_url, api_key, lanes=list(self.lanes))
        self.api = Api(gateway_url, api_key)
        self.offers: dict[str, str] = {}  # offer id -> lane key, offered or resting
        self.offers_max = len(self.lanes) + plan.trucks
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.gone_early: collections.deque[str] = collections.deque(maxlen=256)
        self.trucks = asyncio.Semaphore(plan.trucks)
        self.commands = asyncio.Semaphore(COMMANDS_MAX)
        self.tasks: set[asyncio.Task] = set()
        self.deliveries: set[asyncio.Task] = set()
        self.offering = True
        self.bidding = True

    def _strategy(self, lane: Lane) -> Strategy:
        start = orders.ask_fen(self.rng, self.plan, lane)
        if self.plan.strategy == "fixed":
            return Fixed(start)
        step = max(100, lane.rate_fen // 100 // 100 * 100)  # about 1 %, whole yuan
        return Undercut(step_fen=step, floor_fen=orders.floor_fen(self.plan, lane),
                        start_fen=start)  # fmt: skip

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Connect to the stream (subscribed to its lanes), then offer a truck on each."""
        await self.client.connect()
        for lane in self.lanes.values():
            self._spawn(self._offer(lane, orders.ask_fen(self.rng, self.plan, lane)))

    async def follow(self) -> None:
        """Act on the stream's frames until it closes or the task is cancelled."""
        try:
            async for frame in self.client.events():
                try:
                    self.on_frame(frame)
                except Exception:  # one odd frame must not deafen the carrier
                    self.tally.errors["frame"] += 1
                    log.exception("%s could not handle %s", self.plan.name, frame)
        except StreamClosed as exc:
            if exc.reason != "closed":
                log.warning("stream of %s closed: %s", self.plan.name, exc)

    async def finish(self, timeout_s: float) -> None:
        """Wind down: no new offers or bids, cancel the offers still resting, finish the
        deliveries under way (at most timeout_s), close the stream."""
        self.offering = self.bidding = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for offer_id in list(self.offers):
            self._spawn(self._cancel_offer(offer_id))
        pending = self.tasks | self.deliveries
        if pending:
            await asyncio.wait(pending, timeout=max(0.1, deadline - loop.time()))

    async def close(self) -> None:
        for task in self.tasks | self.deliveries:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.deliveries, return_exceptions=True)
        await self.client.close()
        await self.api.close()

    @property
    def busy(self) -> int:
        """Deliveries not yet paid out."""
        return len(self.deliveries)

    # ------------------------------------------------------------------ the stream

    def on_frame(self, frame: dict[str, Any]) -> None:
        event = frame["event"]
        kind, data, key = event["type"], event["data"], event.get("key")
        if kind == "deal.made":
            self._on_deal(data)
        elif kind == "load.rested":
            self._on_rested(key, frame.get("load") or {}, data)
        elif kind in ("order.rejected", "order.cancelled", "order.expired"):
            self._on_gone(kind, data)
        if self.bidding and key in self.strategies:
            for load_id, price in self.strategies[key].on_event(frame):
                self._spawn(self._bid(load_id, price))

    def _on_deal(self, data: dict[str, Any]) -> None:
        if data["carrier_id"] != self.participant_id or data["deal_id"] in self.seen:
            return
        self._remember(data["deal_id"])
        self.tally.deals += 1
        self.tally.deal_value_fen += data["price_fen"]
        lane_key = self.offers.pop(data.get("offer_id") or "", None)
        task = asyncio.create_task(self._drive(data, lane_key), name="wlex sim delivery")
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)

    def _on_rested(self, key: str | None, load: dict[str, Any], data: dict[str, Any]) -> None:
        lane = self.lanes.get(key or "")
        limit = load.get("limit_fen")
        if lane is None or limit is None or not self.offering:
            return
        if len(self.offers) >= self.offers_max:
            return  # every truck is already offered
        ask = orders.spot_ask_fen(self.rng, self.plan, lane, limit)
        if ask is not None:
            self._spawn(self._offer(lane, ask))

    def _on_gone(self, kind: str, data: dict[str, Any]) -> None:
        ref = data.get("ref_id")
        if ref is None:
            return
        lane_key = self.offers.pop(ref, None)
        if lane_key is None:
            if kind == "order.rejected":
                # Only our own orders' rejections reach us: not an offer, so a bid (or
                # an offer whose ack is still on its way).
                self.gone_early.append(ref)
                self.tally.bids_refused[data.get("reason") or "unknown"] += 1
            return
        if kind == "order.rejected":
            self.tally.offers_refused[data.get("reason") or "unknown"] += 1
        elif kind == "order.expired" and self.offering:
            # The truck's window closed with no load: offer it again.
            lane = self.lanes[lane_key]
            self._spawn(self._offer(lane, orders.ask_fen(self.rng, self.plan, lane)))

    # ------------------------------------------------------------------ commands

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _offer(self, lane: Lane, ask: int) -> None:
        body = orders.offer_body(lane, _now_ms(), ask)
        try:
            async with self.commands:
                ack = await self.client.offer(**body)
        except (CommandError, StreamClosed, TimeoutError) as exc:
            self.tally.errors["offer"] += 1
            log.info("offer of %s refused: %s", self.plan.name, exc)
            return
        self.tally.offers += 1
        if ack["offer_id"] not in self.gone_early:
            self.offers[ack["offer_id"]] = lane.key

    async def _cancel_offer(self, offer_id: str) -> None:
        try:
            async with self.commands:
                await self.client.cancel_offer(offer_id)
        except (CommandError, StreamClosed, TimeoutError) as exc:
            log.info("cancel of %s's offer refused: %s", self.plan.name, exc)

    async def _bid(self, load_id: str, price_fen: int) -> None:
        try:
            async with self.commands:
                await self.client.bid(load_id, price_fen)
        except CommandError as exc:
            self.tally.bids_refused[exc.reason or "unknown"] += 1
            return
        except (StreamClosed, TimeoutError) as exc:
            self.tally.errors["bid"] += 1
            log.info("bid of %s failed: %s", self.plan.name, exc)
            return
        self.tally.bids += 1

    # ------------------------------------------------------------------ deliveries

    async def _drive(self, deal: dict[str, Any], lane_key: str | None) -> None:
        deal_id = deal["deal_id"]
        try:
            async with self.trucks:
                await asyncio.sleep(self.rng.uniform(*self.drive_s))  # to the shipper
                await self.api.post(
                    f"/v1/deals/{deal_id}/pickup",
                    idempotency_key=f"pickup-{deal_id}",
                    retry_reasons=NOT_YET,
                )
                self.tally.picked_up += 1
                await asyncio.sleep(self.rng.uniform(*self.drive_s))  # on the road
                await self.api.post(
                    f"/v1/deals/{deal_id}/delivered",
                    {"proof_ref": f"POD-{deal['load_id']}"},
                    idempotency_key=f"delivered-{deal_id}",
                    retry_reasons=NOT_YET,
                )
                self.tally.delivered += 1
            if lane_key is not None and self.offering:
                # The truck is back: offer it on its lane again.
                lane = self.lanes[lane_key]
                self._spawn(self._offer(lane, orders.ask_fen(self.rng, self.plan, lane)))
            await self._await_payout(deal_id)
        except (ApiError, httpx.HTTPError) as exc:
            self.tally.errors["delivery"] += 1
            log.warning("delivery of %s by %s failed: %s", deal_id, self.plan.name, exc)

    async def _await_payout(self, deal_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_WAIT_S
        while loop.time() < deadline:
            deal = await self.api.get(f"/v1/deals/{deal_id}")
            settlement = deal.get("settlement") or {}
            if settlement.get("settled_at") is not None:
                self.tally.settle(deal)
                return
            await asyncio.sleep(0.5)
        self.tally.errors["payout_wait"] += 1

    def _remember(self, deal_id: str) -> None:
        self.seen[deal_id] = None
        if len(self.seen) > REMEMBER_MAX:
            self.seen.popitem(last=False)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
