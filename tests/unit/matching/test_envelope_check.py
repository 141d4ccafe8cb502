"""The fast envelope check never accepts what the envelope schema refuses."""

import copy

import pytest

from loadtests import workloads
from services.common import schemas
from services.matching.envelope_check import plainly_valid, validate_envelope

GOOD = workloads.freight_mix(300, seed=3)

MUTATIONS = [
    ("id", ""),
    ("id", 5),
    ("id", "x" * 161),
    ("type", "Load.post"),
    ("type", "load"),
    ("type", "load.post\n"),
    ("type", "a." + "b" * 63),
    ("v", 0),
    ("v", True),
    ("v", 1.0),
    ("ts", -1),
    ("ts", 1.5),
    ("ts", True),
    ("key", 5),
    ("key", "k" * 257),
    ("source", ""),
    ("source", None),
    ("cause", 3),
    ("cause", "c" * 161),
    ("data", []),
    ("data", None),
]


def test_every_generated_command_is_plainly_valid_and_schema_valid():
    for e in GOOD:
        assert plainly_valid(e)
        schemas.validate_envelope(e)


@pytest.mark.parametrize(("field", "value"), MUTATIONS)
def test_fast_path_accepts_nothing_the_schema_refuses(field, value):
    e = copy.deepcopy(GOOD[0])
    e[field] = value
    try:
        schemas.validate_envelope(e)
        schema_ok = True
    except schemas.ValidationError:
        schema_ok = False
    if plainly_valid(e):
        assert schema_ok
    if not schema_ok:
        with pytest.raises(schemas.ValidationError):
            validate_envelope(e)


def test_missing_or_extra_fields_go_to_the_schema():
    e = copy.deepcopy(GOOD[0])
    del e["cause"]
    assert not plainly_valid(e)
    with pytest.raises(schemas.ValidationError):
        validate_envelope(e)
    e = dict(GOOD[0], extra=1)
    assert not plainly_valid(e)
    with pytest.raises(schemas.ValidationError):
        validate_envelope(e)
