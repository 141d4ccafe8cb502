"""Settings of every wlex process, read from WLEX_* environment variables.

One Settings class for the whole house: a service reads the fields it needs and ignores
the rest, so an operator sets a variable once (say WLEX_KAFKA_BOOTSTRAP) and every process
agrees on it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WLEX_", extra="ignore")

    # Where the local runtime keeps jars, data, logs and pid files.
    home: Path = Path(".wlex")

    # An outside broker or database; when empty the local runtime starts its own.
    kafka_bootstrap: str = ""
    database_url: str = ""

    # Every topic name is prefix + short name, so several runs can share one broker.
    topic_prefix: str = "wlex."

    # The Kafka release of the local runtime; empty means the one pinned in deploy/kafka/pom.xml.
    kafka_version: str = ""

    # Ports of the local runtime, all on 127.0.0.1. Broker n of a cluster takes
    # kafka_port + n - 1 and controller_port + n - 1.
    kafka_port: int = 19092
    kafka_controller_port: int = 19192
    postgres_port: int = 15432
    http_port_base: int = 18000

    # Service identity and its HTTP endpoint (/metrics, /healthz, and the API of the gateway).
    service_name: str = "wlex"
    http_host: str = "127.0.0.1"
    http_port: int = 0

    # Shutdown: work in flight gets this long to commit or abort before the process exits.
    shutdown_timeout_s: float = 10.0

    # Level of the stderr log (DEBUG, INFO, WARNING, ERROR).
    log_level: str = "INFO"

    def topic(self, short_name: str) -> str:
        """Full topic name of a DESIGN topic ("orders" -> "wlex.orders")."""
        return self.topic_prefix + short_name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
