"""A throw-away LENSLAB_HOME for code the tests run in another process (a kernel, a server).

The converted models are linked (large, and only ever read); the prepared artefacts are copied, so
a notebook or page that saves or refits one (a soft prompt, refitted maps, encoders) writes into
the copy and never over what ``lenslab prepare`` built in the real home. Copies, not links:
some savers write in place (``save_file(folder / "tensors.safetensors")``), which through a link
would change the real file.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def sandbox_home(root: Path) -> Path:
    """Make ``root/home``: ``models`` linked to the real one, ``artefacts`` a copy of the real one."""
    from lenslab.models.paths import lenslab_home

    real = lenslab_home()
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    (real / "models").mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(real / "models", target_is_directory=True)
    if (real / "artefacts").is_dir() and not (home / "artefacts").exists():
        shutil.copytree(real / "artefacts", home / "artefacts", symlinks=True)
    (home / "artefacts").mkdir(exist_ok=True)
    return home


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``folder`` with its (size, mtime_ns, inode): what a write would change."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return found


def changes(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> list[str]:
    """Files added, removed or rewritten between two snapshots."""
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
