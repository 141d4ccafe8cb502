from services.gateway.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_key_gets_its_burst_then_waits_for_the_rate():
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2, burst=3, keys_max=10, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k") == 0.5
    clock.t += 0.5
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0


def test_keys_are_limited_apart():
    limiter = RateLimiter(rate_per_s=1, burst=1, keys_max=10, clock=Clock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_the_table_is_bounded_and_drops_the_least_recently_used():
    clock = Clock()
    limiter = RateLimiter(rate_per_s=1, burst=1, keys_max=3, clock=clock)
    for key in ("a", "b", "c"):
        limiter.take(key)
    limiter.take("a")  # a is now the most recent
    limiter.take("d")  # drops b
    assert len(limiter) == 3
    assert limiter.take("b") == 0.0  # came back full: forgiven, never wrongly blocked
    assert limiter.take("a") > 0


def test_retry_after_is_whole_seconds_never_zero():
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"
