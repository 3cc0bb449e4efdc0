"""The activation-patching probe: sweep (layer, position) and (layer, head) patches of a prompt pair."""

from __future__ import annotations

import numpy as np
import torch

from lenslab.models.session import ModelSession
from lenslab.probes.base import Probe, register, to_numpy
from lenslab.probes.patching.pair import final_hidden, metric, normalise, resolve_pair
from lenslab.probes.patching.result import (
    PatchingConfig,
    PatchingResult,
    PatchSweep,
    position_labels,
    row_labels,
    sweep_description,
)
from lenslab.probes.patching.sweeps import patched_hidden, source_activations, sweep_rows
from lenslab.progress import NO_PROGRESS, Progress


@register
class ActivationPatching(Probe[PatchingConfig, PatchingResult]):
    """Patch activations between a clean and a corrupted prompt and score the answer (denoising)."""

    name = "activation_patching"
    title = "Activation patching"
    description = (
        "Which activations carry the difference between a clean and a corrupted prompt: each cell "
        "patches one activation and measures how much of the clean answer comes back."
    )
    config_cls = PatchingConfig
    result_cls = PatchingResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: PatchingConfig,
        progress: Progress = NO_PROGRESS,
    ) -> PatchingResult:
        """Sweep ``config.sweeps`` for the clean ``prompt`` against ``config.corrupted``."""
        config.validate(session)
        layers = session.check_layers(config.layers)
        with session.lock:
            pair = resolve_pair(
                session, prompt, config.corrupted, config.clean_answer, config.corrupted_answer
            )
            progress(0.0, "clean and corrupted runs")
            unpatched = torch.cat(
                [final_hidden(session, t)[:, pair.position] for t in (pair.clean, pair.corrupted)]
            )
            clean_value, corrupted_value = metric(session, unpatched, pair, config.metric).tolist()
            if clean_value == corrupted_value:
                raise ValueError(
                    f"the clean and corrupted prompts give the same {config.metric} ({clean_value:.6g}): "
                    "nothing to restore; choose prompts or answers that differ"
                )
            base, source_tokens = (
                (pair.corrupted, pair.clean)
                if config.direction == "denoising"
                else (pair.clean, pair.corrupted)
            )
            n_heads = int(session.cfg.n_heads)
            plans = [(c, *sweep_rows(c, layers, pair.seq_len, n_heads)) for c in config.sweeps]
            source = source_activations(session, source_tokens, [row for _, _, rows in plans for row in rows])
            total = sum(len(rows) for _, _, rows in plans)
            done, sweeps = 0, []
            for component, grid_layers, rows in plans:

                def step(fraction: float, message: str, offset: int = done, n: int = len(rows)) -> None:
                    progress((offset + fraction * n) / total, message)

                hidden = patched_hidden(
                    session,
                    base,
                    source,
                    rows,
                    pair.position,
                    batch_size=config.batch_size,
                    progress=step,
                    message=f"{component} sweep",
                )
                raw = to_numpy(metric(session, hidden, pair, config.metric)).reshape(len(grid_layers), -1)
                done += len(rows)
                cols = (
                    [f"H{h}" for h in range(n_heads)]
                    if component == "heads"
                    else position_labels(
                        session.decode_each(pair.clean[0].tolist()),
                        session.decode_each(pair.corrupted[0].tolist()),
                    )
                )
                sweeps.append(
                    PatchSweep(
                        component=component,
                        what=sweep_description(component),
                        row_labels=row_labels(grid_layers),
                        row_layers=np.asarray(grid_layers, dtype=np.int64),
                        col_labels=cols,
                        normalized=normalise(raw, clean_value, corrupted_value),
                        raw=raw,
                    )
                )
        progress(1.0, "done")
        return PatchingResult(
            model_id=session.model_id,
            prompt=prompt,
            config=config,
            tokens=session.decode_each(pair.clean[0].tolist()),
            corrupted_tokens=session.decode_each(pair.corrupted[0].tolist()),
            differing=np.asarray(pair.differing, dtype=np.int64),
            answer_ids=np.asarray([pair.clean_answer, pair.corrupted_answer], dtype=np.int64),
            answers=session.decode_each([pair.clean_answer, pair.corrupted_answer]),
            position=pair.position,
            metric=config.metric,
            direction=config.direction,
            clean_value=float(clean_value),
            corrupted_value=float(corrupted_value),
            sweeps=sweeps,
        )
