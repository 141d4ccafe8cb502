from pathlib import Path

import yaml

from services.common import schemas, topics
from services.common.topics import topic_configs, topic_specs

DOC_PATH = topics.ASYNCAPI_PATH
DOC = yaml.safe_load(DOC_PATH.read_text())
DESIGN_TOPICS = {
    "commands",
    "orders",
    "market",
    "settlement",
    "insurance",
    "shipments",
    "dlq",
    "matching.snapshots",
}


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _resolve_local(ref: str):
    node = DOC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_document_is_asyncapi_3():
    assert DOC["asyncapi"].startswith("3.")


def test_every_design_topic_is_a_channel():
    assert {c["address"] for c in DOC["channels"].values()} == DESIGN_TOPICS


def test_every_channel_has_kafka_partitions_and_cleanup_policy():
    for name, channel in DOC["channels"].items():
        kafka = channel["bindings"]["kafka"]
        assert kafka["partitions"] >= 1, name
        assert kafka["topicConfiguration"]["cleanup.policy"], name


def test_every_local_ref_resolves():
    for ref in _refs(DOC):
        if ref.startswith("#/"):
            _resolve_local(ref)


def test_every_file_ref_exists():
    file_refs = [r for r in _refs(DOC) if not r.startswith("#")]
    assert file_refs
    for ref in file_refs:
        assert (DOC_PATH.parent / ref.split("#")[0]).is_file(), ref


def test_each_envelope_message_names_its_type_and_schema():
    for name, message in DOC["components"]["messages"].items():
        if message.get("contentType", DOC["defaultContentType"]) != "application/json":
            continue
        envelope_ref, typed = message["payload"]["allOf"]
        assert envelope_ref == {"$ref": "./envelope.schema.json"}
        assert typed["properties"]["type"]["const"] == name
        data_ref = typed["properties"]["data"]["$ref"]
        assert (DOC_PATH.parent / data_ref) == schemas.schema_path(name)
        assert schemas.schema_path(name).is_file()


def test_every_known_type_travels_on_some_channel():
    on_channels = {m for c in DOC["channels"].values() for m in c.get("messages", {})}
    assert set(schemas.known_types()) <= on_channels


def test_operation_messages_belong_to_their_channel():
    for name, op in DOC["operations"].items():
        channel_ref = op["channel"]["$ref"]
        for m in op.get("messages", []):
            assert m["$ref"].startswith(channel_ref + "/messages/"), name


def test_snapshots_are_compacted_on_one_fixed_partition():
    (snap,) = [s for s in topic_specs() if s.name == "matching.snapshots"]
    assert snap.configs["cleanup.policy"] == "compact"
    assert snap.partitions == 1 and snap.partitions_fixed


def test_topic_specs_follow_the_document():
    assert [s.name for s in topic_specs()] == [c["address"] for c in DOC["channels"].values()]
    assert topics.topic_names("wlex.")[:2] == ["wlex.commands", "wlex.orders"]


def test_min_insync_replicas_is_a_majority_from_three_replicas():
    spec = topic_specs()[0]
    assert topic_configs(spec, 1)["min.insync.replicas"] == "1"
    assert topic_configs(spec, 2)["min.insync.replicas"] == "1"
    assert topic_configs(spec, 3)["min.insync.replicas"] == "2"
    assert topic_configs(spec, 5)["min.insync.replicas"] == "3"


def test_schema_files_are_all_referenced_or_shared():
    referenced = {
        (DOC_PATH.parent / r.split("#")[0]).resolve() for r in _refs(DOC) if not r.startswith("#")
    }
    events = {p.resolve() for p in Path(schemas.EVENTS_DIR).glob("*.schema.json")}
    assert events <= referenced
