"""Going rates of road freight from distance, pure: the reference document in, fen out.

The simulation prices every lane the way Chinese road freight is quoted: a fixed charge
per trip plus a rate per road kilometre, both growing with the truck's payload, scaled by
the body (a reefer or a hazmat truck costs more to run). Participants then put their own
noise and margin on that going rate, so shippers' limits and carriers' asks overlap
often, but not always, as on a real market.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

ROAD_CIRCUITY = 1.25  # road km per great-circle km, typical of central China
MIN_TRIP_KM = 30  # a same-city trip still costs a drive across town
EARTH_RADIUS_KM = 6371.0
PRICE_FEN_MIN = 100  # no quote below one yuan, whatever the noise

# Running cost of a body relative to a dry van of the same payload.
BODY_FACTOR_PERMILLE = {
    "van": 1000,
    "high-rail": 1000,
    "flatbed": 1050,
    "container": 1100,
    "refrigerated": 1350,
    "tanker": 1300,
    "hazmat": 1600,
}


@dataclass(frozen=True, slots=True)
class Reference:
    """GET /v1/reference, indexed: regions by code, vehicle classes by name."""

    regions: dict[str, dict[str, Any]]
    classes: dict[str, dict[str, Any]]

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Reference:
        return cls(
            regions={r["code"]: r for r in doc["regions"]},
            classes={c["vehicle_class"]: c for c in doc["vehicle_classes"]},
        )

    def great_circle_km(self, origin: str, destination: str) -> float:
        a, b = self.regions[origin], self.regions[destination]
        la1, lo1, la2, lo2 = map(math.radians, (a["lat"], a["lon"], b["lat"], b["lon"]))
        h = (
            math.sin((la2 - la1) / 2) ** 2
            + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
        )
        return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))

    def road_km(self, origin: str, destination: str) -> int:
        """Road distance, estimated from the seats' coordinates; at least MIN_TRIP_KM."""
        return max(MIN_TRIP_KM, round(ROAD_CIRCUITY * self.great_circle_km(origin, destination)))

    def rate_fen(self, vehicle_class: str, road_km: int) -> int:
        """The going rate of one truck of the class over road_km: what a fair price is."""
        return rate_fen(self.classes[vehicle_class], road_km)


def rate_fen(vehicle_class: dict[str, Any], road_km: int) -> int:
    """Fixed charge plus a rate per km, both from the payload (a 9.6 m van of 18 t:
    240 yuan plus 6 yuan/km), times the body's factor. Integer fen."""
    capacity_kg = vehicle_class["capacity_kg"]
    fixed_fen = 15_000 + capacity_kg // 2
    per_km_fen = 200 + capacity_kg // 45
    factor = BODY_FACTOR_PERMILLE.get(vehicle_class["body"], 1000)
    return (fixed_fen + per_km_fen * road_km) * factor // 1000


def noisy_fen(rng: random.Random, fen: int, factor: float, sigma: float) -> int:
    """fen times factor times a log-normal draw of spread sigma, rounded to whole yuan."""
    value = fen * factor * math.exp(rng.gauss(0.0, sigma))
    return max(PRICE_FEN_MIN, round(value / 100) * 100)


def fen_text(fen: int) -> str:
    """12345678 -> '123,456.78' (yuan), without a float."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"
