"""schemas/openapi.json is the app's document: regenerate it with
`python -m services.gateway.openapi --write` when the API changes."""

from services.gateway import openapi


def test_committed_openapi_is_the_apps_document():
    assert openapi.PATH.read_bytes() == openapi.document(), (
        "schemas/openapi.json is stale: run python -m services.gateway.openapi --write"
    )


def test_every_post_requires_an_idempotency_key_and_documents_its_problems():
    import orjson

    doc = orjson.loads(openapi.document())
    posts = [(p, ops["post"]) for p, ops in doc["paths"].items() if "post" in ops]
    assert len(posts) >= 6
    for path, op in posts:
        header = [x for x in op["parameters"] if x["name"] == "Idempotency-Key"]
        assert header and header[0]["required"] is True, path
        for status in ("400", "401", "403", "409", "422", "429"):
            content = op["responses"][status]["content"]
            assert list(content) == ["application/problem+json"], (path, status)
