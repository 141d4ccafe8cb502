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
