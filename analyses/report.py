"""Reports: one or more probe results saved as report.json + arrays.npz + report.html.

A report folder is self-describing: ``report.json`` holds configs, plain values and provenance;
``arrays.npz`` holds every array (loaded with ``allow_pickle=False``); ``report.html`` opens
offline with plotly.js inlined. Saving writes a temporary sibling folder and renames it into
place, and ``report.json`` is written last, so a crash never leaves a half report that lists as
complete.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenslab.analyses.html import render_html
from lenslab.probes.base import Result
from lenslab.probes.fields import config_fields

FORMAT_VERSION = 1
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def provenance(session: Any | None = None, seed: int | None = None) -> dict[str, Any]:
    """Where a result came from: versions, model, device, dtype, seed and time."""
    import torch
    import transformer_lens

    import lenslab

    info: dict[str, Any] = {
        "lenslab": lenslab.__version__,
        "torch": torch.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": seed,
    }
    if session is not None:
        info.update(session.describe())
    return info


def rerun_command(result: Result) -> str:
    """The ``lenslab run`` command that reproduces ``result`` (non-default settings only).

    Values are written by each field's kind, which the CLI's parser reads back exactly.
    """
    config = result.config
    defaults = type(config)()
    parts = ["lenslab", "run", result.probe, "--model", result.model_id, "--prompt", result.prompt]
    for f in config_fields(type(config)):
        value = getattr(config, f.name)
        if value != getattr(defaults, f.name):
            parts += ["--config", f"{f.name}={f.format(value)}"]
    return shlex.join(parts)


def report_meta(results: list[Result], session: Any | None, title: str) -> dict[str, Any]:
    """Metadata the app and the CLI both write: title, prompt, model, re-run commands, provenance."""
    return {
        "title": title.strip() or results[0].probe,
        "prompt": results[0].prompt,
        "model": results[0].model_id,
        "rerun": [rerun_command(r) for r in results],
        **provenance(session),
    }


def safe_name(name: str) -> str:
    """A report folder name that cannot escape the reports folder (no separators, no dots)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip(".-")[:100]
    if not cleaned or not _NAME_OK.match(cleaned):
        raise ValueError(f"invalid report name {name!r}: use letters, digits, '.', '_' or '-'")
    return cleaned


@dataclass
class Report:
    """Several results plus metadata (title, provenance, re-run command)."""

    results: list[Result]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.results:
            raise ValueError("a report needs at least one result")

    @property
    def title(self) -> str:
        """Display title: meta['title'] or the first probe's name."""
        return str(self.meta.get("title") or self.results[0].probe)

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the report folder atomically; returns its path.

        Refuses to replace an existing report unless ``overwrite`` is true; then the old folder
        is swapped out only after the new one is complete.
        """
        target = Path(directory)
        if target.exists() and not overwrite:
            raise FileExistsError(f"a report already exists at {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            arrays: dict[str, np.ndarray] = {}
            entries = []
            for i, result in enumerate(self.results):
                payload = result.to_dict()
                for key, value in payload["arrays"].items():
                    arrays[f"{i}/{key}"] = value
                entries.append({"probe": payload["probe"], "data": payload["data"]})
            with open(tmp / "arrays.npz", "wb") as fh:
                np.savez_compressed(fh, **arrays)
            (tmp / "report.html").write_text(render_html(self), encoding="utf-8")
            document = {"format": FORMAT_VERSION, "meta": self.meta, "results": entries}
            _write_json(tmp / "report.json", document)
            _fsync_dir(tmp)
            if target.exists():
                old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def load(cls, directory: str | Path) -> Report:
        """Read a report folder; corrupt or incomplete folders raise a clear error."""
        folder = Path(directory)
        if not (folder / "report.json").is_file():
            raise FileNotFoundError(f"{folder} is not a report (no report.json)")
        try:
            document = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"report {folder.name} is corrupt or truncated: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
            raise ValueError(f"report {folder.name} has an unknown format")
        entries = document.get("results")
        if not isinstance(entries, list) or not entries or not isinstance(document.get("meta", {}), dict):
            raise ValueError(f"report {folder.name} is corrupt: report.json has no results list")
        results = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"probe", "data"} <= set(entry):
                raise ValueError(f"report {folder.name} is corrupt: result {i} lacks its probe or data")
            mine = {
                key.split("/", 1)[1]: value for key, value in arrays.items() if key.split("/", 1)[0] == str(i)
            }
            payload = {"probe": entry["probe"], "data": entry["data"], "arrays": mine}
            try:
                results.append(Result.from_dict(payload))
            except (TypeError, KeyError, AttributeError, IndexError) as exc:
                raise ValueError(f"report {folder.name} is corrupt: {exc}") from exc
        return cls(results=results, meta=document.get("meta", {}))


def _write_json(path: Path, document: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=1, ensure_ascii=False, allow_nan=True)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ReportEntry:
    """One line of the reports listing."""

    name: str
    path: Path
    title: str
    probes: list[str]
    model: str
    prompt: str
    created: str


def list_reports(folder: str | Path) -> list[ReportEntry]:
    """Complete reports in ``folder``, newest first; temp and broken folders are left out."""
    root = Path(folder)
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if path.name.startswith(".") or not (path / "report.json").is_file():
            continue
        try:
            document = json.loads((path / "report.json").read_text(encoding="utf-8"))
            meta = document.get("meta", {})
            entries.append(
                ReportEntry(
                    name=path.name,
                    path=path,
                    title=str(meta.get("title", path.name)),
                    probes=[str(r.get("probe")) for r in document.get("results", [])],
                    model=str(meta.get("model", "")),
                    prompt=str(meta.get("prompt", "")),
                    created=str(meta.get("created", "")),
                )
            )
        except (OSError, ValueError, AttributeError):
            continue
    return sorted(entries, key=lambda e: (e.created, e.name), reverse=True)


def resolve_in(folder: str | Path, name: str) -> Path:
    """Path of report ``name`` inside ``folder``; names that would escape it are refused."""
    root = Path(folder).resolve()
    path = (root / safe_name(name)).resolve()
    if path.parent != root:
        raise ValueError(f"report name {name!r} escapes the reports folder")
    return path


TRASH = ".trash"  # deleted reports wait here (hidden from the listing) until restored or purged


def trash_dir(folder: str | Path) -> Path:
    """Where :func:`delete_report` moves reports of ``folder``: its ``.trash`` subfolder."""
    return Path(folder).resolve() / TRASH


def delete_report(folder: str | Path, name: str) -> Path:
    """Move report ``name`` of ``folder`` into its trash (restorable); returns where it went.

    A report of the same name already in the trash is replaced: the trash keeps the latest copy.
    """
    path = resolve_in(folder, name)
    if not (path / "report.json").is_file():
        raise FileNotFoundError(f"no report named {name!r}")
    trash = trash_dir(folder)
    trash.mkdir(parents=True, exist_ok=True)
    target = resolve_in(trash, name)
    if target.exists():
        shutil.rmtree(target)
    path.rename(target)
    return target


def list_deleted(folder: str | Path) -> list[ReportEntry]:
    """Reports in the trash of ``folder``, newest first."""
    return list_reports(trash_dir(folder))


def restore_report(folder: str | Path, name: str) -> Path:
    """Move report ``name`` back from the trash into ``folder``; refuses to overwrite a live report."""
    source = resolve_in(trash_dir(folder), name)
    if not (source / "report.json").is_file():
        raise FileNotFoundError(f"no deleted report named {name!r}")
    target = resolve_in(folder, name)
    if target.exists():
        raise FileExistsError(f"a report named {name!r} already exists; delete or rename it first")
    source.rename(target)
    return target


def zip_report(path: str | Path) -> bytes:
    """The report folder as zip bytes (for download buttons)."""
    import io

    buffer = io.BytesIO()
    folder = Path(path)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.iterdir()):
            if file.is_file():
                zf.write(file, arcname=f"{folder.name}/{file.name}")
    return buffer.getvalue()


def default_report_name(results: list[Result]) -> str:
    """A unique, readable folder name: time, probes and a short random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    probes = "+".join(dict.fromkeys(r.probe for r in results))
    return safe_name(f"{stamp}_{probes}_{uuid.uuid4().hex[:6]}")
