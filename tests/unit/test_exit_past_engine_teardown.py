"""Long-running commands that opened chdb end with os._exit once done, with their output
flushed and the exit status a SystemExit would have given."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bastionary.cli import common


@pytest.mark.parametrize(
    ("code", "status", "stderr"), [(None, 0, ""), (0, 0, ""), (3, 3, ""), ("stopped", 1, "stopped\n")]
)
def test_the_status_is_the_one_system_exit_gives_and_output_is_flushed(code, status, stderr):
    program = (
        "import logging, sys\n"
        "from bastionary.runtime import exit_past_engine_teardown\n"
        "logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
        "sys.stdout.write('unflushed')\n"  # no newline: still in the buffer
        f"exit_past_engine_teardown({code!r})\n"
        "print('never')\n"
    )
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert finished.returncode == status
    assert finished.stdout == "unflushed"
    assert finished.stderr == stderr


class Ended(Exception):
    """Stands for os._exit: nothing after it runs."""


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    seen: list[object] = []

    def exit_past_engine_teardown(code: object) -> None:
        seen.append(code)
        raise Ended

    monkeypatch.setattr(common, "exit_past_engine_teardown", exit_past_engine_teardown)
    return seen


def command(outcome: object):  # type: ignore[no-untyped-def]
    @common.ends_past_engine_teardown
    def run() -> None:
        if isinstance(outcome, BaseException):
            raise outcome

    return run


def test_with_chdb_in_the_process_the_command_ends_past_the_teardown(monkeypatch, exits):
    monkeypatch.setattr(common, "engine_in_process", lambda: True)
    for outcome in (None, SystemExit(2), SystemExit(None)):
        with pytest.raises(Ended):
            command(outcome)()
    assert exits == [0, 2, None]


def test_without_chdb_the_command_ends_as_it_always_did(monkeypatch, exits):
    monkeypatch.setattr(common, "engine_in_process", lambda: False)
    command(None)()
    with pytest.raises(SystemExit) as exited:
        command(SystemExit(2))()
    assert exited.value.code == 2
    assert exits == []


def test_other_exceptions_are_left_to_click(monkeypatch, exits):
    monkeypatch.setattr(common, "engine_in_process", lambda: True)
    with pytest.raises(RuntimeError):
        command(RuntimeError("broken"))()
    assert exits == []
