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
    for name in ("CLICKHOUSE_PASSWORD", "BASTIONARY_API_KEYS", "BASTIONARY_WEBHOOK_SECRET", "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + name + r"(:?[-?])?([^}]*)\}", text)
        assert uses, name
        assert all(op == ":?" for op, _ in uses), (name, uses)


def test_kafka_serves_containers_and_the_host_on_their_own_listeners():
    kafka = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["INTERNAL"] == "kafka:29092" and advertised["HOST"].endswith(":9092")
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"


def test_workers_scale_each_advertising_its_own_address():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    worker = services["worker"]
    assert worker["ports"] == ["6066"]  # no fixed host port to clash under --scale
    assert "{ip}" in worker["environment"]["BASTIONARY_WEB_URL"]
    assert worker["environment"]["BASTIONARY_KAFKA_BOOTSTRAP"] == "kafka:29092"
    assert {"prometheus", "grafana"} <= set(services)
    for volume in ("kafka-data", "clickhouse-data", "prometheus-data", "grafana-data"):
        assert volume in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]


def test_the_image_installs_the_runtime_lock_which_is_requirements_lock_without_test_tools():
    import importlib.util

    spec = importlib.util.spec_from_file_location("runtime_lock", ROOT / "deploy" / "runtime_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "deploy" / "requirements-runtime.lock").read_text()
    assert committed == module.runtime_lock(), "run: make runtime-lock"
    pins = {line for line in committed.splitlines() if "==" in line}
    assert pins <= set((ROOT / "requirements.lock").read_text().splitlines())
    names = {line.split("==")[0].lower() for line in pins}
    assert not names & {"pytest", "hypothesis", "testcontainers", "docker", "ruff", "mypy", "schemathesis"}
    assert "requirements-runtime.lock" in (ROOT / "deploy" / "Dockerfile").read_text()


def test_the_dashboard_queries_only_metrics_the_workers_export():
    import json
    import re

    from bastionary.metrics import REGISTRY

    samples = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            samples.add(family.name + "_total")
        elif family.type == "histogram":
            samples |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            samples.add(family.name)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "bastionary.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"bastionary_[a-z0-9_]+", target["expr"])
    }
    assert used and used <= samples, used - samples
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("ingest", "lag", "dead letters", "flush", "invoices", "amount", "dunning", "entitlement"):
        assert topic in titles, topic
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {sources["datasources"][0]["uid"]}
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0]["names"] == ["worker"] and scrape["dns_sd_configs"][0]["port"] == 6066


def kubernetes_documents() -> list[dict]:
    return [
        document
        for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_the_kubernetes_manifests_validate_against_the_kubernetes_schemas():
    import kubernetes_validate

    documents = kubernetes_documents()
    assert {d["kind"] for d in documents} == {"ConfigMap", "Deployment", "Service"}
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_the_kubernetes_workers_probe_healthz_and_advertise_their_own_address():
    documents = kubernetes_documents()
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"  # alive through an outage
    env = {e["name"]: e for e in container["env"]}
    assert "{ip}" in env["BASTIONARY_WEB_URL"]["value"]
    assert all("valueFrom" in env[name] for name in ("BASTIONARY_API_KEYS", "BASTIONARY_WEBHOOK_SECRET"))
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    assert services["bastionary-workers"]["spec"]["clusterIP"] == "None"
    (config,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert config["data"]["catalog.yaml"] == (ROOT / "deploy" / "catalog.yaml").read_text()
