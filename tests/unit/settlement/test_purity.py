"""The ledger's rules know nothing of the world (STYLE 1): no database, no event loop,
no clock, no logging."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import services.settlement as settlement

PURE = ("ledger.py", "postings.py")
FORBIDDEN = {"asyncpg", "asyncio", "aiokafka", "time", "datetime", "logging", "random", "os"}


@pytest.mark.parametrize("name", PURE)
def test_module_imports_nothing_of_the_world(name):
    tree = ast.parse((Path(settlement.__file__).parent / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
