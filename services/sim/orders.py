"""Bodies of the simulated participants' requests, pure: (random source, lane, now) in,
the JSON of POST /v1/loads or of an offer out. Times are epoch ms, money integer fen,
exactly as the gateway takes them (docs/gateway.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from services.sim.population import CarrierPlan, Lane, ShipperPlan
from services.sim.pricing import noisy_fen

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

GENERAL_CARGO = ("general", "building-materials", "machinery", "electronics", "textiles",
                 "agricultural", "auto-parts", "paper")  # fmt: skip
BODY_CARGO = {
    "refrigerated": ("food-chilled", "pharmaceuticals"),
    "tanker": ("liquid-bulk",),
    "hazmat": ("chemicals-hazardous",),
}
LIMIT_FACTOR, LIMIT_SIGMA = 1.08, 0.08  # a shipper's limit: a bit above the going rate
RESERVE_FACTOR, RESERVE_SIGMA = 1.15, 0.05
INSTANT_PERMILLE = (820, 900)  # instant-book price, of the going rate
ASK_SIGMA = 0.04
# An hour: longer than any load's pickup lead, short enough that an offer left behind by
# a killed run soon expires.
OFFER_WINDOW_MS = 60 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class AuctionTiming:
    """How long a simulated auction stays open (the demo wants to see them close)."""

    open_ms_min: int = 4_000
    open_ms_max: int = 10_000


def load_body(
    rng: random.Random,
    plan: ShipperPlan,
    lane: Lane,
    now_ms: int,
    timing: AuctionTiming = AuctionTiming(),
) -> dict[str, Any]:
    """A load on lane: most of a truck, picked up within the next hours, as a market
    load with a limit or (auction_permille of the time) an open or sealed reverse
    auction with a reserve and sometimes an instant-book price."""
    share = rng.uniform(0.4, 0.95)
    weight_kg = max(1, int(lane.capacity_kg * share))
    volume_dm3 = max(1, int(lane.capacity_dm3 * share * rng.uniform(0.6, 1.0)))
    pickup_from = now_ms + rng.randint(1, 10) * MINUTE_MS
    pickup_to = pickup_from + rng.randint(2, 4) * HOUR_MS
    body: dict[str, Any] = {
        "lane": lane.as_body(),
        "weight_kg": weight_kg,
        "volume_dm3": volume_dm3,
        "cargo_category": rng.choice(BODY_CARGO.get(lane.body, GENERAL_CARGO)),
        "pickup_from": pickup_from,
        "pickup_to": pickup_to,
        # A truck makes about 50 km an hour, rests included, plus half a day of slack.
        "deliver_by": pickup_to + (lane.road_km * HOUR_MS) // 50 + 12 * HOUR_MS,
        "declared_value_fen": weight_kg * rng.randint(5, 80) * 100,
    }
    if rng.randint(1, 1000) > plan.auction_permille:
        body["mode"] = "market"
        body["limit_fen"] = noisy_fen(rng, lane.rate_fen, LIMIT_FACTOR, LIMIT_SIGMA)
        return body
    reserve_fen = noisy_fen(rng, lane.rate_fen, RESERVE_FACTOR, RESERVE_SIGMA)
    instant_fen = None
    if rng.random() < 0.25:
        instant_fen = min(reserve_fen, lane.rate_fen * rng.randint(*INSTANT_PERMILLE) // 1000)
    body["mode"] = "auction"
    body["auction"] = {
        "closes_at": now_ms + rng.randint(timing.open_ms_min, timing.open_ms_max),
        "reserve_fen": reserve_fen,
        "instant_fen": instant_fen,
        "sealed": rng.random() < 0.2,
    }
    return body


def floor_fen(plan: CarrierPlan, lane: Lane) -> int:
    """The least the carrier takes for a trip on lane: its cost."""
    return lane.rate_fen * plan.floor_permille // 1000


def ask_fen(rng: random.Random, plan: CarrierPlan, lane: Lane) -> int:
    """What the carrier asks on lane this time: its usual margin with a little noise,
    never under its floor."""
    return max(floor_fen(plan, lane),
               noisy_fen(rng, lane.rate_fen, plan.ask_permille / 1000, ASK_SIGMA))  # fmt: skip


def offer_body(lane: Lane, now_ms: int, ask: int) -> dict[str, Any]:
    """One truck of the lane's class, free from now for OFFER_WINDOW_MS, at a flat ask.
    Not consolidating: a truck carries one load per trip in the simulation."""
    return {
        "lane": lane.as_body(),
        "capacity_kg": lane.capacity_kg,
        "capacity_dm3": lane.capacity_dm3,
        "available_from": now_ms,
        "available_to": now_ms + OFFER_WINDOW_MS,
        "ask_fen": ask,
        "consolidate": False,
    }


def spot_ask_fen(rng: random.Random, plan: CarrierPlan, lane: Lane, limit: int) -> int | None:
    """The ask of an offer made for a market load resting at limit: its usual ask, cut
    to the limit so the offer takes the load; None when the limit is under its floor."""
    if limit < floor_fen(plan, lane):
        return None
    return min(limit, ask_fen(rng, plan, lane))
