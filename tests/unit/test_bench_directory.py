"""The bench's working directory: gone after a run, except the logs a failure points at."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastionary.tools.bench.options import BenchError
from bastionary.tools.bench.processes import bench_directory


def fill(root: Path) -> None:
    (root / "logs").mkdir()
    (root / "logs" / "worker-single.log").write_text("what went wrong\n")
    (root / "broker" / "segments").mkdir(parents=True)
    (root / "broker" / "segments" / "0.log").write_bytes(b"x" * 100)
    (root / "catalog.yaml").write_text("meters: []\n")


def bench(roots: list[Path], given: Path | None = None, fails: BaseException | None = None, logs: bool = True) -> None:
    """A bench that fills its directory (``roots`` gets it), then fails with ``fails``."""
    with bench_directory("bench-", given) as root:
        roots.append(root)
        if logs:
            fill(root)
        else:
            (root / "catalog.yaml").write_text("meters: []\n")
        if fails is not None:
            raise fails


@pytest.fixture(autouse=True)
def temporary_directories_here(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))


def test_a_finished_bench_leaves_nothing():
    roots: list[Path] = []
    bench(roots)
    assert not roots[0].exists()


def test_a_failed_bench_keeps_its_logs_and_nothing_else(capsys):
    roots: list[Path] = []
    with pytest.raises(BenchError):
        bench(roots, fails=BenchError("the worker did not answer; see logs/worker-single.log"))
    assert [p.name for p in roots[0].iterdir()] == ["logs"]
    assert (roots[0] / "logs" / "worker-single.log").read_text() == "what went wrong\n"
    assert f"its logs are kept in {roots[0] / 'logs'}" in capsys.readouterr().err


def test_an_interrupted_bench_keeps_its_logs_too():
    roots: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        bench(roots, fails=KeyboardInterrupt("signal 15"))
    assert [p.name for p in roots[0].iterdir()] == ["logs"]


def test_a_failed_bench_without_logs_leaves_nothing_and_claims_no_logs(capsys):
    roots: list[Path] = []
    with pytest.raises(BenchError):
        bench(roots, fails=BenchError("the broker did not start"), logs=False)
    assert not roots[0].exists()
    assert "logs are kept" not in capsys.readouterr().err


@pytest.mark.parametrize("fails", [None, BenchError("failed")])
def test_a_directory_the_operator_gave_is_left_as_it_is(tmp_path, fails):
    roots: list[Path] = []
    given = tmp_path / "kept"
    try:
        bench(roots, given, fails)
    except BenchError:
        assert fails is not None
    assert roots == [given]
    assert sorted(p.name for p in given.iterdir()) == ["broker", "catalog.yaml", "logs"]
