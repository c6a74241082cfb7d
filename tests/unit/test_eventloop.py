"""BASTIONARY_EVENT_LOOP: the loop every new event loop of the process is, and a clear error
where uvloop cannot be had."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
import uvloop

from bastionary.eventloop import EventLoopUnavailable, running_loop_name, use_event_loop
from bastionary.settings import ConfigError, load_settings


@pytest.fixture
def policy_restored() -> Iterator[None]:
    saved = asyncio.get_event_loop_policy()
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(saved)


async def _name_and_type() -> tuple[str, type]:
    return running_loop_name(), type(asyncio.get_running_loop())


@pytest.mark.usefixtures("policy_restored")
def test_uvloop_makes_every_new_loop_a_uvloop_loop():
    use_event_loop("uvloop")
    name, loop_type = asyncio.run(_name_and_type())
    assert name == "uvloop"
    assert issubclass(loop_type, uvloop.Loop)


@pytest.mark.usefixtures("policy_restored")
def test_asyncio_puts_the_standard_loop_back_after_uvloop():
    use_event_loop("uvloop")
    use_event_loop("asyncio")
    name, loop_type = asyncio.run(_name_and_type())
    assert name == "asyncio"
    assert not issubclass(loop_type, uvloop.Loop)
    assert issubclass(loop_type, asyncio.BaseEventLoop)


@pytest.mark.usefixtures("policy_restored")
def test_uvloop_missing_is_one_clear_error_naming_the_setting(monkeypatch):
    before = asyncio.get_event_loop_policy()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets without the package
    with pytest.raises(EventLoopUnavailable, match="BASTIONARY_EVENT_LOOP=asyncio"):
        use_event_loop("uvloop")
    assert asyncio.get_event_loop_policy() is before  # nothing half-done


def test_the_setting_defaults_to_uvloop_and_takes_asyncio(monkeypatch):
    monkeypatch.delenv("BASTIONARY_EVENT_LOOP", raising=False)
    assert load_settings().event_loop == "uvloop"
    monkeypatch.setenv("BASTIONARY_EVENT_LOOP", "asyncio")
    assert load_settings().event_loop == "asyncio"


@pytest.mark.parametrize("value", ["UVLOOP", "trio", "", "uvloop "])
def test_any_other_loop_is_refused_before_anything_starts(monkeypatch, value):
    monkeypatch.setenv("BASTIONARY_EVENT_LOOP", value)
    with pytest.raises(ConfigError, match="BASTIONARY_EVENT_LOOP"):
        load_settings()
