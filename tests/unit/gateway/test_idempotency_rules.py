import pytest

from services.gateway import idempotency, problems


def test_the_header_takes_a_structured_string_or_a_bare_token():
    assert idempotency.parse_header('"8e03978e-40d5-43e8-bc93-6894a57f9324"') == (
        "8e03978e-40d5-43e8-bc93-6894a57f9324"
    )
    assert idempotency.parse_header("abc") == "abc"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, problems.IDEMPOTENCY_KEY_MISSING),
        ("", problems.IDEMPOTENCY_KEY_MISSING),
        ('""', problems.IDEMPOTENCY_KEY_INVALID),
        ("a b", problems.IDEMPOTENCY_KEY_INVALID),
        ("x" * 256, problems.IDEMPOTENCY_KEY_INVALID),
        ("ключ", problems.IDEMPOTENCY_KEY_INVALID),
    ],
)
def test_a_missing_or_bad_key_is_400(value, reason):
    with pytest.raises(problems.ProblemError) as e:
        idempotency.parse_header(value)
    assert e.value.status == 400 and e.value.reason == reason


def test_fingerprint_ignores_key_order_but_not_values_or_path():
    a = idempotency.fingerprint("POST", "/v1/loads", {"x": 1, "y": {"b": 2, "a": 1}})
    b = idempotency.fingerprint("POST", "/v1/loads", {"y": {"a": 1, "b": 2}, "x": 1})
    assert a == b
    assert a != idempotency.fingerprint("POST", "/v1/loads", {"x": 2, "y": {"a": 1, "b": 2}})
    assert a != idempotency.fingerprint("POST", "/v1/offers", {"x": 1, "y": {"b": 2, "a": 1}})
