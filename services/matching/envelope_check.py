"""The matching service's envelope check: now services.common's, re-exported.

The fast path (plainly_valid) moved to services/common/envelope_check.py, and
schemas.validate_envelope takes it first, so every consumer has it. Kept for
service.py, the benchmarks and the tests that import it from here; the behaviour is
the one this module had (plainly_valid, else the envelope schema decides).
"""

from __future__ import annotations

from services.common.envelope_check import FIELDS, plainly_valid
from services.common.schemas import validate_envelope

__all__ = ["FIELDS", "plainly_valid", "validate_envelope"]
