"""Dead letters: records a consumer cannot decode or validate, kept with their bytes.

A dead letter is produced to the `dlq` topic with the original value unchanged and
headers saying where it came from and why (schemas/asyncapi.yaml, message deadLetter),
so an operator can inspect it, fix the producer, and re-publish the bytes as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord

UNDECODABLE = "undecodable"  # not a JSON object
INVALID = "invalid"  # a JSON object that fails the envelope or data schema

ERROR_CHARS_MAX = 1000  # a header, not a log: bound it


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: ConsumerRecord
    reason: str  # UNDECODABLE or INVALID
    error: str


def dead_letter_key(record: ConsumerRecord) -> bytes:
    """The original key, or "topic/partition" when it had none (Kafka needs a key for a
    null value, and this keeps one source partition's dead letters together)."""
    if record.key is not None:
        return record.key
    return f"{record.topic}/{record.partition}".encode()


def dead_letter_headers(
    letter: DeadLetter, group_id: str | None, source: str
) -> list[tuple[str, bytes]]:
    """The dlq.* headers of a dead letter; numbers as decimal strings."""
    r = letter.record
    headers = [
        ("dlq.topic", r.topic.encode()),
        ("dlq.partition", str(r.partition).encode()),
        ("dlq.offset", str(r.offset).encode()),
        ("dlq.timestamp_ms", str(r.timestamp).encode()),
        ("dlq.reason", letter.reason.encode()),
        ("dlq.error", letter.error[:ERROR_CHARS_MAX].encode()),
        ("dlq.source", source.encode()),
    ]
    if group_id:
        headers.append(("dlq.group", group_id.encode()))
    return headers
