"""What the app's Pilot stories share: an async story run as a plain test (no asyncio plugin)."""

from __future__ import annotations

import asyncio
import functools


def scenario(test):
    """Run an async Pilot story as a plain test."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run
