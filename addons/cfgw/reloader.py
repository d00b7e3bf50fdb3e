"""Edits to any module of the addon take effect while mitmdump/mitmweb runs, as edits to a
single-file script do.

mitmproxy watches only the script it was given (``cf_gateway.py``) and reloads it when
its mtime changes; the entry script drops the cached ``cfgw`` modules on every load.
This addon closes the loop: when a file under ``cfgw/`` changes, it touches the entry
script, and mitmproxy's own reload does the rest (including failing closed while a
broken edit is in place).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

log = logging.getLogger("cf_gateway")

INTERVAL = 1.0  # seconds, as mitmproxy's own script watcher


class ModuleReloader:
    def __init__(self, script: str) -> None:
        self.script = Path(script).resolve()
        self.package = self.script.parent / "cfgw"
        self.task: asyncio.Task | None = None
        self.seen = self.mtimes()

    def mtimes(self) -> dict[str, int]:
        try:
            return {p.name: p.stat().st_mtime_ns for p in self.package.glob("*.py")}
        except OSError:
            return {}

    def running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.watch())

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            now = self.mtimes()
            if now != self.seen:
                self.seen = now
                try:
                    os.utime(self.script)  # mitmproxy sees a newer script and reloads it
                except OSError as e:
                    log.warning(f"cf-gateway: cannot reload after a module changed: {e}")
                    return
