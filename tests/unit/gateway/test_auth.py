import hmac

from services.gateway import auth


def test_a_new_key_parses_back_and_only_its_hash_is_kept():
    key_id, key, digest = auth.new_key()
    parsed = auth.parse_key(key)
    assert parsed is not None and parsed[0] == key_id
    assert hmac.compare_digest(auth.secret_sha256(parsed[1]), digest)
    assert key.encode() not in digest and len(digest) == 32
    assert len(key) == len("wlx_") + 16 + 1 + 43


def test_keys_are_unique():
    assert len({auth.new_key()[1] for _ in range(1000)}) == 1000


def test_malformed_keys_do_not_parse():
    _, key, _ = auth.new_key()
    for bad in ("", "wlx_", key[:-1], key + "A", key.replace("wlx_", "wlk_"), " " + key,
                key.upper(), "wlx_zzzzzzzzzzzzzzzz_" + "A" * 43):  # fmt: skip
        assert auth.parse_key(bad) is None, bad


def test_bearer_token_needs_the_bearer_scheme():
    assert auth.bearer_token("Bearer abc") == "abc"
    assert auth.bearer_token("bearer  abc ") == "abc"
    assert auth.bearer_token("Basic abc") is None
    assert auth.bearer_token("Bearer ") is None
    assert auth.bearer_token(None) is None
