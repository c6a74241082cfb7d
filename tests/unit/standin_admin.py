"""A stand-in for aiokafka's admin client, for the topic checks no embedded broker can fail
(Tansu creates any topic, with any replication)."""

from __future__ import annotations

from typing import Any

import pytest


def install_admin(
    monkeypatch: pytest.MonkeyPatch,
    partitions: dict[str, int],
    create_errors: list[tuple[str, int, str]] | None = None,
) -> list[str]:
    """Every admin client the code opens talks to a broker that holds ``partitions`` (topic ->
    count) and answers CreateTopics with ``create_errors`` (topic, code, message; a refused topic
    is not created). Returns the names of the topics the code created."""
    created: list[str] = []
    refused = {topic for topic, _, _ in create_errors or []}

    class Answer:
        def __init__(self) -> None:
            self.topic_errors = list(create_errors or [])

    class Admin:
        def __init__(self, **_options: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def list_topics(self) -> list[str]:
            return list(partitions)

        async def create_topics(self, topics: list[Any]) -> Answer:
            for topic in topics:
                if topic.name not in refused:
                    created.append(topic.name)
                    partitions[topic.name] = topic.num_partitions
            return Answer()

        async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
            return [
                {"error_code": 0, "topic": name, "partitions": [{"partition": p} for p in range(partitions[name])]}
                for name in names
                if name in partitions
            ]

    monkeypatch.setattr("bastionary.kafka.AIOKafkaAdminClient", Admin)
    monkeypatch.setattr("aiokafka.admin.AIOKafkaAdminClient", Admin)
    return created
