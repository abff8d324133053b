"""Headless Chromium for the view tests (MLflow UI, the Snakemake HTML report).

A plain helper module, imported by tests: ``chromium_path()``, ``dump_dom(url)``,
``screenshot(url, out)``. Chromium is Debian's ``chromium`` package, installed the way the
SLURM fixture installs its Debian packages (``scripts/slurm-cluster.sh``): ``apt-get install``
without ``apt-get update`` first (slow, the lists are usually fresh), then with it; only as
root. Where it cannot be installed the calling test is skipped with the reason.

The flags are the ones this machine needs (``/work/.library/env/machines/python.md``): without
the background-networking flags Chromium's many connections to Google are refused by the
closed network and every start waits on failed look-ups. Each call gets a fresh
``--user-data-dir`` so no profile state (cache, a crashed-profile lock) leaks between calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PACKAGES = ["chromium"]
CANDIDATES = ["chromium", "chromium-browser", "google-chrome"]
INSTALL_TIMEOUT_S = 900  # apt-get install (+ update) on a fresh machine
RUN_TIMEOUT_S = 120
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes the renderer
    "--hide-scrollbars",
]
_LOCK = Path(tempfile.gettempdir()) / "lt-bench-chromium-install.lock"


def _found() -> str | None:
    for name in CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return None


def chromium_path() -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` with apt-get when missing.

    Skips the calling test (with the reason) when it is missing and cannot be installed:
    not root, no apt-get, or apt-get failing.
    """
    p = _found()
    if p:
        return p
    if shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and there is no apt-get to install it "
                    f"(Debian package {' '.join(PACKAGES)})")
    if os.geteuid() != 0:
        pytest.skip("Chromium is not installed and installing it needs root "
                    f"(apt-get install {' '.join(PACKAGES)})")
    from filelock import FileLock

    # Two test processes (or two engineers' tests) may ask at once: apt/dpkg hold their own
    # lock and the second one would fail, so serialise the install here.
    with FileLock(str(_LOCK)):
        p = _found()
        if p:
            return p
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
        log = []
        r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                           timeout=INSTALL_TIMEOUT_S)
        log.append(r.stdout + r.stderr)
        if r.returncode != 0:
            u = subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env,
                               timeout=INSTALL_TIMEOUT_S)
            log.append(u.stdout + u.stderr)
            r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                               timeout=INSTALL_TIMEOUT_S)
            log.append(r.stdout + r.stderr)
        p = _found()
        if r.returncode != 0 or not p:
            pytest.skip("could not install Chromium with apt-get:\n" + "".join(log)[-2000:])
        return p


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="lt-bench-chromium-") as profile:
        cmd = [chromium_path(), *FLAGS, f"--user-data-dir={profile}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"chromium exited {r.returncode}: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r


def dump_dom(url: str, wait_ms: int = 8000, size: tuple[int, int] = (1920, 1200)) -> str:
    """The DOM of ``url`` after its scripts ran, as HTML (``--dump-dom``).

    ``--virtual-time-budget`` lets a script-driven page (a React app) run its timers and
    fetches for ``wait_ms`` of virtual time before the DOM is printed. ``size`` is the
    window: virtualised tables (MLflow's runs grid) render only the columns that fit.
    """
    r = _run([f"--virtual-time-budget={int(wait_ms)}", f"--window-size={size[0]},{size[1]}",
              "--dump-dom", url],
             timeout=RUN_TIMEOUT_S + wait_ms / 1000)
    return r.stdout


def screenshot(url: str, out: Path, size: tuple[int, int] = (1600, 1000),
               wait_ms: int = 8000) -> Path:
    """A PNG of ``url`` at ``size`` (width, height) pixels, written to ``out``; returns ``out``."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    _run([f"--virtual-time-budget={int(wait_ms)}", f"--window-size={size[0]},{size[1]}",
          f"--screenshot={out}", url], timeout=RUN_TIMEOUT_S + wait_ms / 1000)
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot to {out} for {url}")
    return out


# --- a page as a person sees it: Chromium's DevTools protocol --------------------------------

def evaluate(url: str, expression: str, ready: str = "true", timeout_s: float = 60.0,
             size: tuple[int, int] = (1600, 1000), settle_s: float = 1.0,
             screenshot_to: Path | None = None, before: str | None = None):
    """Open ``url`` in headless Chromium, wait until the JavaScript ``ready`` is truthy (then
    ``settle_s`` more), and return the value of ``expression`` (JSON-able), optionally with a
    PNG of the window written to ``screenshot_to``.

    ``--dump-dom`` shows what the DOM holds, not what a person sees: a run name cut by its
    column is whole in the DOM. Layout questions (is this text cut?) need the rendered page,
    hence the DevTools protocol (over aiohttp's WebSocket client, a dependency of the
    project's stack already). ``before``: JavaScript run once the page is ready (e.g. a
    click), after which ``ready`` is awaited again.
    """
    import asyncio

    return asyncio.run(_evaluate(url, expression, ready, timeout_s, size, settle_s,
                                 screenshot_to, before))


async def _evaluate(url, expression, ready, timeout_s, size, settle_s, screenshot_to, before):
    import asyncio
    import base64
    import json
    import re
    import time

    import aiohttp

    with tempfile.TemporaryDirectory(prefix="lt-bench-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium_path(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
            f"--window-size={size[0]},{size[1]}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            ws_url = None
            deadline = time.time() + RUN_TIMEOUT_S
            while ws_url is None:
                line = await asyncio.wait_for(proc.stderr.readline(), deadline - time.time())
                if not line:
                    raise RuntimeError("chromium exited before its DevTools endpoint was up")
                m = re.search(rb"DevTools listening on (ws://\S+)", line)
                if m:
                    ws_url = m.group(1).decode()
            port = re.search(r":(\d+)/", ws_url).group(1)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    page = next(t for t in await r.json() if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    seq = 0

                    async def call(method, **params):
                        nonlocal seq
                        seq += 1
                        await ws.send_json({"id": seq, "method": method, "params": params})
                        while True:
                            msg = json.loads((await ws.receive()).data)
                            if msg.get("id") == seq:
                                if "error" in msg:
                                    raise RuntimeError(f"{method}: {msg['error']}")
                                return msg["result"]

                    async def js(expr):
                        res = await call("Runtime.evaluate", expression=expr,
                                         returnByValue=True, awaitPromise=True)
                        if "exceptionDetails" in res:
                            raise RuntimeError(f"{expr[:200]}: {res['exceptionDetails']}")
                        return res["result"].get("value")

                    async def wait_ready():
                        end = time.time() + timeout_s
                        # a page still loading has no body yet: not ready, not an error
                        check = f"(() => {{ try {{ return Boolean({ready}); }} " \
                                "catch (e) { return false; } })()"
                        while not await js(check):
                            if time.time() > end:
                                text = await js("document.body ? document.body.innerText : ''")
                                raise TimeoutError(f"{url}: not ready ({ready}) after "
                                                   f"{timeout_s:g} s; page text: "
                                                   f"{(text or '')[:1500]}")
                            await asyncio.sleep(0.5)
                        await asyncio.sleep(settle_s)

                    await call("Emulation.setDeviceMetricsOverride", width=size[0],
                               height=size[1], deviceScaleFactor=1, mobile=False)
                    await call("Page.navigate", url=url)
                    await wait_ready()
                    if before:
                        await js(before)
                        await wait_ready()
                    value = await js(expression)
                    if screenshot_to is not None:
                        shot = await call("Page.captureScreenshot", format="png")
                        Path(screenshot_to).parent.mkdir(parents=True, exist_ok=True)
                        Path(screenshot_to).write_bytes(base64.b64decode(shot["data"]))
                    return value
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
