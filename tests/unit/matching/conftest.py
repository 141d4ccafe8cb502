"""Hypothesis profiles for the engine tests. The default ("ci") keeps the whole
matching suite well under a minute on two slow cores; HYPOTHESIS_PROFILE=thorough digs
deeper before a release, "smoke" is for a quick local loop."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("smoke", max_examples=20, **_common)
settings.register_profile("ci", max_examples=120, **_common)
settings.register_profile("thorough", max_examples=2000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Both engines answer to the same tests: the Python engine (the reference) and the
# native core behind services/matching/native_engine.py. A module opts in with
# `pytestmark = pytest.mark.usefixtures("engine_cls")` (or takes `engine_cls` as an
# argument); builders.Market then builds the engine under test.
import pytest  # noqa: E402

from services.matching.engine import Engine  # noqa: E402
from services.matching.native_engine import NativeEngine  # noqa: E402
from tests.unit.matching import builders  # noqa: E402

ENGINES = {"python": Engine, "native": NativeEngine}


@pytest.fixture(params=sorted(ENGINES))
def engine_cls(request, monkeypatch):
    cls = ENGINES[request.param]
    monkeypatch.setattr(builders, "Engine", cls)
    return cls
