"""The matching core is pure: no clock, no I/O, no randomness, no async, no adapters.

The core is services/matching/engine.py and every module of services/matching it imports,
directly or through another core module. The adapter modules that share the package
(service.py, __main__.py, the pipeline, clock source, metrics...) may touch the world; the
engine must never import them, and this test would then check them too and fail."""

from __future__ import annotations

import ast
from pathlib import Path

import services.matching

PACKAGE = Path(services.matching.__file__).parent
FORBIDDEN = {
    "asyncio", "time", "random", "secrets", "uuid", "datetime", "os", "sys", "socket",
    "select", "selectors", "threading", "multiprocessing", "subprocess", "signal", "io",
    "logging", "pathlib", "shutil", "tempfile", "urllib", "http", "ssl", "sqlite3",
    "aiokafka", "asyncpg", "fastapi", "starlette", "uvicorn", "uvloop", "httpx",
    "websockets", "prometheus_client", "psutil", "pydantic_settings", "pydantic",
}  # fmt: skip
CALLS = {"__import__", "open", "eval", "exec", "input", "print", "breakpoint"}


def _imports(path: Path):
    """(module, line) of every import in `path`, and (name(), line) of world-touching calls."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield "services.matching." + (node.module or ""), node.lineno
            else:
                yield node.module or "", node.lineno
                if node.module == "services.matching":
                    for alias in node.names:
                        yield f"services.matching.{alias.name}", node.lineno
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CALLS
        ):
            yield f"{node.func.id}()", node.lineno


def core_modules(root: str = "engine") -> list[Path]:
    """`root`.py (engine.py) and its import closure inside services/matching."""
    seen: dict[str, Path] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        path = PACKAGE / f"{name}.py"
        if name in seen or not path.exists():
            continue
        seen[name] = path
        for module, _ in _imports(path):
            if module.startswith("services.matching."):
                todo.append(module.split(".")[2])
    return sorted(seen.values())


def test_core_is_the_engine_and_what_it_imports():
    names = {p.name for p in core_modules()}
    assert {"engine.py", "book.py", "timers.py", "commands.py", "orders.py"} <= names
    assert not names & {"service.py", "__main__.py"}


def test_core_modules_import_nothing_of_the_world():
    found = [
        f"{path.name}:{line} {module}"
        for path in core_modules()
        for module, line in _imports(path)
        if module.split(".")[0] in FORBIDDEN or module.endswith("()")
    ]
    assert found == []


def test_core_reaches_other_packages_only_through_services_common():
    allowed = ("services.common.reasons", "services.matching", "__future__", "bisect",
               "collections", "heapq", "orjson")  # fmt: skip
    found = [
        f"{path.name}:{line} {module}"
        for path in core_modules()
        for module, line in _imports(path)
        if not module.startswith(allowed)
    ]
    assert found == []


def test_native_engine_adapter_is_as_pure_as_the_engine():
    # native_engine.py presents the compiled core (wlex_matching_native, Rust with no
    # I/O, clock or randomness: services/matching/native/src) as an engine; it and what
    # it imports obey the core's rules, with the compiled module allowed besides.
    allowed = ("services.common.reasons", "services.matching", "__future__", "bisect",
               "collections", "heapq", "orjson", "wlex_matching_native")  # fmt: skip
    found = [
        f"{path.name}:{line} {module}"
        for path in core_modules("native_engine")
        for module, line in _imports(path)
        if not module.startswith(allowed)
        or module.split(".")[0] in FORBIDDEN
        or module.endswith("()")
    ]
    assert "native_engine.py" in {p.name for p in core_modules("native_engine")}
    assert found == []
