"""`python -m services.gateway.openapi [--write]`: the gateway's OpenAPI document.

Printed to stdout, or written to schemas/openapi.json with --write. A unit test fails
when the file is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

PATH = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"


def document() -> bytes:
    from services.gateway.app import create_app

    return orjson.dumps(create_app(None).openapi(), option=orjson.OPT_INDENT_2) + b"\n"


def main(argv: list[str]) -> int:
    doc = document()
    if "--write" in argv:
        PATH.write_bytes(doc)
        print(f"wrote {PATH}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
