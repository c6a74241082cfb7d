"""The event loop a worker runs on: uvloop unless ``BASTIONARY_EVENT_LOOP=asyncio``.

A worker's event loop answers the HTTP checks and reads the usage records, and it shares
the interpreter with the flush threads. On the development machine, uvloop's loop ran the
same checks with a shorter tail than asyncio's own (README, thirteenth session). asyncio's
loop stays one setting away, for a platform without uvloop or a suspected loop bug.
"""

from __future__ import annotations

import asyncio
from typing import Literal, get_args

EventLoop = Literal["uvloop", "asyncio"]
EVENT_LOOPS: tuple[str, ...] = get_args(EventLoop)  # for command-line choices


class EventLoopUnavailable(RuntimeError):
    pass


def use_event_loop(name: EventLoop) -> None:
    """Make every event loop this process creates from now on a ``name`` loop.

    Call it before anything creates one: Faust, mode and aiokafka take the loop they find.
    """
    if name == "asyncio":
        asyncio.set_event_loop_policy(None)  # asyncio's default policy
        return
    try:
        import uvloop
    except ImportError as exc:  # a platform uvloop has no wheel for (Windows)
        raise EventLoopUnavailable(
            "BASTIONARY_EVENT_LOOP=uvloop needs the uvloop package; install it, or set BASTIONARY_EVENT_LOOP=asyncio"
        ) from exc
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop running the caller, for logs and reports."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
