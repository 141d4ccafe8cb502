"""schemas.validate / validate_envelope decide exactly as the schemas alone do.

Both take envelope_check.plainly_valid first (fast=True, what every consumer runs) and
fall back to the generated validators; fast=False runs the schemas alone. Over valid
envelopes of every type and many hostile variants, both paths must give the same
decision and, when they refuse, the same message (what a dead letter records).
"""

import copy
import random

import pytest

from services.common import schemas
from services.common.envelope import make
from services.common.envelope_check import FIELDS, plainly_valid
from tests.unit.subclasses import DictSub, IntSub, StrSub

from .samples import AUCTION_LOAD, DATA, LANE_KEY


def env(type_: str, data_: dict) -> dict:
    return make(type_, copy.deepcopy(data_), LANE_KEY, "test", 1_767_225_600_000, id="e1")


VALID = [env(t, d) for t, d in DATA.items()] + [
    env("load.post", AUCTION_LOAD),
    dict(env("clock.tick", {}), key=None, cause="c" * 160, id="i" * 160, source="s" * 64),
]


def strings(limit: int, min_len: int) -> list:
    """Hostile and boundary values for a string field of min_len..limit characters."""
    return [
        None, 0, 1, True, 1.5, [], {}, b"abc", StrSub("abc"),
        "", "a", "x" * limit, "x" * (limit + 1), "é" * limit, "é" * (limit + 1),
        "\u0000", "line\n", "x" * max(min_len, 1),
    ]  # fmt: skip


INTS = [
    0, 1, 2, -1, 2**70, -(2**70), 2**63, True, False, 1.0, 1.5, "1", None,
    IntSub(1), float("nan"), float("inf"), [],
]  # fmt: skip

FIELD_VALUES: dict[str, list] = {
    "id": strings(160, 1),
    "source": strings(64, 1),
    "key": strings(256, 0),
    "cause": strings(160, 0),
    "v": INTS,
    "ts": INTS,
    "type": [
        "load.post",
        "deal.made",
        "Load.post",
        "load",
        "load.",
        ".post",
        "load..post",
        "load.post\n",
        "load.post ",
        " load.post",
        "l\u043ead.post",
        "foo.bar",
        "a." + "b" * 62,
        "a." + "b" * 63,
        "load_x.post_y",
        "_load.post",
        "load.post.extra",
        "load.post-x",
        "",
        5,
        None,
        True,
        StrSub("load.post"),
    ],  # fmt: skip
    "data": [
        {},
        [],
        None,
        "x",
        5,
        DictSub(),
        DictSub(DATA["bid.place"]),
        DATA["bid.place"],
        dict(DATA["load.post"], surprise=1),
        {"load_id": "L1"},
        AUCTION_LOAD,
    ],  # fmt: skip
}


def hostile() -> list:
    """Every valid envelope with each field replaced by each hostile value, each key
    missing, an extra key, a key renamed; and things that are not dicts at all."""
    out: list = []
    for base in VALID:
        for name, values in FIELD_VALUES.items():
            for value in values:
                out.append(dict(base, **{name: value}))
        for name in FIELDS:
            missing = {k: v for k, v in base.items() if k != name}
            out.append(missing)
            out.append(dict(missing, extra=base[name]))  # eight keys, one of them wrong
        out.append(dict(base, extra=1))
        out.append(DictSub(base))
        out.append(list(base.items()))
    out += [None, [], (), "load.post", 5, True, b"{}"]
    return out


def combined(count: int, seed: int) -> list:
    """count envelopes with one to three fields replaced at once (seeded)."""
    rng = random.Random(seed)
    names = sorted(FIELD_VALUES)
    out = []
    for _ in range(count):
        e = dict(rng.choice(VALID))
        for name in rng.sample(names, rng.randint(1, 3)):
            e[name] = rng.choice(FIELD_VALUES[name])
        out.append(e)
    return out


CORPUS = VALID + hostile() + combined(3000, seed=5)


def decision(check, envelope, fast: bool):
    try:
        check(copy.deepcopy(envelope), fast=fast)
    except Exception as exc:  # noqa: BLE001 - any difference, even the exception type, counts
        return type(exc).__name__, str(exc)
    return "ok", None


def mismatches(check) -> list:
    return [
        (e, fast, full)
        for e in CORPUS
        if (fast := decision(check, e, True)) != (full := decision(check, e, False))
    ]


def test_every_valid_envelope_takes_the_fast_path():
    for e in VALID:
        assert plainly_valid(e), e
        schemas.validate(e, fast=False)


@pytest.mark.parametrize("check", [schemas.validate, schemas.validate_envelope])
def test_fast_and_full_checks_decide_the_same(check):
    assert mismatches(check) == []


def test_the_corpus_exercises_both_answers_of_the_fast_path():
    # Hostile envelopes the fast path accepts (boundary lengths, unknown but well-formed
    # types, bad data) and envelopes the schema accepts that it leaves to the schema.
    accepted = [e for e in CORPUS if plainly_valid(e)]
    assert len(accepted) > 500
    refused = [e for e in CORPUS if decision(schemas.validate_envelope, e, False)[0] != "ok"]
    assert len(refused) > 1000
    schema_only = [
        e
        for e in CORPUS
        if not plainly_valid(e) and decision(schemas.validate_envelope, e, False)[0] == "ok"
    ]
    assert schema_only  # e.g. DictSub envelopes, str subclasses: the schema decides


def test_a_loose_fast_path_is_caught(monkeypatch):
    # The comparison can fail: a fast path that forgets the bounds of v and ts accepts
    # envelopes the schema refuses, and the decisions differ.
    def loose(e):
        return type(e) is dict and e.keys() == FIELDS and type(e["data"]) is dict

    monkeypatch.setattr(schemas, "plainly_valid", loose)
    assert mismatches(schemas.validate_envelope)
