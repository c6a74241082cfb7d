"""PartitionOwnership: a key's partition is hashed once, its owner asked on every request."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from bastionary.worker.api.owners import PartitionOwnership

TOPIC = "bastionary-entitlements-changelog"


@dataclass
class _Changelog:
    def get_topic_name(self) -> str:
        return TOPIC

    def prepare_key(self, key: str, serializer: object) -> tuple[bytes, object]:
        return key.encode(), serializer


@dataclass
class _Table:
    changelog_topic: _Changelog = field(default_factory=_Changelog)


@dataclass
class _Producer:
    partitions: int = 4
    hashed: list[bytes] = field(default_factory=list)
    metadata_known: bool = True

    def key_partition(self, topic: str, key: bytes) -> TP:
        if not self.metadata_known:  # what aiokafka raises before the topic's metadata arrives
            raise TypeError("'NoneType' object is not iterable")
        self.hashed.append(key)
        return TP(topic, sum(key) % self.partitions)


@dataclass
class _Assignor:
    active: set[TP] = field(default_factory=set)

    def is_active(self, tp: TP) -> bool:
        return tp in self.active


@dataclass
class _App:
    producer: _Producer = field(default_factory=_Producer)
    assignor: _Assignor = field(default_factory=_Assignor)


def _ownership(remembered: int = 100) -> tuple[PartitionOwnership, _App]:
    app = _App()
    return PartitionOwnership(app, _Table(), remembered), app  # type: ignore[arg-type]


def test_a_key_is_hashed_once_and_its_owner_asked_every_time():
    ownership, app = _ownership()
    tp = app.producer.key_partition(TOPIC, b"c1")
    app.producer.hashed.clear()
    assert not ownership.owned_here("c1")
    app.assignor.active.add(tp)  # a rebalance gave this worker the partition
    assert ownership.owned_here("c1")
    app.assignor.active.clear()  # and took it away
    assert not ownership.owned_here("c1")
    assert app.producer.hashed == [b"c1"]


def test_after_partitions_move_each_key_is_hashed_again():
    ownership, app = _ownership()
    ownership.owned_here("c1")
    app.producer.partitions = 8  # the count may change only with a rebalance, which calls forget
    ownership.forget()
    app.assignor.active.add(TP(TOPIC, sum(b"c1") % 8))
    assert ownership.owned_here("c1")
    assert app.producer.hashed == [b"c1", b"c1"]


def test_before_the_topic_is_known_the_routing_error_reaches_the_caller_and_nothing_is_kept():
    ownership, app = _ownership()
    app.producer.metadata_known = False
    with pytest.raises(TypeError):
        ownership.owned_here("c1")
    app.producer.metadata_known = True
    app.assignor.active.add(TP(TOPIC, sum(b"c1") % 4))
    assert ownership.owned_here("c1")


@given(st.lists(st.text(min_size=1, max_size=8), max_size=60), st.sets(st.integers(0, 3)))
def test_the_answer_is_always_the_assignors_for_the_keys_partition_whatever_it_remembers(keys, active):
    ownership, app = _ownership(remembered=5)
    app.assignor.active = {TP(TOPIC, p) for p in active}
    for key in keys:
        expected = (sum(key.encode()) % 4) in active
        assert ownership.owned_here(key) is expected
    assert len(ownership._partitions) <= 5


def test_keys_of_one_partition_share_one_tp_and_forget_drops_it():
    ownership, app = _ownership()
    for key in ("a", "e", "i"):  # each hashes to partition 1 of 4
        ownership.owned_here(key)
    assert len({id(tp) for tp in ownership._partitions.values()}) == 1
    ownership.forget()
    assert ownership._shared == {}
    app.producer.partitions = 2  # "a" now hashes to partition 1 of 2
    app.assignor.active.add(TP(TOPIC, sum(b"a") % 2))
    assert ownership.owned_here("a")
