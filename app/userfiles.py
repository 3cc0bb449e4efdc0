"""Files from app users: uploads (size-limited, checked in memory) or paths inside operator folders.

The browser is not the server's file manager. A path typed into the app is accepted only when it
resolves (symlinks followed, ``..`` collapsed) inside one of the data roots the operator
configured: ``$LENSLAB_DATA_DIRS`` (folders separated by ``os.pathsep``), the reports folder,
lenslab's artefacts and model caches, and the uploads folder. Anything else is refused with one
message that does not depend on whether the path exists. An app bound to a non-loopback address
offers no path fields at all, only uploads and pickers. The CLI and the notebook API take plain
paths; none of this applies to them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from lenslab.models.paths import artefacts_dir, lenslab_home, reports_dir

DEFAULT_UPLOAD_MB = 20  # per file; Streamlit's own server limit is set in .streamlit/config.toml
TEXT_SUFFIXES = ("txt", "jsonl")


def upload_dir() -> Path:
    """Where accepted uploads are stored, under a content-hash name the server chooses."""
    return lenslab_home() / "uploads"


def data_roots() -> list[Path]:
    """The folders typed paths may point into (resolved, existing or not)."""
    extra = [p for p in os.environ.get("LENSLAB_DATA_DIRS", "").split(os.pathsep) if p.strip()]
    hf_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME")
    roots = [*extra, reports_dir(), artefacts_dir(), lenslab_home() / "models", upload_dir()]
    if hf_cache:
        roots.append(hf_cache)
    seen: dict[Path, None] = {}
    for root in roots:
        seen.setdefault(Path(root).expanduser().resolve(), None)
    return list(seen)


class PathRefused(ValueError):
    """A typed path outside the data roots (the message never says whether it exists)."""


def refusal(what: str) -> str:
    """The one message for a path outside the data roots, whatever the path."""
    return (
        f"{what}: only files inside the data folders this server was configured with can be opened "
        "(upload the file instead, or ask the operator to add its folder to LENSLAB_DATA_DIRS)."
    )


def check_user_path(text: str, what: str) -> Path:
    """``text`` as a resolved path inside a data root; :class:`PathRefused` otherwise.

    The check is on the resolved path, so ``..`` components and symlinks pointing out of a root
    are refused like any outside path; relative paths are refused (they would depend on the
    server's working directory).
    """
    raw = text.strip()
    if not path_fields_enabled():
        raise PathRefused(f"{what}: this server does not accept typed paths; upload the file instead.")
    candidate = Path(raw).expanduser()
    if not raw or not candidate.is_absolute():
        raise PathRefused(refusal(what))
    resolved = candidate.resolve()  # follows symlinks, collapses ".."; never raises for missing paths
    if not any(resolved == root or resolved.is_relative_to(root) for root in data_roots()):
        raise PathRefused(refusal(what))
    return resolved


FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".npz", ".npy", ".safetensors", ".pt", ".bin", ".gguf")


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is meant as a filesystem path rather than a name or hub id."""
    raw = text.strip()
    return raw.startswith(("/", "~", ".", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", raw))


def looks_like_file(text: str) -> bool:
    """A path, or a one-line name ending like a file (``data/x.txt``): the server must not open it."""
    raw = text.strip()
    if not raw or "\n" in raw:
        return False
    return looks_like_path(raw) or raw.lower().endswith(FILE_SUFFIXES)


def mentions_file(help_text: str | None) -> bool:
    """Whether a config field's help says it takes a file (its form then offers an upload)."""
    return bool(help_text) and bool(re.search(r"\bfile\b|\.txt|\.jsonl", help_text or "", re.IGNORECASE))


# ------------------------------------------------------------------------- binding and the token
LOOPBACK_NAMES = ("localhost", "")


def bound_address() -> str:
    """The address the Streamlit server listens on (``server.address``; empty means all)."""
    try:
        value = st.get_option("server.address")
    except Exception:  # outside a server (tests, notebooks)
        value = "localhost"
    return "" if value is None else str(value)


def is_loopback(address: str) -> bool:
    """Whether ``address`` only reaches this machine (an empty address binds every interface)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def path_fields_enabled() -> bool:
    """Typed paths are offered only while the server is reachable from this machine alone."""
    return is_loopback(bound_address())


# ------------------------------------------------------------------------------------- uploads
@dataclass(frozen=True)
class Upload:
    """An accepted upload: where it was stored and what the user called it."""

    path: Path
    name: str
    size: int


def upload_limit_mb() -> int:
    """Largest accepted upload in MB (``$LENSLAB_MAX_UPLOAD_MB``, default 20)."""
    try:
        return max(1, int(os.environ.get("LENSLAB_MAX_UPLOAD_MB", DEFAULT_UPLOAD_MB)))
    except ValueError:
        return DEFAULT_UPLOAD_MB


def accept_text_upload(name: str, data: bytes, what: str, *, limit_mb: int | None = None) -> Upload:
    """Check an uploaded text file in memory and store it under a server-chosen name.

    Refuses (``ValueError`` naming ``what``) files over the limit, empty files, binary data (NUL
    bytes or not UTF-8) and suffixes other than .txt / .jsonl. The stored name is the content's
    hash plus the suffix, so a file name from the browser never becomes a path.
    """
    limit = (limit_mb or upload_limit_mb()) * 2**20
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in TEXT_SUFFIXES:
        raise ValueError(f"{what}: upload a .txt or .jsonl file, got {name!r}")
    if len(data) > limit:
        raise ValueError(f"{what}: the file is {len(data) / 2**20:.1f} MB; the limit is {limit // 2**20} MB")
    if not data.strip():
        raise ValueError(f"{what}: the file is empty")
    if b"\x00" in data:
        raise ValueError(f"{what}: the file is binary, not text")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: the file is not UTF-8 text (byte {exc.start})") from exc
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:20]}.{suffix}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return Upload(path, name, len(data))
