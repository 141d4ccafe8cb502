"""begin_early against aiokafka's transaction state machine, without a broker: what the
producer's sender is asked to send, and when (the sender sends whatever
partitions_to_add, consumer_group_to_add and offsets_to_commit name, in that order).
The round trips themselves are tested with the real broker in
tests/integration/test_matching_gather.py."""

import pytest
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from services.common.kafka import make_producer
from services.common.kafka_transactions import begin_early

MARKET0 = TopicPartition("t.market", 0)
MARKET1 = TopicPartition("t.market", 1)
ORDERS0 = TopicPartition("t.orders", 0)


@pytest.fixture
async def producer():
    """An unstarted transactional producer whose producer id is set by hand, as
    InitProducerId would: its transaction manager runs, nothing is sent."""
    producer = make_producer("127.0.0.1:9", transactional_id="test-early")
    producer._txn_manager.set_pid_and_epoch(7, 0)
    yield producer
    await producer.stop()


async def test_begin_early_opens_a_transaction_and_names_partitions_and_group(producer):
    txn = producer._txn_manager
    await begin_early(producer, [MARKET0], "group-a")

    assert txn.state is TransactionState.IN_TRANSACTION
    assert txn.partitions_to_add() == {MARKET0}
    # The group before any offsets: AddOffsetsToTxn names only the group.
    assert txn.consumer_group_to_add() == "group-a"
    assert txn.offsets_to_commit() is None

    # More partitions as they become known, the same transaction.
    await begin_early(producer, [MARKET0, MARKET1], "group-a")
    assert txn.partitions_to_add() == {MARKET0, MARKET1}


async def test_an_early_group_is_added_once_and_the_offsets_then_go_at_once(producer):
    txn = producer._txn_manager
    await begin_early(producer, [], "group-a")
    txn.consumer_group_added("group-a")  # the AddOffsetsToTxn answer
    assert txn.consumer_group_to_add() is None

    # send_offsets_to_transaction: straight to TxnOffsetCommit, no second AddOffsetsToTxn.
    done = txn.add_offsets_to_txn({ORDERS0: OffsetAndMetadata(10, "")}, "group-a")
    assert txn.consumer_group_to_add() is None
    assert txn.offsets_to_commit() == ({ORDERS0: OffsetAndMetadata(10, "")}, "group-a")
    txn.offset_committed(ORDERS0, 10, "group-a")
    assert done.done()


async def test_the_early_group_ends_with_its_transaction(producer):
    txn = producer._txn_manager
    await begin_early(producer, [], "group-a")
    txn.consumer_group_added("group-a")
    txn.committing_transaction()
    txn.complete_transaction()

    # A transaction begun the ordinary way adds no group until it has offsets.
    await producer.begin_transaction()
    assert txn.consumer_group_to_add() is None


async def test_a_group_not_yet_added_is_not_added_once_committing(producer):
    txn = producer._txn_manager
    await begin_early(producer, [], "group-a")
    txn.committing_transaction()
    assert txn.consumer_group_to_add() is None


async def test_begin_early_leaves_a_failed_transaction_alone(producer):
    txn = producer._txn_manager
    await begin_early(producer, [MARKET0], "group-a")
    txn.partition_added(MARKET0)
    txn.error_transaction(RuntimeError("refused"))  # an AddOffsetsToTxn error answer

    await begin_early(producer, [MARKET1], "group-a")
    assert txn.state is TransactionState.ABORTABLE_ERROR
    assert txn.partitions_to_add() == set()
