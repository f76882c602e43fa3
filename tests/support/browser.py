"""A headless Chromium driven over the DevTools protocol, for tests of pages we write.

Chromium is started with ``--remote-debugging-pipe``: it reads commands from file descriptor 3
and writes replies and events to 4, each a JSON object ended by a NUL byte. So no port is
opened and no package beyond the browser is needed. Every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def chromium() -> str | None:
    """The Chromium executable, or None where it is not installed."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


@dataclass
class LoadedPage:
    text: str  # document.body.innerText once the page has loaded
    errors: list[str]  # uncaught exceptions, console.error calls, resources that failed
    screenshot: bytes  # PNG of the viewport


def open_page(path: Path, *, width: int = 1280, height: int = 1600, timeout: float = 60) -> Any:
    """Load ``path`` in a fresh headless Chromium; what it shows and what went wrong."""
    executable = chromium()
    assert executable, "chromium is not installed"
    commands_read, commands_write = os.pipe()
    events_read, events_write = os.pipe()

    def wire_pipes() -> None:  # in the child: the protocol's descriptors must be 3 and 4
        commands, events = os.dup(commands_read), os.dup(events_write)
        os.dup2(commands, 3)
        os.dup2(events, 4)

    profile = tempfile.mkdtemp(prefix="chromium_profile_")
    # Its own process group: the renderer and helper processes are killed with the browser,
    # before the profile they write to is removed.
    process = subprocess.Popen(
        [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        close_fds=False,
        env={**os.environ, "TMPDIR": profile},  # its own temporary files go with the profile
        preexec_fn=wire_pipes,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(commands_read)
    os.close(events_write)
    session = _Session(commands_write, events_read, time.monotonic() + timeout)
    try:
        return session.load(path.resolve().as_uri(), width, height)
    finally:
        os.close(commands_write)
        os.close(events_read)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        _remove(Path(profile))


def _remove(folder: Path, attempts: int = 50) -> None:
    """Remove a folder that a process just killed may still have had a file open in."""
    for _ in range(attempts - 1):
        try:
            shutil.rmtree(folder)
            return
        except OSError:
            time.sleep(0.1)
    shutil.rmtree(folder)


class _Session:
    def __init__(self, commands: int, events: int, deadline: float) -> None:
        self.commands, self.events, self.deadline = commands, events, deadline
        self.received: list[dict[str, Any]] = []
        self.pending = b""
        self.last_id = 0
        self.session_id: str | None = None

    def load(self, url: str, width: int, height: int) -> LoadedPage:
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(target for target in targets if target["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session_id = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call("Page.navigate", url=url)
        while not any(event.get("method") == "Page.loadEventFired" for event in self.received):
            self.received.append(self._next_message())
        text = self.call("Runtime.evaluate", expression="document.body.innerText")
        shot = self.call("Page.captureScreenshot", format="png")
        return LoadedPage(text["result"]["value"], self._errors(), base64.b64decode(shot["data"]))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if self.session_id and not method.startswith("Target."):
            message["sessionId"] = self.session_id
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._next_message()
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.received.append(reply)

    def _next_message(self) -> dict[str, Any]:
        while b"\0" not in self.pending:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            if select.select([self.events], [], [], left)[0]:
                chunk = os.read(self.events, 1 << 16)
                if not chunk:
                    raise EOFError("chromium exited")
                self.pending += chunk
        message, self.pending = self.pending.split(b"\0", 1)
        return json.loads(message)

    def _errors(self) -> list[str]:
        errors = []
        for event in self.received:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                errors.append(" ".join(str(arg.get("value")) for arg in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"] + " " + params["entry"].get("url", ""))
        return errors
