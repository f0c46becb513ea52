"""The embedded demo web: serve ``demo_web/`` (bundled Debian-licensed pages) on 127.0.0.1 with aiohttp.

``make demo`` serves it on a fixed port (:data:`DEFAULT_PORT`, ``--demo-port`` to change it): page and
image URLs hold the port, and they are the keys of the run's WARC records and row ids, so the same
port on a rerun means the same URLs, everything served from ``DIR/warc/`` and zero requests here.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from aiohttp import web

#: default port of the demo web (``--demo-port``); fixed so that a rerun's URLs are the first run's
DEFAULT_PORT = 8731


class DemoWeb:
    """A static aiohttp server for a directory, on ``127.0.0.1:port`` (0 = free port), in a background thread."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = Path(root)
        if not (self.root / "seeds.txt").is_file():
            raise FileNotFoundError(f"{self.root}/seeds.txt not found: is the demo web bundled?")
        self.port = port
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.requests = 0  # HTTP requests served (robots.txt included)

    async def _start(self) -> None:
        @web.middleware
        async def count(request, handler):
            self.requests += 1
            return await handler(request)

        app = web.Application(middlewares=[count])

        async def robots(_request):
            return web.Response(text="User-agent: *\nAllow: /\n")

        app.router.add_get("/robots.txt", robots)
        app.router.add_static("/", self.root, show_index=False, follow_symlinks=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> DemoWeb:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
