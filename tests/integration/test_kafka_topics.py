import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.common.topics import create_topics, topic_names

pytestmark = pytest.mark.integration


async def _describe(bootstrap: str, topic: str) -> tuple[int, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = response.resources
    configs = {entry[0]: entry[1] for entry in resource[4]}
    return len(meta["partitions"]), configs


async def test_create_topics_makes_every_topic_once(kafka_bootstrap, topic_prefix):
    created = await create_topics(kafka_bootstrap, topic_prefix, partitions=3)
    assert created == topic_names(topic_prefix)
    assert await create_topics(kafka_bootstrap, topic_prefix, partitions=3) == []


async def test_snapshot_topic_is_compacted_on_one_partition(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=3)
    partitions, configs = await _describe(kafka_bootstrap, topic_prefix + "matching.snapshots")
    assert partitions == 1
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.insync.replicas"] == "1"


async def test_lane_topics_take_the_partition_count_and_keep_their_log(
    kafka_bootstrap, topic_prefix
):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=3)
    partitions, configs = await _describe(kafka_bootstrap, topic_prefix + "orders")
    assert partitions == 3
    assert configs["cleanup.policy"] == "delete"
    assert configs["retention.ms"] == "-1"
