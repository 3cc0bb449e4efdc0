"""Where SAEs come from and whether they fit the loaded model.

Three sources, all giving a sae-lens ``SAE``:

- ``"default"`` or ``"trained:<name>"`` — SAEs lenslab trained for this model, saved in sae-lens'
  format under ``artefacts_dir()/sae/<model-slug>/<name>/`` (``cfg.json`` +
  ``sae_weights.safetensors``) next to ``lenslab.json`` (training config and metrics);
- ``"pretrained:<release>/<sae_id>"`` — sae-lens' registry (``SAE.from_pretrained``; needs the
  Hugging Face hub or its local cache, and says so clearly when offline);
- any other string — a folder in sae-lens' format (``SAE.load_from_disk``).

Every SAE is checked against the model before use: its hook point must exist and the activation
width there must equal the SAE's ``d_in``; lenslab-trained SAEs must also come from the same model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lenslab.models.paths import family_dir
from lenslab.models.session import ModelSession

DEFAULT_SAE = "default"
TRAINED_PREFIX = "trained:"
PRETRAINED_PREFIX = "pretrained:"
INFO_FILE = "lenslab.json"


@dataclass
class LoadedSAE:
    """A sae-lens SAE checked against a session, with the canonical hook name it reads."""

    sae: Any  # sae_lens.SAE
    hook_name: str
    spec: str
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads."""
        return int(self.sae.cfg.d_in)

    @property
    def identity(self) -> str:
        """A stable id for caches: the spec plus a fingerprint of the weights."""
        w_dec = self.sae.W_dec.detach()
        fingerprint = f"{float(w_dec.float().sum()):.6e}:{float(w_dec.float().abs().sum()):.6e}"
        return f"{self.spec}|{self.hook_name}|{self.d_sae}|{fingerprint}"

    @property
    def label(self) -> str:
        """Short human description for pages and reports."""
        arch = self.sae.cfg.architecture()
        return f"{self.spec} · {arch} · {self.d_sae} features @ {self.hook_name}"

    def encode(self, activations: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations (float32) for activations of any dtype."""
        return self.sae.encode(activations.to(self.sae.dtype))

    def decode(self, features: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction from feature activations (float32)."""
        return self.sae.decode(features)

    def direction(self, feature: int) -> Float[Tensor, " d_in"]:
        """The decoder row of ``feature`` (what one unit of its activation adds)."""
        self.check_feature(feature)
        return self.sae.W_dec[feature].detach()

    def check_feature(self, feature: int) -> int:
        """Return ``feature`` or raise a readable ValueError."""
        if not isinstance(feature, int | float) or int(feature) != feature:
            raise ValueError(f"feature must be an integer, got {feature!r}")
        if not 0 <= int(feature) < self.d_sae:
            raise ValueError(
                f"feature {feature} out of range: this SAE has {self.d_sae} features (0-{self.d_sae - 1})"
            )
        return int(feature)


def sae_root(session: ModelSession) -> Path:
    """Folder holding the SAEs lenslab trained for ``session``'s model."""
    return family_dir("sae", session.model_id)


def trained_dir(session: ModelSession, name: str) -> Path:
    """Folder of the lenslab-trained SAE called ``name`` (validated: no path tricks)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name or ""):
        raise ValueError(f"invalid SAE name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return sae_root(session) / name


def list_trained(session: ModelSession) -> list[str]:
    """Names of the complete lenslab-trained SAEs for this model, ``default`` first."""
    root = sae_root(session)
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if (p / "cfg.json").is_file() and (p / INFO_FILE).is_file()]
    return sorted(names, key=lambda n: (n != DEFAULT_SAE, n))


def available_specs(session: ModelSession) -> list[str]:
    """SAE specs offered in pickers: the trained ones for this model."""
    return [DEFAULT_SAE if n == DEFAULT_SAE else TRAINED_PREFIX + n for n in list_trained(session)]


def load_sae(session: ModelSession, spec: str = DEFAULT_SAE) -> LoadedSAE:
    """Load the SAE named by ``spec`` onto the session's device and check it fits the model."""
    spec = (spec or DEFAULT_SAE).strip()
    info: dict[str, Any] = {}
    path: Path | None
    if spec == DEFAULT_SAE or spec.startswith(TRAINED_PREFIX):
        name = DEFAULT_SAE if spec == DEFAULT_SAE else spec.removeprefix(TRAINED_PREFIX)
        path = trained_dir(session, name)
        if not (path / "cfg.json").is_file():
            hint = (
                "run `lenslab prepare` (or train one in the Train tab of the SAE page)"
                if name == DEFAULT_SAE
                else "train it on the SAE page first"
            )
            raise FileNotFoundError(f"no trained SAE {name!r} for {session.model_id} at {path}: {hint}")
        cached = _cached(path, session)
        if cached is not None:
            return LoadedSAE(cached.sae, cached.hook_name, spec, path, cached.info)
        sae = _load_disk(path, session)
        info = read_info(path)
        trained_for = info.get("model_id")
        if trained_for is not None and trained_for != session.model_id:
            raise ValueError(
                f"SAE {name!r} was trained for {trained_for!r}, not for the loaded model {session.model_id!r}"
            )
    elif spec.startswith(PRETRAINED_PREFIX):
        release, _, sae_id = spec.removeprefix(PRETRAINED_PREFIX).partition("/")
        sae = load_pretrained_sae(release, sae_id, str(session.device))
        path = None
    else:
        path = Path(spec).expanduser()
        if not path.is_dir() or not (path / "cfg.json").is_file():
            raise FileNotFoundError(
                f"{spec!r} is not a folder holding an SAE in sae-lens format "
                "(cfg.json + sae_weights.safetensors); "
                "use 'default', 'trained:<name>', 'pretrained:<release>/<sae_id>' or a folder path"
            )
        cached = _cached(path, session)
        if cached is not None:
            return LoadedSAE(cached.sae, cached.hook_name, spec, path, cached.info)
        sae = _load_disk(path, session)
        info = read_info(path)
    sae.eval()
    hook_name = check_fits(session, sae)
    loaded = LoadedSAE(sae=sae, hook_name=hook_name, spec=spec, path=path, info=info)
    if path is not None:
        _CACHE.clear()  # one SAE kept: pages switch SAEs rarely, and each holds d_sae × d_in × 2 floats
        _CACHE[_cache_key(path, session)] = loaded
    return loaded


_CACHE: dict[tuple[Any, ...], LoadedSAE] = {}


def _cache_key(path: Path, session: ModelSession) -> tuple[Any, ...]:
    """The folder, its files' modification times (a retrained SAE is reloaded) and the model."""
    stamps = tuple(f.stat().st_mtime_ns for f in sorted(path.iterdir()) if f.is_file())
    return (str(path.resolve()), stamps, id(session.bridge), str(session.device), session.model_id)


def _cached(path: Path, session: ModelSession) -> LoadedSAE | None:
    """The SAE loaded and checked from ``path`` for this model before, if its files are unchanged.

    Loading re-reads the weights and runs a forward to check the hook's width: per page run that
    cost more than the SAE's own work on a short prompt.
    """
    if not path.is_dir():
        return None
    return _CACHE.get(_cache_key(path, session))


def read_info(path: Path) -> dict[str, Any]:
    """The ``lenslab.json`` next to an SAE (empty when the SAE came from elsewhere)."""
    file = path / INFO_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def _load_disk(path: Path, session: ModelSession) -> Any:
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(str(path), device=str(session.device))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"the SAE folder {path} is incomplete: {exc}") from exc
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the SAE folder {path} is not in sae-lens format: {exc}") from exc


def load_pretrained_sae(release: str, sae_id: str, device: str = "cpu") -> Any:
    """``SAE.from_pretrained(release, sae_id)`` with readable errors (unknown ids, no hub)."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    if not release or not sae_id:
        raise ValueError(
            "a pretrained SAE is named 'pretrained:<release>/<sae_id>', "
            "e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre"
        )
    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = sorted(r for r in directory if release.split("-")[0] in r)[:8]
        raise ValueError(
            f"unknown SAE release {release!r}" + (f"; similar releases: {close}" if close else "")
        )
    known = directory[release].saes_map
    if sae_id not in known:
        examples = list(known)[:5]
        raise ValueError(f"release {release!r} has no SAE {sae_id!r}; ids look like {examples}")
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:  # huggingface_hub raises many types; all mean "could not fetch"
        if _is_offline_error(exc):
            raise FileNotFoundError(
                f"pretrained SAE {release}/{sae_id} is not in the local Hugging Face cache and the hub "
                f"({directory[release].repo_id}) cannot be reached (offline). Download it on a machine with "
                "network access (it lands in ~/.cache/huggingface), or save it with sae-lens and load "
                "the folder, or train an SAE on the SAE page."
            ) from exc
        raise


def _is_offline_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    offline_types = {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "ConnectionError",
        "ConnectTimeout",
        "HfHubHTTPError",
        "EntryNotFoundError",
        "RepositoryNotFoundError",
        "OSError",
    }
    return bool(names & offline_types)


def check_fits(session: ModelSession, sae: Any) -> str:
    """Canonical hook name of ``sae`` on this model; ValueError when the hook or width do not fit."""
    hook_name = getattr(sae.cfg.metadata, "hook_name", None)
    if not hook_name:
        raise ValueError("the SAE's config names no hook point (metadata.hook_name); cannot attach it")
    if hook_name not in session.hook_names:
        raise ValueError(
            f"the SAE reads hook point {hook_name!r}, which {session.model_id} does not have "
            f"(it has {session.n_layers} layers; residual hooks are blocks.<l>.hook_out)"
        )
    canonical = session.canonical_hook_name(hook_name)
    if getattr(sae.cfg, "reshape_activations", "none") != "none":
        raise ValueError("SAEs on per-head activations (hook_z) are not supported by this page")
    bos = session.tokenizer.bos_token_id
    probe = torch.tensor([[bos if bos is not None else 0]], device=session.device)
    width = session.capture(probe, [canonical])[canonical].shape[-1]
    if width != sae.cfg.d_in:
        raise ValueError(
            f"the SAE expects {sae.cfg.d_in}-wide activations at {hook_name}, but {session.model_id} has "
            f"{width} there: it was trained for a different model"
        )
    return canonical
