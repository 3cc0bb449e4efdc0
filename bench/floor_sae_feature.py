"""Floors of the SAE feature page (``sae_feature``): what it cannot avoid, as bare tensor work.

The page shows one feature's dashboard (top corpus contexts, quantile examples, histogram,
firing frequency, logit effects) from statistics of every feature over the corpus windows,
built once in one streaming pass and cached on disk. Two rows:

- **the page** (its default config, dashboards cached: what every visit after the first costs):
  reading the cached statistics (``np.load`` of the cache file), the feature's logit effects
  (its decoder row scaled by the final norm's weight, one ``W_U`` product and the top/bottom
  10) and the shown contexts' tokens decoded to text;
- **a first visit** (``sae_feature (cold)``, the probe run in a fresh LENSLAB_HOME holding only
  the SAE, so that it builds the dashboards): the corpus windows through the HF body up to the
  SAE's layer (a hook stops it there, ``batch`` windows a forward), the SAE's encoder on every
  non-BOS position (a TopK SAE needs every feature's pre-activation to know whether this one is
  among the top k), and that ONE feature's statistics: its top-``top_k`` activations over the
  corpus, firing count and sum, its histogram on the probe's bins (their edges come from the
  first statistics batch's firing values of all features, as the probe sets them) and a uniform
  sample of its firing positions; then the page's logit effects and contexts as above. The
  corpus' tokenisation is data preparation and is done outside the timing.

The checks compare the floor's numbers with the probe's result before timing: the top contexts'
positions and activations, the firing frequency, mean and maximum, the histogram and the logit
effects (the quantile examples are a random sample: only their count is the probe's).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.floor_future_lens_eval import cold_home
from lenslab.models import ModelSession, hooknames
from lenslab.probes.sae.corpus import token_windows
from lenslab.probes.sae.dashboards import DashboardSettings, cache_key, cache_path
from lenslab.probes.sae.loading import LoadedSAE, load_sae, sae_root


def _settings(config: Any) -> DashboardSettings:
    """The dashboard settings the page asks for (as ``SAEFeature.run`` builds them)."""
    return DashboardSettings(
        corpus=config.corpus, documents=config.documents, n_seq=config.n_seq, context_size=config.context_size
    )


def _logit_effects(
    hf: torch.nn.Module, direction: Tensor, k: int = 10
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top and bottom ``k`` (ids, values) of ``direction`` · (1 + final norm weight) · W_Uᵀ (Gemma)."""
    w_u = hf.lm_head.weight
    effects = (direction * (hf.model.norm.weight + 1.0)) @ w_u.T
    top, bottom = effects.topk(k), effects.topk(k, largest=False)
    return top.indices, top.values, bottom.indices, bottom.values


def _contexts(session: ModelSession, tokens: np.ndarray, flat: list[int], window: int) -> list[list[str]]:
    """The shown contexts' tokens as text (``window`` each side of the activating token)."""
    out = []
    for index in flat:
        seq, pos = divmod(int(index), tokens.shape[1])
        out.append(session.decode_each(tokens[seq, max(1, pos - window) : pos + window + 1].tolist()))
    return out


def _check_logits(result: Any, session: ModelSession, effects: tuple[Tensor, ...]) -> None:
    top_i, top_v, bot_i, bot_v = (t.cpu() for t in effects)
    assert session.decode_each(top_i.tolist()) == result.logit_top, "promoted tokens differ"
    assert session.decode_each(bot_i.tolist()) == result.logit_bottom, "suppressed tokens differ"
    assert torch.allclose(top_v, torch.as_tensor(result.logit_top_values), rtol=1e-4, atol=1e-4)
    assert torch.allclose(bot_v, torch.as_tensor(result.logit_bottom_values), rtol=1e-4, atol=1e-4)


def sae_feature_floor(
    session: ModelSession, hf: torch.nn.Module, config: Any
) -> tuple[str, Callable[[], Any], Callable[[Any], None]]:
    """(kind, run, check) of the page with its dashboards cached (the default config)."""
    loaded = load_sae(session, config.sae)
    settings = _settings(config)
    windows = token_windows(
        session,
        settings.corpus,
        context_size=settings.context_size,
        n_seq=settings.n_seq,
        subset=settings.documents,
    )
    path = cache_path(session, cache_key(session, loaded, windows, settings)).with_suffix(".npz")
    if not path.is_file():
        raise FileNotFoundError(f"no cached dashboards at {path}: open the page once (lenslab prepare)")
    feature = loaded.check_feature(config.feature)
    direction = loaded.sae.W_dec[feature].detach().to(hf.lm_head.weight)

    def run() -> tuple[np.ndarray, np.ndarray, tuple[Tensor, ...]]:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        index, values = arrays["top_index"][feature], arrays["top_values"][feature]
        shown = [int(i) for i in index if i >= 0][: config.n_top]
        sampled = [int(i) for i in arrays["sample_index"][feature] if i >= 0][:12]
        _contexts(session, arrays["tokens"], shown + sampled, config.window)
        with torch.inference_mode():
            effects = _logit_effects(hf, direction)
        return index[: len(shown)], values[: len(shown)], effects

    def check(result: Any) -> None:
        index, values, effects = run()
        got = [c.value for c in result.top_contexts]
        assert np.allclose(values, got, rtol=1e-6), "top activations differ"
        assert len(index) == len(result.top_contexts), "top contexts differ"
        _check_logits(result, session, effects)
        print(f"sae_feature floor (cached): {len(got)} top contexts and the logit effects equal the probe's")

    return "cached dashboards + logit effects", run, check


# ------------------------------------------------------------------------------------ first visit
class _Stop(Exception):
    pass


def _stopped(hf: torch.nn.Module, tokens: Tensor, layer: int) -> Tensor:
    """The HF body run up to block ``layer`` (a hook stops it there); returns that block's output."""
    box: list[Tensor] = []

    def stop(_module: object, _args: object, output: Any) -> None:
        box.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = hf.model.layers[layer].register_forward_hook(stop)
    try:
        hf.model(tokens)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box[0]


@contextlib.contextmanager
def sae_only_home(session: ModelSession, config: Any) -> Iterator[Path]:
    """A fresh LENSLAB_HOME holding the page's SAE (linked, read only) and no dashboards."""
    if config.sae != "default" and not config.sae.startswith("trained:"):
        raise ValueError(f"the first-visit floor covers lenslab-trained SAEs, not {config.sae!r}")
    trained = sae_root(session) / config.sae.removeprefix("trained:")
    with cold_home() as home:
        root = sae_root(session)
        root.mkdir(parents=True, exist_ok=True)
        (root / trained.name).symlink_to(trained, target_is_directory=True)
        yield home


class FirstVisitFloor:
    """The first visit's floor: windows → stopped forwards → SAE encoder → one feature's statistics."""

    def __init__(
        self,
        session: ModelSession,
        hf: torch.nn.Module,
        loaded: LoadedSAE,
        config: Any,
        batch: int = 32,
    ) -> None:
        self.session, self.hf, self.loaded, self.config = session, hf, loaded, config
        self.settings = _settings(config)
        self.windows = token_windows(
            session,
            self.settings.corpus,
            context_size=self.settings.context_size,
            n_seq=self.settings.n_seq,
            subset=self.settings.documents,
        )
        self.tokens = torch.from_numpy(self.windows.tokens).to(hf.lm_head.weight.device)
        self.layer = hooknames.layer_of(loaded.hook_name)
        self.feature = loaded.check_feature(config.feature)
        self.batch = batch
        self.direction = loaded.sae.W_dec[self.feature].detach().to(hf.lm_head.weight)

    def kind(self) -> str:
        """The floor's name in the results table."""
        n_seq, context = self.tokens.shape
        return (
            f"{n_seq}×{context} tok stop@{self.layer} ({self.batch}/forward) + SAE encode "
            "+ 1 feature's stats + logit effects"
        )

    def compute(self) -> dict[str, Any]:
        """All of the floor's work, returning what it computed."""
        s, sae, f = self.settings, self.loaded, self.feature
        context = self.tokens.shape[1]
        parts, edges = [], None
        with torch.inference_mode():
            for start in range(0, len(self.tokens), self.batch):
                state = _stopped(self.hf, self.tokens[start : start + self.batch], self.layer)
                acts = sae.encode(state[:, 1:]).float()  # [batch, context - 1, d_sae]
                if edges is None:  # the probe's bins: its first statistics batch's firing values
                    first = acts[: s.batch_size]
                    firing = first[first > 0]
                    low = max(float(firing.min()) / 10, 1e-6) if firing.numel() else 1e-3
                    high = float(firing.max()) * 10 if firing.numel() else 1e3
                    edges = torch.logspace(math.log10(low), math.log10(high), s.n_bins + 1)
                parts.append(acts[..., f].reshape(-1))
            values = torch.cat(parts)  # [n_seq * (context - 1)]
            rows = torch.arange(len(self.tokens))[:, None] * context + torch.arange(1, context)[None]
            flat = rows.reshape(-1)
            top = values.topk(s.top_k)
            fires = values > 0
            fired = values[fires]
            bins = (torch.bucketize(fired, edges.to(fired)) - 1).clamp(0, s.n_bins - 1)
            hist = torch.bincount(bins, minlength=s.n_bins)
            keys = torch.rand(int(fires.sum()), generator=torch.Generator().manual_seed(s.seed))
            sample = flat[fires][keys.topk(min(s.n_samples, len(keys))).indices]
            shown = [int(i) for i, v in zip(flat[top.indices], top.values, strict=True) if v > 0]
            effects = _logit_effects(self.hf, self.direction)
        _contexts(
            self.session,
            self.windows.tokens,
            shown[: self.config.n_top] + sample[:12].tolist(),
            self.config.window,
        )
        return {
            "top_index": flat[top.indices],
            "top_values": top.values,
            "fire_count": int(fires.sum()),
            "act_sum": float(values.double().sum()),
            "hist": hist,
            "n_tokens": len(values),
            "effects": effects,
        }

    def run(self) -> None:
        """The timed call."""
        self.compute()


def cold_probe_run(session: ModelSession, probe: Any, config: Any) -> Any:
    """The page as on a first visit: its dashboards built in a fresh home (shared artefacts untouched)."""
    with sae_only_home(session, config):
        return probe.run(session, "", config)


def check_first_visit(floor: FirstVisitFloor, result: Any) -> str:
    """``AssertionError`` unless the floor computed the probe's numbers; returns a one-line summary."""
    ours = floor.compute()
    n = min(len(result.top_contexts), floor.config.n_top)
    assert np.allclose(
        ours["top_values"][:n].cpu().numpy(), [c.value for c in result.top_contexts][:n], rtol=1e-4, atol=1e-4
    ), "top activations differ"
    assert ours["n_tokens"] == result.n_tokens, "token counts differ"
    fires = round(result.frequency * result.n_tokens)  # TopK near-ties at the k-th place may swap
    assert abs(ours["fire_count"] - fires) <= max(1, fires // 1000), (
        f"firings differ: {ours['fire_count']} vs {fires}"
    )
    assert np.isclose(float(ours["top_values"][0]), result.max_activation, rtol=1e-4), "maxima differ"
    mean = ours["act_sum"] / max(ours["fire_count"], 1)
    assert np.isclose(mean, result.mean_activation, rtol=1e-4), "means differ"
    moved = int(np.abs(ours["hist"].cpu().numpy() - result.hist_counts).sum())
    assert moved <= max(2, fires // 500), (
        f"histograms differ: {ours['hist'].tolist()} vs {result.hist_counts.tolist()}"
    )
    _check_logits(result, floor.session, ours["effects"])
    return (
        f"checked before timing: the feature's {n} top activations, its {ours['fire_count']} firings of "
        f"{ours['n_tokens']} tokens, mean, maximum, histogram and logit effects equal the probe's "
        "(the quantile examples are a random sample: not compared)"
    )


def first_visit_row(session: ModelSession, hf: torch.nn.Module, config: Any, repeat: int) -> tuple[str, str]:
    """The page-latency row of ``sae_feature`` on a first visit (dashboards built) and a note."""
    from bench.bench_pages import measure
    from lenslab.probes import get_probe

    probe = get_probe("sae_feature")
    floor = FirstVisitFloor(session, hf, load_sae(session, config.sae), config)
    started = time.perf_counter()
    checked = check_first_visit(floor, cold_probe_run(session, probe, config))  # also the warm-up
    print(f"sae_feature first visit checked in {time.perf_counter() - started:.1f} s", flush=True)
    wall, cpu = measure(
        {"probe": lambda: cold_probe_run(session, probe, config), "floor": floor.run}, repeat, warm=False
    )
    ratio = cpu["probe"] / cpu["floor"]
    n_seq, context = floor.tokens.shape
    row = (
        f"| sae_feature (cold: dashboards built) | {n_seq}×{context} "
        f"| {wall['probe']:.3f} / {cpu['probe']:.3f} "
        f"| {floor.kind()} | {wall['floor']:.3f} / {cpu['floor']:.3f} | {wall['probe'] / wall['floor']:.2f}× "
        f"| {ratio:.2f}× | ≤ 2.0×: {'met' if ratio <= 2.0 else 'missed'} |"
    )
    note = (
        f"`sae_feature (cold)` runs the default config in a fresh LENSLAB_HOME holding only the SAE (it "
        f"builds the dashboards of all {floor.loaded.d_sae} features, as on a first visit); its floor is "
        f"`bench/floor_sae_feature.py`, {checked}."
    )
    return row, note
