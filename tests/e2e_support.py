"""Support for the reliability suite: a figures collector and helpers for the real-browser tests.

``STATS`` is filled by the reliability tests (concurrency, fuzz, guards, report safety, browser)
and printed by ``pytest_terminal_summary`` in ``conftest.py``, so every run ends with the figures
issue 9 asks for: sessions run in parallel, fuzz cases tried, failures, hooks left, reports lost.

The browser helpers start a real ``streamlit run`` on a free localhost port with an isolated
LENSLAB_HOME (the converted models symlinked, the trained artefacts copied, nothing reconverted)
and drive Debian's Chromium through Playwright. No browser is ever downloaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
E2E_APP = "tests/e2e_app.py"  # the real app with every form starting at its fast config
ARTIFACTS = REPO / "tests" / "_artifacts"
CHROMIUM = Path(os.environ.get("LENSLAB_CHROMIUM", "/usr/bin/chromium"))
HEALTHY_WITHIN_S = 600  # the server start's hang guard: a busy machine starts streamlit slowly
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY")
FAKE_TOKEN = "hf_e2eFakeTokenDoNotLog0123456789"  # in the browser tests' server env; never to be printed
RUN_TIMEOUT_S = 240  # the browser tests' wait for a run; the server's time limit sits 30 s below it


# --------------------------------------------------------------------------------------- figures
@dataclass
class SuiteStats:
    """Counters the reliability tests add to; thread-safe."""

    counts: Counter = field(default_factory=Counter)
    maxima: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key``."""
        with self._lock:
            self.counts[key] += n

    def peak(self, key: str, value: int) -> None:
        """Keep the largest ``value`` seen for ``key``."""
        with self._lock:
            self.maxima[key] = max(self.maxima.get(key, 0), int(value))

    def note(self, text: str) -> None:
        """A line printed under the figures (weaknesses found, skipped parts)."""
        with self._lock:
            if text not in self.notes:
                self.notes.append(text)

    def empty(self) -> bool:
        """Whether no reliability test recorded anything."""
        return not (self.counts or self.maxima or self.notes)

    def lines(self) -> list[str]:
        """The summary printed at the end of the run."""
        c, m = self.counts, self.maxima
        out = [
            f"sessions run in parallel: {m.get('parallel_sessions', 0)} "
            f"(threads sharing one model; {c['parallel_jobs']} probe runs compared with serial runs)",
            f"fuzz cases tried: {c['fuzz_cases']} ({c['fuzz_ok']} ran, {c['fuzz_rejected']} rejected with a "
            f"clear ValueError/FileNotFoundError, {c['fuzz_time_limited']} stopped by the time limit)",
            f"failures: {c['failures']} (unexpected exception types, differing parallel results, "
            "scripts run from reports)",
            f"hooks left: {c['hooks_left']} (after {c['hook_checks']} checks)",
            f"reports lost: {c['reports_lost']} (of {c['reports_checked']} reports checked)",
            f"guards: {c['guard_refusals']} memory refusals, {c['oom_caught']} out-of-memory errors caught, "
            f"{c['time_limited']} time-limited requests",
            f"browser: {c['browser_pages']} pages run in Chromium, {c['browser_reports']} reports saved and "
            f"listed, {c['xss_blocked']} XSS payloads rendered inert",
        ]
        return out + [f"note: {n}" for n in self.notes]


STATS = SuiteStats()


# ------------------------------------------------------------------------------------ the probes
PILOT_PROMPT = "The capital of France is"
_PILOTS: dict[tuple[int, float], dict[str, Any]] = {}


def runnable_probes(session, pilot_limit_s: float = 6.0) -> dict[str, Any]:
    """Probes whose fast config runs on ``session`` within the pilot limit, with their pilot results."""
    from fast_configs import fast_config

    from lenslab.models import guards
    from lenslab.probes import registered_probes
    from lenslab.progress import NO_PROGRESS, Cancelled

    key = (id(session), pilot_limit_s)
    if key in _PILOTS:
        return dict(_PILOTS[key])
    found: dict[str, Any] = {}
    for name, cls in sorted(registered_probes().items()):
        probe, config = cls(), fast_config(name)
        started = time.monotonic()
        try:
            result = probe.run(session, PILOT_PROMPT, config, guards.time_limited(NO_PROGRESS, pilot_limit_s))
        except FileNotFoundError as exc:
            STATS.note(f"pilot: {name} left out on {session.model_id} (needs artefacts: {str(exc)[:80]}…)")
            continue
        except ValueError as exc:  # its fast config does not fit this model (e.g. a layer it lacks)
            STATS.note(f"pilot: {name} left out on {session.model_id}: {exc}"[:200])
            continue
        except Cancelled:
            STATS.note(
                f"pilot: {name} left out on {session.model_id}: its fast config takes over "
                f"{pilot_limit_s:g} s (add or shrink its entry in tests/fast_configs.py)"
            )
            continue
        found[name] = (config, result, time.monotonic() - started)
    _PILOTS[key] = found
    return dict(found)


# ----------------------------------------------------------------------------------- the server
def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_home(root: Path) -> dict[str, str]:
    """Environment for a server with its own LENSLAB_HOME/REPORTS: models linked, artefacts copied.

    A page that fits or saves an artefact (an evaluation's linear maps) writes into the copy,
    never into the real home (``home_support.sandbox_home``).
    """
    from home_support import sandbox_home

    home = sandbox_home(root)
    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    env.update(
        LENSLAB_HOME=str(home),
        LENSLAB_REPORTS=str(reports),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class AppServer:
    """A ``streamlit run tests/e2e_app.py`` subprocess (the real app) and where its output goes."""

    process: subprocess.Popen
    port: int
    log_path: Path
    reports: Path

    @property
    def url(self) -> str:
        """Base URL of the app."""
        return f"http://localhost:{self.port}"

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Terminate the server (then kill it if it lingers)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_app(
    root: Path, *, address: str | None = "localhost", extra_env: dict[str, str] | None = None
) -> AppServer:
    """Start the app on a free port and wait for ``/_stcore/health``; ``address=None`` uses the config.

    It runs ``tests/e2e_app.py`` from the repository root (so the repo's ``.streamlit/config.toml``
    applies): ``app/main.py`` with every probe's form starting at its fast config.
    """
    port = free_port()
    env = isolated_home(root)
    env.update(extra_env or {})
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        E2E_APP,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
    ]
    if address is not None:
        command += ["--server.address", address]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = AppServer(process, port, log_path, Path(env["LENSLAB_REPORTS"]))
    # Only a hang guard (a crash ends the wait at once): streamlit's start is slow on a busy machine.
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{server.log()[-3000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as response,
        ):
            if response.status == 200:
                return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"streamlit did not become healthy in {HEALTHY_WITHIN_S} s:\n{server.log()[-3000:]}")


class SharedServer:
    """One app server shared by many tests, restarted (in a new folder) after a test that used it failed.

    A failed browser test may leave a run going on the server (a page cut off by a timeout keeps
    computing and holds the model); the next test's run would wait behind it and fail too. The
    caller sets ``failed`` (``tests/e2e/conftest.py`` does, from the test reports).
    """

    def __init__(self, root: Path, start: Callable[[Path], AppServer]) -> None:
        self.root = root
        self.start = start
        self.started: list[AppServer] = []
        self.failed = False

    def current(self) -> AppServer:
        """The running server; a fresh one when there is none or the last test that used it failed."""
        if self.started and not self.failed and self.started[-1].process.poll() is None:
            return self.started[-1]
        if self.started:
            self.started[-1].stop()
        self.started.append(self.start(self.root / f"server-{len(self.started)}"))
        self.failed = False
        return self.started[-1]

    def stop(self) -> list[str]:
        """Stop the running server; every started server's log."""
        if self.started:
            self.started[-1].stop()
        return [server.log() for server in self.started]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                local, state = parts[1], parts[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port and len(address) == width:
                    found.add(_decode_address(address))
    return found


def _decode_address(hex_address: str) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_address)
    # /proc stores each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


# ---------------------------------------------------------------------------------- the browser
def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def screenshot(page: Any, name: str) -> Path | None:
    """Save a full-page screenshot under tests/_artifacts (best effort)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception:  # the page may already be gone; the failure itself is what matters
        return None
    return path


def save_server_log(server: AppServer, name: str) -> Path:
    """Copy the server's log next to the screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.log"
    shutil.copyfile(server.log_path, path)
    return path


def wait_idle(page: Any, timeout_s: float = 180.0, settle_s: float = 1.0) -> None:
    """Wait until the Streamlit script run has finished (no 'Running…' widget for ``settle_s``)."""
    deadline = time.monotonic() + timeout_s
    calm_since: float | None = None
    while time.monotonic() < deadline:
        running = page.locator("[data-testid='stStatusWidget']").count() > 0
        if running:
            calm_since = None
        else:
            calm_since = calm_since or time.monotonic()
            if time.monotonic() - calm_since >= settle_s:
                return
        page.wait_for_timeout(200)
    raise TimeoutError(f"the app was still running after {timeout_s:.0f} s")


def exceptions_on(page: Any) -> list[str]:
    """Texts of Streamlit exception boxes (tracebacks) on the page."""
    boxes = page.locator("[data-testid='stException']")
    return [boxes.nth(i).inner_text()[:2000] for i in range(boxes.count())]


def errors_on(page: Any) -> list[str]:
    """Texts of ``st.error`` messages on the page."""
    boxes = page.locator("[data-testid='stAlertContentError']")
    return [boxes.nth(i).inner_text()[:500] for i in range(boxes.count())]
