"""What every vendor simulator shares: serving a Litestar app with uvicorn on 127.0.0.1, in
a thread of the test's process or as a process of its own, and the switches tests flip.

Switches (:class:`Switches`), changeable at any time:

- ``outage``: every request is answered ``503`` with the vendor's error shape;
- ``slow_seconds``: every answer waits this long first;
- ``reject_auth``: credentials are refused (``401``), whatever they are.

A stopped simulator refuses connections; :meth:`Simulator.start` again serves on the same
port, so "server down and back" is ``stop()`` then ``start()``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from litestar import Litestar

from tests.services.process import free_port


@dataclass
class Switches:
    """The failure switches of a simulator (see the module docstring)."""

    outage: bool = False
    slow_seconds: float = 0.0
    reject_auth: bool = False

    async def delay(self) -> None:
        """Wait ``slow_seconds``."""
        if self.slow_seconds:
            await asyncio.sleep(self.slow_seconds)


class Simulator:
    """A vendor endpoint served by uvicorn on ``127.0.0.1:port``.

    Subclasses build their routes in :meth:`app`; ``switches`` are theirs to honour.
    """

    name = "simulator"
    #: uvicorn's log level (a simulator that aborts answers on purpose sets "critical").
    log_level = "warning"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.switches = Switches()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request answered
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Litestar:
        """The Litestar app serving the vendor's paths."""
        raise NotImplementedError

    def seen(self, method: str, path: str) -> None:
        """Record a request (tests count them)."""
        with self._lock:
            self.requests.append((method, path))

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level=self.log_level,
                              lifespan="off", timeout_graceful_shutdown=1)

    def start(self) -> Simulator:
        """Serve in a background thread; returns once listening.

        :raises RuntimeError: it did not start within 10 s (the port is taken).
        """
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(target=self._server.run, name=f"{self.name}-simulator",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} simulator did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving: connections are refused until :meth:`start` is called again."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in this process until SIGINT or SIGTERM (``python -m tests.simulators.<vendor>``)."""
        print(f"{self.name} simulator on {self.base_url}", flush=True)
        # uvicorn shuts down on SIGINT and SIGTERM, then raises the signal again for the
        # handlers it found: these make that a clean exit
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: sys.exit(0))
        uvicorn.Server(self._config()).run()


def arguments(description: str) -> argparse.Namespace:
    """The command line of a simulator run as a process: ``--port N`` (default: a free one)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1")
    return parser.parse_args()
