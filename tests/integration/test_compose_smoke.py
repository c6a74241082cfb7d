"""The compose deployment, brought up where a Docker engine answers (skipped otherwise: this
repo's CI machine has none, so the static checks in tests/unit/test_deploy_files.py are what
runs there): `docker compose config` accepts it, two workers come up healthy, each on its own
published port, and Prometheus scrapes both."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not docker_answers(), reason="no Docker engine answers here")
def test_the_stack_comes_up_with_two_workers_scraped(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "CLICKHOUSE_PASSWORD=smoke\nBASTIONARY_API_KEYS=smoke-key\nGRAFANA_ADMIN_PASSWORD=smoke\n"
        "BASTIONARY_WEBHOOK_URL=http://localhost:9/none\n"
        "BASTIONARY_WEBHOOK_SECRET=whsec_c21va2Utc2Vjc2Vjc2Vjc2Vjc2Vjc2Vj\n"
    )
    compose = ["docker", "compose", "--env-file", str(env_file), "-p", "bastionary-smoke"]

    def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*compose, *args], cwd=ROOT, capture_output=True, timeout=timeout)

    assert run("config", "--quiet").returncode == 0
    try:
        up = run("up", "-d", "--build", "--wait", "--scale", "worker=2")
        assert up.returncode == 0, up.stderr.decode()[-2000:]
        for index in (1, 2):
            port = run("port", "--index", str(index), "worker", "6066").stdout.decode().strip().rsplit(":", 1)[1]
            with urllib.request.urlopen(f"http://localhost:{port}/healthz", timeout=10) as answer:
                assert json.load(answer)["status"] == "ok"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with urllib.request.urlopen("http://localhost:9090/api/v1/targets", timeout=10) as answer:
                targets = json.load(answer)["data"]["activeTargets"]
            if len([t for t in targets if t["health"] == "up"]) == 2:
                break
            time.sleep(5)
        else:
            pytest.fail(f"Prometheus does not scrape both workers: {targets}")
    finally:
        run("down", "-v", timeout=300)
