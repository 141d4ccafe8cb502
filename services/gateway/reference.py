"""Regions and vehicle classes, shipped as data (services/gateway/data/) and served at
GET /v1/reference. The gateway checks every lane and size against them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from services.gateway.models import Reference

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True, slots=True)
class Tables:
    regions: dict[str, dict]  # code -> region
    classes: dict[str, dict]  # vehicle_class -> class
    body: bytes  # the /v1/reference document, encoded once

    def distance_km(self, origin: str, destination: str) -> float:
        """Great-circle distance between two regions' seats."""
        a, b = self.regions[origin], self.regions[destination]
        la1, lo1, la2, lo2 = map(math.radians, (a["lat"], a["lon"], b["lat"], b["lon"]))
        h = (
            math.sin((la2 - la1) / 2) ** 2
            + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
        )
        return 2 * 6371.0 * math.asin(math.sqrt(h))


@cache
def tables() -> Tables:
    regions = orjson.loads((DATA_DIR / "regions.json").read_bytes())["regions"]
    classes = orjson.loads((DATA_DIR / "vehicle_classes.json").read_bytes())["vehicle_classes"]
    doc = Reference(regions=regions, vehicle_classes=classes)
    return Tables(
        regions={r["code"]: r for r in regions},
        classes={c["vehicle_class"]: c for c in classes},
        body=orjson.dumps(doc.model_dump()),
    )


router = APIRouter(tags=["reference"])


@router.get(
    "/v1/reference",
    response_model=Reference,
    summary="Regions and vehicle classes with their capacity",
)
async def get_reference() -> Response:
    """Public: the tables every lane and load size is checked against."""
    return Response(
        tables().body,
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=3600"},
    )
