"""What operators run, as the worker behaves: review 43 of docker-compose.yml and deploy/k8s/."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from bastionary.worker.api.health import health_report

ROOT = Path(__file__).resolve().parents[2]


def compose_services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def worker_container() -> dict:
    documents = [
        document
        for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_kubernetes_liveness_does_not_fail_while_kafka_is_away():
    # /healthz is 503 once the broker has been silent for seconds: as liveness, a Kafka outage
    # restarted every worker, and a worker started without Kafka exits at once.
    now = time.monotonic()
    report = health_report("w", None, now - 30, None, started_at=now - 600, stall_after=60, broker_silence=11)
    assert report["status"] == "unhealthy"
    container = worker_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"


def test_compose_restarts_a_worker_that_stopped_itself():
    # A failed flush or intake stops the worker so that a restart replays; without a restart
    # policy the worker stayed down after any ClickHouse blip.
    services = compose_services()
    for name in ("kafka", "clickhouse", "worker", "prometheus", "grafana"):
        assert services[name].get("restart") in ("unless-stopped", "always"), name


def test_compose_gives_each_worker_replica_its_own_worker_id():
    # bastionary is PID 1 in each container, so the default worker-<pid> made every replica worker-1.
    worker = compose_services()["worker"]
    entrypoint = " ".join(worker["entrypoint"])
    assert "BASTIONARY_WORKER_ID=$$HOSTNAME" in entrypoint  # $$: compose passes $HOSTNAME to sh
    assert "exec bastionary worker" in entrypoint  # bastionary stays PID 1 and gets SIGTERM itself
    assert "BASTIONARY_WORKER_ID" not in worker["environment"]


def test_kubernetes_workers_create_replicated_topics():
    # The manifest runs against a production Kafka: topics with one replica lose unconsumed
    # usage with their broker.
    env = {e["name"]: e for e in worker_container()["env"]}
    assert int(env["BASTIONARY_TOPIC_REPLICATION"]["value"]) >= 3
