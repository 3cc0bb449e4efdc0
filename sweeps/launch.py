"""Sweeps as background processes: start one detached (``lenslab sweep``), list them, cancel one.

The app uses these so that its own process never imports Ray or holds a sweep's workers: each sweep
is a ``lenslab sweep`` process writing its folder, and the page only reads ``status.json``.
Cancelling sends the driver SIGINT, which stops it like Ctrl-C: finished shards stay, and the
sweep can be resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lenslab.sweeps.engine import Status
from lenslab.sweeps.runner import REPORT_DIR, sweeps_dir

LOG = "log.txt"


def start_detached(arguments: list[str], folder: Path) -> int:
    """Run ``lenslab sweep <arguments>`` in a new session, its output in ``folder/log.txt``; its pid."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lenslab.cli", "sweep", *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


@dataclass(frozen=True)
class SweepEntry:
    """One sweep folder as the app lists it."""

    name: str
    path: Path
    title: str
    status: Status | None
    has_report: bool

    @property
    def running(self) -> bool:
        """Its status says running and its driver process is alive."""
        return self.status is not None and self.status.state == "running" and _alive(self.status.driver_pid)


def list_sweeps(folder: Path | None = None) -> list[SweepEntry]:
    """Sweep folders (with a manifest), newest first."""
    root = folder or sweeps_dir()
    if not root.is_dir():
        return []
    entries = []
    for path in sorted(root.iterdir(), reverse=True):
        manifest = path / "manifest.json"
        if path.name.startswith(".") or not manifest.is_file():
            continue
        try:
            document = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        probes = ", ".join(document.get("config", {}).get("probes", []))
        title = document.get("title") or f"{probes} · {document.get('config', {}).get('source', '')}"
        entries.append(SweepEntry(path.name, path, title, Status.read(path), (path / REPORT_DIR).is_dir()))
    return entries


def cancel(entry: SweepEntry) -> bool:
    """Ask the sweep's driver to stop (SIGINT, like Ctrl-C); False when it is not running."""
    if not entry.running or entry.status is None:
        return False
    os.kill(entry.status.driver_pid, signal.SIGINT)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True
