"""The event loop entry points use (uvloop where installed, a dependency on Linux), and
`WriteBatch`, which the switch's HSM client and the HSM both write through."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine


class WriteBatch:
    """Frames written in one loop iteration leave in one write (one system call): `add`
    queues a frame and, for the first of an iteration, schedules `flush` with call_soon.
    `write` is the transport's (or StreamWriter's) write, `usable` says whether it still
    takes bytes; frames queued for a closed connection are dropped."""

    __slots__ = ("_write", "_usable", "_frames")

    def __init__(self, write: Callable[[bytes], Any], usable: Callable[[], bool]) -> None:
        self._write = write
        self._usable = usable
        self._frames: list[bytes] = []

    def add(self, data: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(data)

    def flush(self) -> None:
        if self._frames and self._usable():
            self._write(b"".join(self._frames))
        self._frames.clear()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """HOST:PORT (or PORT alone) for every command that listens or connects."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    if not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host or default_host, int(port)
