"""What the app's Pilot stories share: an async story run as a plain test (no asyncio plugin),
and a wait until the screen has got somewhere."""

from __future__ import annotations

import asyncio
import functools
import time


def scenario(test):
    """Run an async Pilot story as a plain test."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


async def until(pilot, condition, seconds: float = 20.0) -> None:
    """Let the app run until ``condition()`` holds (AssertionError after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)
    await pilot.pause()
