"""A small DevTools-protocol client for Debian's headless ``chromium`` (no browser download, no extra package).

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from file
descriptor 3 and writes replies and events to descriptor 4, one JSON message per NUL-terminated
chunk. :func:`render` opens a page in a fresh tab and returns what a reader's browser would have
seen: console messages and uncaught exceptions, every network request, the images and whether they
decoded, the figures and section ids of the page, and a full-page screenshot. No test functions here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["find_chromium", "Chromium", "PageResult", "render"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_PAGE_FACTS_JS = """
(() => {
  const imgs = Array.from(document.images).map(i => ({
    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
    src: i.currentSrc.slice(0, 40)}));
  return {
    title: document.title,
    images: imgs,
    figures: Array.from(document.querySelectorAll('figure')).map(f => ({
      alt: (f.querySelector('img') || {}).alt || '',
      caption: (f.querySelector('figcaption') || {}).textContent || ''})),
    sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
    details: Array.from(document.querySelectorAll('details')).map(d => d.open),
    stylesheets: Array.from(document.styleSheets).map(s => s.href),
    scripts: document.scripts.length,
    width: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
    height: document.documentElement.scrollHeight,
    text: document.body.innerText.slice(0, 200000),
  };
})()
"""


def find_chromium() -> str | None:
    """Path of a Chromium executable on PATH (Debian's package installs ``chromium``)."""
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    """What rendering one page produced."""

    url: str
    console: list[dict[str, Any]] = field(default_factory=list)  # {"level", "text"}
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    failed_requests: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads, as text."""
        out = [f"console {m['level']}: {m['text']}" for m in self.console if m["level"] in ("error", "assert")]
        out += [f"exception: {e}" for e in self.exceptions]
        out += [f"failed request: {u}" for u in self.failed_requests]
        return out

    @property
    def external_requests(self) -> list[str]:
        """Requests for anything but the page itself and inlined ``data:`` URIs."""
        return [u for u in self.requests if not u.startswith("data:") and u.split("#")[0] != self.url]

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [i for i in self.facts.get("images", []) if not i["complete"] or i["width"] == 0]


class Chromium:
    """One headless Chromium process driven over the DevTools pipe; use as a context manager."""

    def __init__(self, executable: str, *, timeout: float = 60.0) -> None:
        self.executable = executable
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="vbm-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def _wire_fds() -> None:  # runs in the child before exec: the protocol expects fds 3 and 4
            # move both ends out of the way first: a pipe end may itself be fd 3 or 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3, inheritable=True)
            os.dup2(b, 4, inheritable=True)

        args = [
            self.executable,
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            f"--user-data-dir={self._profile}",
            "about:blank",
        ]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_wire_fds, close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.call("Target.setDiscoverTargets", {"discover": False})
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._send("Browser.close", {})
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=15)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol ---------------------------------------------------------------------------------
    def _send(self, method: str, params: dict[str, Any], session: str | None = None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"chromium closed the DevTools pipe; stderr:\n{err[-4000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and wait for its reply (events that arrive meanwhile are queued)."""
        ident = self._send(method, params or {}, session)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._events.append(msg)

    def wait_for(self, method: str, session: str, timeout: float | None = None) -> dict[str, Any]:
        """The first event ``method`` of ``session`` (queued or to come)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return self._events.pop(i)
            self._events.append(self._read_message(deadline))

    def drain(self, session: str, quiet: float = 0.5) -> list[dict[str, Any]]:
        """Every event of ``session`` so far, after ``quiet`` seconds without new messages."""
        while True:
            ready, _, _ = select.select([self._from_child], [], [], quiet)
            if not ready and b"\0" not in self._buffer:
                break
            self._events.append(self._read_message(time.monotonic() + self.timeout))
        mine = [e for e in self._events if e.get("sessionId") == session]
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return mine

    # -- one page ---------------------------------------------------------------------------------
    def render(self, path: Path, *, width: int = 1200) -> PageResult:
        """Open ``path`` (a local HTML file) in a new tab; return what happened and a full-page screenshot."""
        url = Path(path).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", {}, session)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
            self.call("Page.navigate", {"url": url}, session)
            self.wait_for("Page.loadEventFired", session)
            facts = self.call("Runtime.evaluate", {"expression": _PAGE_FACTS_JS, "returnByValue": True}, session)
            result = PageResult(url=url, facts=facts["result"].get("value", {}))
            height = int(min(max(result.facts.get("height", 900), 900), 16000))
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
            shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
            result.screenshot = base64.b64decode(shot["data"])
            for ev in self.drain(session):
                method, params = ev["method"], ev.get("params", {})
                if method == "Runtime.consoleAPICalled":
                    text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                    result.console.append({"level": params.get("type", "log"), "text": text})
                elif method == "Runtime.exceptionThrown":
                    details = params.get("exceptionDetails", {})
                    text = details.get("exception", {}).get("description") or details.get("text")
                    result.exceptions.append(str(text))
                elif method == "Log.entryAdded":
                    entry = params.get("entry", {})
                    level = "error" if entry.get("level") == "error" else entry.get("level", "info")
                    result.console.append({"level": level, "text": f"{entry.get('source')}: {entry.get('text')}"})
                elif method == "Network.requestWillBeSent":
                    result.requests.append(params.get("request", {}).get("url", ""))
                elif method == "Network.loadingFailed":
                    result.failed_requests.append(f"{params.get('errorText')} ({params.get('requestId')})")
            return result
        finally:
            self.call("Target.closeTarget", {"targetId": target})


def render(path: Path, executable: str | None = None, **kwargs: Any) -> PageResult:
    """Render one page in a fresh Chromium (see :meth:`Chromium.render`)."""
    exe = executable or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable on PATH")
    with Chromium(exe) as browser:
        return browser.render(path, **kwargs)
