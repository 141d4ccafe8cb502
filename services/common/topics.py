"""The topics of wlex, read from schemas/asyncapi.yaml, and their creation.

The AsyncAPI document is the one list of topics: a channel's address is the topic's
short name, its Kafka binding gives the partition count and topic configs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

ASYNCAPI_PATH = Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.yaml"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as the AsyncAPI document describes it."""

    name: str  # short name: the channel address, without prefix
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    partitions_fixed: bool = False  # the count is part of the design, not of the scale


@cache
def topic_specs(path: Path = ASYNCAPI_PATH) -> tuple[TopicSpec, ...]:
    """Every channel of the AsyncAPI document, in document order."""
    doc = yaml.safe_load(path.read_text())
    specs = []
    for channel in doc["channels"].values():
        kafka = channel.get("bindings", {}).get("kafka", {})
        configs = {k: _config_value(v) for k, v in kafka.get("topicConfiguration", {}).items()}
        specs.append(
            TopicSpec(
                name=channel["address"],
                partitions=int(kafka.get("partitions", 1)),
                configs=configs,
                partitions_fixed=bool(channel.get("x-wlex-partitions-fixed", False)),
            )
        )
    return tuple(specs)


def topic_names(prefix: str) -> list[str]:
    """Full names of every topic: prefix + short name."""
    return [prefix + spec.name for spec in topic_specs()]


def _config_value(value: object) -> str:
    # AsyncAPI writes cleanup.policy as a list; Kafka wants "compact,delete".
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def topic_configs(spec: TopicSpec, replication_factor: int) -> dict[str, str]:
    """The configs a topic is created with: the document's, plus min.insync.replicas.

    min.insync.replicas is set on every topic rather than left to the brokers' default:
    with acks=all it decides how many copies an acknowledged deal has, and a managed
    cluster's default is often 1 (the leader alone). A majority of the replicas (2 of
    3) survives one broker loss without losing acknowledged writes and keeps accepting
    writes; below 3 replicas, 1, or the topic could not take writes with a broker down.
    """
    configs = dict(spec.configs)
    min_isr = replication_factor // 2 + 1 if replication_factor >= 3 else 1
    configs["min.insync.replicas"] = str(min_isr)
    return configs


async def create_topics(
    bootstrap: str,
    prefix: str,
    partitions: int | None = None,
    replication_factor: int = 1,
    timeout_ms: int = 30_000,
) -> list[str]:
    """Creates every topic of the AsyncAPI document that does not exist yet.

    Idempotent: an existing topic is left as it is (its partitions and configs are not
    checked or changed). `partitions`, when given, replaces the document's count for
    every topic except those whose count is fixed by design (matching.snapshots).
    Returns the full names of the topics this call created, in document order.
    """
    new_topics = []
    for spec in topic_specs():
        count = spec.partitions if spec.partitions_fixed or partitions is None else partitions
        new_topics.append(
            NewTopic(
                name=prefix + spec.name,
                num_partitions=count,
                replication_factor=replication_factor,
                topic_configs=topic_configs(spec, replication_factor),
            )
        )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        response = await admin.create_topics(new_topics, timeout_ms=timeout_ms)
        created = _created(response)
        await _wait_visible(admin, [t.name for t in new_topics], timeout_ms)
    finally:
        await admin.close()
    order = {t.name: i for i, t in enumerate(new_topics)}
    return sorted(created, key=order.__getitem__)


def _created(response) -> list[str]:
    # aiokafka returns per-topic error codes instead of raising.
    created, failures = [], []
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else None
        if code == 0:
            created.append(name)
        elif for_code(code) is not TopicAlreadyExistsError:
            failures.append(f"{name}: {for_code(code).__name__} {message or ''}".strip())
    if failures:
        raise RuntimeError("could not create topics: " + "; ".join(failures))
    return created


async def _wait_visible(admin: AIOKafkaAdminClient, names: list[str], timeout_ms: int) -> None:
    # CreateTopics answers once the controller has the topics; the brokers learn of
    # them a moment later. Until then a client that asks for their metadata (a consumer
    # assigned to their partitions) is told they do not exist, so wait here once rather
    # than in every service.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000
    while True:
        described = await admin.describe_topics(names)
        missing = [t["topic"] for t in described if t["error_code"] != 0 or not t["partitions"]]
        if not missing:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topics not visible after {timeout_ms} ms: {', '.join(missing)}")
        await asyncio.sleep(0.05)
