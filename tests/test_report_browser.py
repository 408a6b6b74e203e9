"""The HTML report in a real browser: headless Debian Chromium, driven over the DevTools
protocol with a stdlib websocket client (below), so console errors, exceptions and every
request the page makes are observed directly, not inferred from logs.

The detector itself is tested: a copy of the report with an injected console.error and one
with an injected external image must be caught; so must an injected image that the report's
Content-Security-Policy blocks (the block is an error).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from reports import build_report

HERE = Path(__file__).resolve().parent


def _chromium() -> str | None:
    for c in ("/usr/lib/chromium/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
        if c and os.access(c, os.X_OK):
            return c
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)")
TIMEOUT = 20.0  # seconds for any single browser step


def _fixture_module():
    path = HERE / "fixtures" / "report_store" / "build_store.py"
    spec = importlib.util.spec_from_file_location("report_store_fixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- a minimal websocket client (RFC 6455), enough for the DevTools protocol ----------------


class WebSocket:
    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url: str, timeout: float = TIMEOUT):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0]:
            raise ConnectionError(f"websocket handshake refused: {lines[0]}")
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if not any(ln.lower().startswith("sec-websocket-accept:") and ln.split(":", 1)[1].strip()
                   == accept for ln in lines):
            raise ConnectionError("websocket handshake: bad Sec-WebSocket-Accept")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("websocket closed by peer")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)  # clients must mask
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self, timeout: float) -> str | None:
        """One text message, or None if nothing arrives within `timeout`."""
        if not self.buf:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return None
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise ConnectionError("websocket closed by peer")
            if opcode == 0x9:
                self._send_frame(0xA, data)
                continue
            if opcode in (0x1, 0x2, 0x0):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send_frame(0x8, b"")
        self.sock.close()


class CDP:
    """DevTools protocol over one browser websocket; pages are flat-attached sessions."""

    def __init__(self, ws_url: str):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.ws.recv(max(0.0, deadline - time.monotonic()))
            if raw is None:
                break
            m = json.loads(raw)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"CDP {method} failed: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)
        raise TimeoutError(f"CDP {method}: no answer within {timeout}s")

    def pump(self, seconds: float, until: str | None = None, session: str | None = None) -> bool:
        """Collect events for `seconds` or until event `until` (of `session`) arrives."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            raw = self.ws.recv(max(0.0, deadline - time.monotonic()))
            if raw is None:
                break
            m = json.loads(raw)
            if "method" in m:
                self.events.append(m)
                if until and m["method"] == until and m.get("sessionId") == session:
                    return True
        return False


class Chromium:
    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--mute-audio",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=1280,1600", "about:blank"]

    def __init__(self, profile: Path):
        self.proc = subprocess.Popen(
            [CHROMIUM, f"--user-data-dir={profile}", *self.FLAGS],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.stderr_tail: list[str] = []
        url = self._devtools_url()
        self.cdp = CDP(url)

    def _devtools_url(self) -> str:
        deadline = time.monotonic() + TIMEOUT
        fd = self.proc.stderr.fileno()
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                m = re.search(rb"DevTools listening on (ws://\S+)", buf)
                if m:
                    self._drain_stderr()
                    return m.group(1).decode()
            elif self.proc.poll() is not None:
                break
        self.close()
        raise RuntimeError(f"chromium did not start: {buf.decode(errors='replace')[-2000:]}")

    def _drain_stderr(self) -> None:
        # Keep reading stderr in the background so chromium never blocks on a full pipe.
        import threading

        def run() -> None:
            for line in self.proc.stderr:
                self.stderr_tail = (self.stderr_tail + [line.decode(errors="replace")])[-50:]

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cdp.call("Browser.close", timeout=5)
        with contextlib.suppress(Exception):
            self.cdp.ws.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only the browser this test started
            self.proc.wait(timeout=10)


@dataclass
class PageLoad:
    session: str
    url: str
    loaded: bool
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, error logs
    requests: list[str] = field(default_factory=list)  # every fetch but the document itself
    blocked: dict[str, str] = field(default_factory=dict)  # url -> blockedReason (e.g. csp)


def open_page(b: Chromium, path: Path, settle: float = 0.5) -> PageLoad:
    cdp = b.cdp
    target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        cdp.call(f"{domain}.enable", session=session)
    first = len(cdp.events)
    url = path.resolve().as_uri()
    cdp.call("Page.navigate", {"url": url}, session=session)
    loaded = cdp.pump(TIMEOUT, until="Page.loadEventFired", session=session)
    cdp.pump(settle)  # late console messages and requests
    page = PageLoad(session, url, loaded)
    ids: dict[str, str] = {}
    for ev in cdp.events[first:]:
        if ev.get("sessionId") != session:
            continue
        m, p = ev["method"], ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            page.errors.append("console: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            page.errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            page.errors.append("log: " + p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            req = p.get("request", {}).get("url", "")
            # data: URIs (matplotlib's embedded raster images) are inline, not fetched
            if req != url and not req.startswith("data:"):
                page.requests.append(req)
                ids[p.get("requestId", "")] = req
        elif m == "Network.loadingFailed" and p.get("requestId") in ids:
            page.blocked[ids[p["requestId"]]] = p.get("blockedReason") or p.get("errorText", "")
    return page


MARKS_JS = """
JSON.stringify((() => {
  const out = {};
  for (const t of document.querySelectorAll('table.paper')) {
    const cols = [...t.querySelectorAll('thead th')].map(th => th.textContent.trim());
    const res = {best: [], second: []};
    for (const tr of t.querySelectorAll('tbody tr[data-method]')) {
      tr.querySelectorAll('td.num').forEach(td => {
        const v = td.querySelector('.v');
        if (!v) return;
        const cs = getComputedStyle(v);
        const bold = parseInt(cs.fontWeight, 10) >= 600;
        const under = cs.textDecorationLine.includes('underline');
        if (bold) res.best.push([tr.dataset.method, td.dataset.col]);
        if (under) res.second.push([tr.dataset.method, td.dataset.col]);
      });
    }
    out[t.id] = res;
  }
  return out;
})())
"""

FIGS_JS = """
JSON.stringify([...document.querySelectorAll('figure svg')].map(s => {
  const r = s.getBoundingClientRect();
  return [s.dataset.figure, Math.round(r.width), Math.round(r.height)];
}))
"""


def evaluate(b: Chromium, page: PageLoad, expr: str):
    res = b.cdp.call("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                     session=page.session)
    if "exceptionDetails" in res:
        raise AssertionError(f"page script failed: {res['exceptionDetails']}")
    return json.loads(res["result"]["value"])


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report_browser")
    db = _fixture_module().build_store(base / "store.db")
    res = build_report(db, "r5", base / "out", gates={"fps_min": {"rpi5": 30, "*": 10}})
    return res.html


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


# --- tests ---------------------------------------------------------------------------------


def test_report_renders_clean_offline_and_marks_right_cells(browser, report, tmp_path):
    page = open_page(browser, report)
    assert page.loaded, "the load event never fired"
    assert page.errors == [], f"console errors: {page.errors}"
    assert page.requests == [], f"the report made requests: {page.requests}"

    marks = evaluate(browser, page, MARKS_JS)
    expected = _fixture_module().EXPECTED
    for key, exp in expected.items():
        assert key in marks, f"table {key} missing; have {sorted(marks)}"
        got_best = {tuple(x) for x in marks[key]["best"]}
        got_second = {tuple(x) for x in marks[key]["second"]}
        assert got_best == exp["best"], f"{key}: bold cells {got_best}"
        assert got_second == exp["second"], f"{key}: underlined cells {got_second}"

    figs = evaluate(browser, page, FIGS_JS)
    names = {f[0] for f in figs}
    assert {"auc-vs-size", "fps-per-device", "latency", "trend"} <= names, names
    assert any(n.startswith("heatmap-") for n in names)
    assert all(w > 100 and h > 50 for _, w, h in figs), figs

    verdict = evaluate(browser, page,
                       "JSON.stringify(document.querySelector('[data-verdict]').dataset.verdict)")
    assert verdict == "fail"  # the fixture's effnb4 misses 30 FPS on rpi5

    shot = browser.cdp.call("Page.captureScreenshot", {"format": "png"}, session=page.session)
    png = base64.b64decode(shot["data"])
    out = tmp_path / "report_top.png"
    out.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    full = browser.cdp.call("Page.captureScreenshot",
                            {"format": "png", "captureBeyondViewport": True},
                            session=page.session)
    (tmp_path / "report_full.png").write_bytes(base64.b64decode(full["data"]))
    print(f"screenshots: {out} {tmp_path / 'report_full.png'}")


def _variant(report: Path, tmp_path: Path, name: str, inject: str, keep_csp: bool) -> Path:
    html = report.read_text(encoding="utf-8")
    if not keep_csp:
        html, n = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
        assert n == 1
    html = html.replace("</body>", inject + "</body>", 1)
    out = tmp_path / f"{name}.html"
    out.write_text(html, encoding="utf-8")
    return out


def test_mark_check_reads_the_rendering(browser, report, tmp_path):
    """Un-bolding one best cell in a copy must change what the DOM check sees."""
    html = report.read_text(encoding="utf-8")
    i = html.index('id="main-xception-w4a4"')
    j = html.index('<strong class="v">', i)
    k = html.index("</strong>", j)
    td = html.rindex('<td class="num best"', i, j)  # its class also makes it bold (CSS)
    broken = (html[:td] + '<td class="num"' + html[td + 20:j] + '<span class="v">'
              + html[j + 18:k] + "</span>" + html[k + 9:])
    out = tmp_path / "unbolded.html"
    out.write_text(broken, encoding="utf-8")
    page = open_page(browser, out)
    marks = evaluate(browser, page, MARKS_JS)
    got = {tuple(x) for x in marks["main-xception-w4a4"]["best"]}
    assert ("defakeq", "FF++") not in got
    assert got == _fixture_module().EXPECTED["main-xception-w4a4"]["best"] - {("defakeq", "FF++")}


def test_detector_catches_injected_console_error(browser, report, tmp_path):
    page = open_page(browser, _variant(
        report, tmp_path, "console", '<script>console.error("injected-error-42")</script>',
        keep_csp=False))
    assert any("injected-error-42" in e for e in page.errors), page.errors


def test_detector_catches_injected_external_request(browser, report, tmp_path):
    # port 9 (discard) on loopback: the request is observed, nothing leaves the machine
    page = open_page(browser, _variant(
        report, tmp_path, "request", '<img src="http://127.0.0.1:9/tracker.png" alt="">',
        keep_csp=False))
    assert "http://127.0.0.1:9/tracker.png" in page.requests, page.requests


def test_report_csp_blocks_and_reports_external_loads(browser, report, tmp_path):
    page = open_page(browser, _variant(
        report, tmp_path, "csp", '<img src="http://127.0.0.1:9/tracker.png" alt="">',
        keep_csp=True))
    # Chromium announces the attempt, then blocks it before any connection is made
    assert page.blocked.get("http://127.0.0.1:9/tracker.png") == "csp", page.blocked
    assert any("Content Security Policy" in e or "tracker.png" in e for e in page.errors), \
        page.errors
