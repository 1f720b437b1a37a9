"""The event loop entry points use: uvloop where installed (a dependency on Linux)."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)
