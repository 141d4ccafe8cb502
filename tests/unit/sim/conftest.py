"""The reference document the gateway serves at GET /v1/reference, from its data files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from services.sim.pricing import Reference

DATA = Path(__file__).resolve().parents[3] / "services" / "gateway" / "data"


@pytest.fixture(scope="session")
def reference_doc() -> dict:
    return {
        "regions": orjson.loads((DATA / "regions.json").read_bytes())["regions"],
        "vehicle_classes": orjson.loads((DATA / "vehicle_classes.json").read_bytes())[
            "vehicle_classes"
        ],
    }


@pytest.fixture(scope="session")
def reference(reference_doc) -> Reference:
    return Reference.from_document(reference_doc)
