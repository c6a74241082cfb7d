"""Draw the Grafana dashboard's panels from a real `bastionary demo` run: `make dashboard-shots`.

Where no Docker engine runs there is no Grafana to take a screenshot of, so this does what
Grafana would with the same inputs: a real Prometheus scrapes the demo's worker, each panel's
own PromQL (read from `dashboards/bastionary.json`) is evaluated by that Prometheus through its
`query_range` API, and matplotlib draws the results in the dashboard's grid. Nothing is
simulated: an empty panel means the demo's run did not move that metric.

Needs a `prometheus` binary: on PATH or named by `PROMETHEUS=...` (Debian's `prometheus`
package has one: `apt-get download prometheus && dpkg -x prometheus_*.deb prom`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

DASHBOARD = Path(__file__).parent / "dashboards" / "bastionary.json"
SCRAPE_SECONDS = 2
METRICS_URL = re.compile(r"metrics at http://([\d.]+:\d+)/metrics")
UNIT_LABELS = {"ops": "per second", "s": "seconds", "short": "", "reqps": "per second"}


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/dashboard.png")
    prometheus = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not prometheus:
        sys.stderr.write("Error: no prometheus binary: put one on PATH or set PROMETHEUS=/path/to/prometheus\n")
        return 1
    with tempfile.TemporaryDirectory(prefix="bastionary-shots-") as scratch:
        work = Path(scratch)
        port = _free_port()
        targets = work / "targets.json"
        targets.write_text("[]")
        server = _start_prometheus(prometheus, work, targets, port)
        try:
            window = _run_demo(work, targets)
            if window is None:
                return 1
            panels = _evaluate(f"http://127.0.0.1:{port}", window)
        finally:
            server.terminate()
            server.wait(10)
    _draw(panels, window, out)
    sys.stdout.write(f"wrote {out}\n")
    return 0


def _start_prometheus(binary: str, work: Path, targets: Path, port: int) -> subprocess.Popen[bytes]:
    config = work / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
                "scrape_configs": [
                    {
                        "job_name": "bastionary-worker",
                        "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                    }
                ],
            }
        )
    )
    return subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "prometheus.log").open("wb"),
    )


def _run_demo(work: Path, targets: Path) -> tuple[float, float] | None:
    """Run the demo in a data directory of its own; point Prometheus at its worker once it says
    where. Returns the run's time window, or None when the demo failed."""
    command = [str(Path(sys.executable).parent / "bastionary"), "demo"]
    env = os.environ | {"BASTIONARY_DATA_DIR": str(work / "data")}
    demo = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if demo.stdout is None:
        raise RuntimeError("the demo's output is not piped")
    start = time.time()
    for line in demo.stdout:
        sys.stdout.write(line)
        if found := METRICS_URL.search(line):
            targets.write_text(json.dumps([{"targets": [found.group(1)], "labels": {"instance": "demo-worker"}}]))
            start = time.time()
    end = time.time()
    if demo.wait() != 0:
        sys.stderr.write(f"Error: the demo failed (exit {demo.returncode}); nothing drawn\n")
        return None
    return start, end


def _evaluate(prometheus: str, window: tuple[float, float]) -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        lines = []
        for target in panel.get("targets", []):
            for series in _query_range(prometheus, target["expr"], window):
                legend = _legend(target.get("legendFormat", ""), series["metric"])
                points = [(float(t), float(v)) for t, v in series["values"]]
                lines.append((legend, points))
        panels.append({"panel": panel, "lines": lines})
    return panels


def _query_range(prometheus: str, expr: str, window: tuple[float, float]) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr, "start": window[0], "end": window[1], "step": SCRAPE_SECONDS})
    url = f"{prometheus}/api/v1/query_range?{query}"  # our own Prometheus on 127.0.0.1
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def _draw(panels: list[dict[str, Any]], window: tuple[float, float], out: Path) -> None:
    """The dashboard's own grid: 24 columns, rows of gridPos height units."""
    rows = max(p["panel"]["gridPos"]["y"] + p["panel"]["gridPos"]["h"] for p in panels)
    plt.style.use("dark_background")
    figure = plt.figure(figsize=(20, rows * 0.42), facecolor="#111217", layout="constrained")
    started = datetime.fromtimestamp(window[0], UTC)
    figure.suptitle(
        f"Bastionary dashboard, panels drawn from one `bastionary demo` run ({started:%Y-%m-%d %H:%M} UTC, "
        f"{window[1] - window[0]:.0f} s), evaluated by Prometheus from deploy/grafana/dashboards/bastionary.json",
        color="#d8d9da",
        fontsize=13,
    )
    grid = figure.add_gridspec(rows, 24)
    for item in panels:
        panel, lines = item["panel"], item["lines"]
        pos = panel["gridPos"]
        axes = figure.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        axes.set_facecolor("#181b1f")
        axes.set_title(panel["title"], loc="left", fontsize=11, color="#d8d9da")
        for legend, points in lines:
            times = [datetime.fromtimestamp(t, UTC) for t, _ in points]
            axes.plot(times, [v for _, v in points], linewidth=1.4, label=legend)
        if lines:
            axes.legend(fontsize=7, loc="upper left", framealpha=0.4, ncol=2)
        else:
            axes.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=axes.transAxes, color="gray")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        axes.set_ylabel(UNIT_LABELS.get(unit, unit), fontsize=8)
        axes.set_xlim(datetime.fromtimestamp(window[0], UTC), datetime.fromtimestamp(window[1], UTC))
        axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.15)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80, facecolor=figure.get_facecolor())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    raise SystemExit(main())
