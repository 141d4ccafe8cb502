"""The engine factory and the event-type reader the service's metrics use."""

from __future__ import annotations

import pytest

from services.matching.config import MatchingSettings
from services.matching.engine import Engine
from services.matching.engines import engine_class, event_type
from services.matching.native_engine import NativeEngine
from tests.unit.matching.builders import envelope, load_data


def test_factory_names_both_engines_and_refuses_others():
    assert engine_class("native") is NativeEngine
    assert engine_class("python") is Engine
    with pytest.raises(ValueError):
        engine_class("cobol")


def test_the_service_runs_the_native_engine_by_default(monkeypatch):
    assert MatchingSettings().matching_engine == "native"
    monkeypatch.setenv("WLEX_MATCHING_ENGINE", "python")
    assert MatchingSettings().matching_engine == "python"


@pytest.mark.parametrize("cid", ["c1", 'c","type":"x', "c\\", 'c\\","type":"y'])
def test_event_type_is_read_from_the_bytes_whatever_the_id(cid):
    out = NativeEngine().process_encoded(
        [envelope(cid, "load.post", 5, load_data("L1")), envelope(cid, "nope", 6, {})]
    )
    assert [event_type(value) for _, value in out] == ["load.rested", "order.rejected"]
