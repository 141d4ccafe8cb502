"""Who trades on which lanes, pure: a seed and the reference document in, plans out.

The same (seed, shippers, carriers, reference) always gives the same participants, lanes
and temperaments, so a demo run that shows something odd can be run again. Lanes leave
the 17 Hubei prefectures (Wuhan most often) for another prefecture or, less often, a
national hub; every lane has at least one shipper and, when there are two carriers or
more, at least two carriers, so auctions see competition.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.sim.pricing import Reference

HOME_PROVINCE = "Hubei"
# How much freight leaves a prefecture relative to the others (the big cities more).
ORIGIN_WEIGHT = {"420100": 6.0, "420500": 2.0, "420600": 2.0, "421000": 1.5, "420800": 1.2}
HUB_SHARE = 0.3  # share of lanes that leave the province for a national hub
# The trucks the simulation trades, with how common each is.
CLASS_WEIGHT = {
    "van-9.6": 5.0,
    "van-6.8": 3.0,
    "van-4.2": 2.0,
    "high-rail-9.6": 3.0,
    "high-rail-13": 3.0,
    "flatbed-13": 1.5,
    "refrigerated-9.6": 1.5,
    "container-13": 1.0,
}
LANES_MIN, LANES_MAX = 3, 24
PARTICIPANTS_MAX = 50  # per role: the demo is a demo, not a load test

SHIPPER_TRADES = ("Grain", "Steel", "Auto Parts", "Textiles", "Chemicals", "Electronics",
                  "Paper", "Cement", "Fruit", "Machinery")  # fmt: skip
CARRIER_TRADES = ("Freight", "Logistics", "Transport", "Haulage", "Express", "Trucking")


@dataclass(frozen=True, slots=True)
class Lane:
    origin: str
    destination: str
    vehicle_class: str
    road_km: int
    rate_fen: int  # the going rate of one truck on it (pricing.rate_fen)
    capacity_kg: int
    capacity_dm3: int
    body: str

    @property
    def key(self) -> str:
        """The lane key of the engine and the stream: origin>destination>class."""
        return f"{self.origin}>{self.destination}>{self.vehicle_class}"

    def as_body(self) -> dict[str, str]:
        return {
            "origin": self.origin,
            "destination": self.destination,
            "vehicle_class": self.vehicle_class,
        }


@dataclass(frozen=True, slots=True)
class ShipperPlan:
    index: int
    name: str
    lanes: tuple[Lane, ...]
    deposit_fen: int  # the first deposit
    top_up_fen: int  # deposited again when the balance runs low; 0: never
    low_water_fen: int  # the balance under which it tops up
    auction_permille: int  # share of its loads posted as auctions
    cancel_permille: int  # share of its market loads it changes its mind about
    patience_s: float  # an open market load no carrier took by then is cancelled
    seed: int


@dataclass(frozen=True, slots=True)
class CarrierPlan:
    index: int
    name: str
    lanes: tuple[Lane, ...]
    strategy: str  # "undercut" or "fixed" (services.sdk.strategies)
    floor_permille: int  # its cost: never a price below rate * floor / 1000
    ask_permille: int  # what it asks of a fair rate
    trucks: int  # deliveries it drives at once
    seed: int


@dataclass(frozen=True, slots=True)
class Population:
    lanes: tuple[Lane, ...]
    shippers: tuple[ShipperPlan, ...]
    carriers: tuple[CarrierPlan, ...]


def populate(reference: Reference, seed: int, shippers: int, carriers: int) -> Population:
    """Plans of `shippers` shippers and `carriers` carriers (1 to PARTICIPANTS_MAX each)
    and the lanes they share; a pure function of its arguments."""
    for role, n in (("shippers", shippers), ("carriers", carriers)):
        if not 1 <= n <= PARTICIPANTS_MAX:
            raise ValueError(f"{role}: 1 to {PARTICIPANTS_MAX}, not {n}")
    rng = random.Random(seed)
    lanes = draw_lanes(reference, rng, min(LANES_MAX, max(LANES_MIN, shippers + carriers)))
    names = {code: r["name"] for code, r in reference.regions.items()}
    return Population(
        lanes=lanes,
        shippers=tuple(_shipper(rng, i, shippers, lanes, names) for i in range(shippers)),
        carriers=tuple(_carrier(rng, i, carriers, lanes, names) for i in range(carriers)),
    )


def draw_lanes(reference: Reference, rng: random.Random, n: int) -> tuple[Lane, ...]:
    """n distinct lanes from a Hubei prefecture to another one or to a national hub."""
    home = sorted(c for c, r in reference.regions.items() if r["province"] == HOME_PROVINCE)
    hubs = sorted(c for c, r in reference.regions.items() if r["province"] != HOME_PROVINCE)
    classes = [c for c in CLASS_WEIGHT if c in reference.classes]
    if len(home) < 2 or not classes:
        raise ValueError("the reference table has too few Hubei regions or vehicle classes")
    origin_weights = [ORIGIN_WEIGHT.get(c, 1.0) for c in home]
    class_weights = [CLASS_WEIGHT[c] for c in classes]
    lanes: dict[str, Lane] = {}
    for _ in range(n * 50):  # bounded: duplicates are drawn again, a few times at most
        if len(lanes) == n:
            break
        origin = rng.choices(home, origin_weights)[0]
        pool = hubs if hubs and rng.random() < HUB_SHARE else home
        destination = rng.choice([c for c in pool if c != origin])
        vehicle_class = rng.choices(classes, class_weights)[0]
        km = reference.road_km(origin, destination)
        info = reference.classes[vehicle_class]
        lane = Lane(origin, destination, vehicle_class, km, reference.rate_fen(vehicle_class, km),
                    info["capacity_kg"], info["capacity_dm3"], info["body"])  # fmt: skip
        lanes.setdefault(lane.key, lane)
    return tuple(lanes.values())


def _pick_lanes(rng: random.Random, lanes: tuple[Lane, ...], owned: list[int], k: int):
    """The lanes `owned` (by index) plus random others, k in all at most, in lane order."""
    chosen = set(owned)
    others = [i for i in range(len(lanes)) if i not in chosen]
    rng.shuffle(others)
    chosen.update(others[: max(0, k - len(chosen))])
    return tuple(lanes[i] for i in sorted(chosen))


def _shipper(rng: random.Random, i: int, n: int, lanes: tuple[Lane, ...], names) -> ShipperPlan:
    # Lane j belongs to shipper j % n at least, so every lane has loads.
    owned = [j for j in range(len(lanes)) if j % n == i]
    mine = _pick_lanes(rng, lanes, owned, rng.randint(2, 4))
    dearest_fen = max(lane.rate_fen for lane in mine)
    # A thin shipper (the last of three or more) deposits for a few loads and tops up
    # for fewer than it posts: some of its loads are refused for insufficient funds, as
    # happens on any exchange.
    thin = n >= 3 and i == n - 1
    return ShipperPlan(
        index=i,
        name=f"{names[mine[0].origin]} {SHIPPER_TRADES[i % len(SHIPPER_TRADES)]} Co. {i + 1}",
        lanes=mine,
        deposit_fen=(5 if thin else 40) * dearest_fen * 13 // 10,
        top_up_fen=(3 if thin else 40) * dearest_fen * 13 // 10,
        low_water_fen=10 * dearest_fen * 13 // 10,
        auction_permille=rng.randint(200, 450),
        cancel_permille=rng.randint(20, 80),
        patience_s=round(rng.uniform(15.0, 30.0), 1),
        seed=rng.getrandbits(32),
    )


def _carrier(rng: random.Random, i: int, n: int, lanes: tuple[Lane, ...], names) -> CarrierPlan:
    # Lane j belongs to carriers j % n and (j + 1) % n at least: two carriers per lane.
    owned = [j for j in range(len(lanes)) if i in (j % n, (j + 1) % n)]
    mine = _pick_lanes(rng, lanes, owned, rng.randint(2, 4))
    return CarrierPlan(
        index=i,
        name=f"{names[mine[0].origin]} {CARRIER_TRADES[i % len(CARRIER_TRADES)]} {i + 1}",
        lanes=mine,
        strategy="fixed" if i % 3 == 2 else "undercut",
        floor_permille=rng.randint(780, 900),
        ask_permille=rng.randint(950, 1080),
        trucks=rng.randint(2, 5),
        seed=rng.getrandbits(32),
    )
