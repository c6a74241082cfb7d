"""A worker refuses to start over consumed topics whose partition count is not
BASTIONARY_USAGE_PARTITIONS, on a real broker (the unit test drives a stand-in admin client):
it takes the setting for the topics' count when it works out which worker owns a customer."""

from __future__ import annotations

import asyncio
import uuid

import click
import pytest

from bastionary.cli.processes import create_topics
from bastionary.kafka import ensure_topics
from bastionary.settings import Settings
from bastionary.topics import Topics


def _prefix() -> str:
    return f"parts-{uuid.uuid4().hex[:8]}."


def test_a_consumed_topic_with_another_count_stops_the_start(kafka_bootstrap):
    prefix = _prefix()
    usage = Topics(prefix).usage_events
    asyncio.run(ensure_topics(kafka_bootstrap, [usage], 2))
    with pytest.raises(click.ClickException) as refused:
        create_topics(Settings(topic_prefix=prefix, usage_partitions=4), kafka_bootstrap)
    assert f"{usage} has 2" in refused.value.message
    assert "BASTIONARY_USAGE_PARTITIONS (4)" in refused.value.message


def test_topics_only_bastionary_writes_may_have_another_count(kafka_bootstrap):
    prefix = _prefix()
    topics = Topics(prefix)
    asyncio.run(ensure_topics(kafka_bootstrap, [topics.usage_dlq, topics.entitlement_changes], 8))
    create_topics(Settings(topic_prefix=prefix, usage_partitions=4), kafka_bootstrap)
    create_topics(Settings(topic_prefix=prefix, usage_partitions=4), kafka_bootstrap)  # every topic exists now
