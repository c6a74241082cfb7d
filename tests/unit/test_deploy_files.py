"""docker compose cannot run here; at least keep the compose file and catalog coherent."""

from __future__ import annotations

from pathlib import Path

import yaml

from bastionary.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_kafka_clickhouse_and_a_worker_with_health_checks():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "worker"} <= set(services)
    for name in ("kafka", "clickhouse", "worker"):
        assert "healthcheck" in services[name], name
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    env = services["worker"]["environment"]
    assert env["BASTIONARY_CLICKHOUSE_DSN"].startswith("http://")
    assert (ROOT / services["worker"]["build"]["dockerfile"]).exists()


def test_deployed_catalog_is_valid():
    assert load_catalog(ROOT / "deploy" / "catalog.yaml").meters


def test_compose_has_no_default_for_a_secret():
    """An unset secret stops `docker compose up` with a message; it never becomes empty or a placeholder."""
    import re

    text = (ROOT / "docker-compose.yml").read_text()
    for name in ("CLICKHOUSE_PASSWORD", "BASTIONARY_API_KEYS", "BASTIONARY_WEBHOOK_SECRET"):
        uses = re.findall(r"\$\{" + name + r"(:?[-?])?([^}]*)\}", text)
        assert uses, name
        assert all(op == ":?" for op, _ in uses), (name, uses)
