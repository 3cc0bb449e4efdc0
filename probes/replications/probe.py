"""The ``replications`` probe: re-run each seed paper's key check on the loaded model.

One run measures every claim of :mod:`.future_lens`, :mod:`.jacobian`, :mod:`.sae`,
:mod:`.shared_neurons` and :mod:`.neurosymbolic` and lays them side by side: the paper's number
and model, lenslab's number with its 95% interval and n, and the verdict of
:func:`.claims.verdict`. ``quick`` uses small sizes and the prepared artefacts (minutes on the
embedded model); ``full`` uses the papers' sizes where lenslab can run them.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lenslab.models.session import ModelSession
from lenslab.probes.base import Config, Probe, Result, get_probe, register
from lenslab.probes.plotting import wrapped
from lenslab.probes.replications import future_lens, jacobian, neurosymbolic, sae, shared_neurons
from lenslab.probes.replications.claims import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    Claim,
    ClaimOutcome,
    format_outcome,
    format_value,
)
from lenslab.progress import NO_PROGRESS, Progress

MODES = ("quick", "full")
FAMILIES = ("future_lens", "jacobian", "sae", "shared_neurons", "neurosymbolic")
VERDICT_COLOURS = {HOLDS: "#2ca02c", DOES_NOT_HOLD: "#d62728", INCONCLUSIVE: "#ff7f0e"}
OTHER_COLOUR = "#7f7f7f"


@dataclass(frozen=True)
class ReplicationsConfig(Config):
    """Which claims to re-run, and at which size."""

    mode: str = field(
        default="quick",
        metadata={
            "help": "quick: small sizes, the prepared artefacts (minutes); full: the papers' sizes (hours)",
            "choices": MODES,
        },
    )
    families: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": f"families to re-run (empty: all of {', '.join(FAMILIES)})", "items": FAMILIES},
    )

    def check_numbers(self) -> None:
        """Check the mode and the family names (no model needed)."""
        super().check_numbers()
        unknown = sorted(set(self.families or ()) - set(FAMILIES))
        if unknown:
            raise ValueError(f"families: unknown {unknown}; choose from {list(FAMILIES)}")

    def family_list(self) -> list[str]:
        """The selected families, in the table's order."""
        return [f for f in FAMILIES if not self.families or f in self.families]

    def command(self) -> str:
        """The shell command that re-runs this replication."""
        only = f" --families {','.join(self.families)}" if self.families else ""
        return f"lenslab replicate --{self.mode}{only}"


@dataclass(frozen=True)
class ReplicationsResult(Result):
    """Every claim with its outcome: the paper's number vs lenslab's, with intervals and verdicts."""

    probe = "replications"
    config: ReplicationsConfig
    claims: list[Claim]
    outcomes: list[ClaimOutcome]
    seconds: dict[str, float]  # wall time per family
    command: str  # re-run command

    def rows(self) -> list[dict[str, str]]:
        """One table row per claim (strings, as shown in the app and the report)."""
        return [
            {
                "paper": c.paper,
                "claim": c.claim,
                "paper's number": c.paper_value,
                "paper's model": c.paper_model,
                "lenslab (95% CI)": format_outcome(o, c.unit),
                "verdict": o.verdict,
            }
            for c, o in zip(self.claims, self.outcomes, strict=True)
        ]

    def summary(self) -> dict[str, object]:
        """Counts of each verdict and the re-run command."""
        counts: dict[str, object] = {}
        for o in self.outcomes:
            counts[o.verdict] = int(counts.get(o.verdict, 0)) + 1  # type: ignore[call-overload]
        return {**counts, "mode": self.config.mode, "command": self.command}

    def figures(self) -> dict[str, go.Figure]:
        """The side-by-side table and a forest plot (lenslab's interval vs the paper's number)."""
        return {"table": self._table(), "forest": self._forest()}

    def _table(self) -> go.Figure:
        rows = self.rows()
        columns = list(rows[0]) if rows else []
        colours = [VERDICT_COLOURS.get(o.verdict, OTHER_COLOUR) for o in self.outcomes]
        fig = go.Figure(
            go.Table(
                header={"values": columns, "align": "left"},
                cells={
                    "values": [[r[c] for r in rows] for c in columns],
                    "align": "left",
                    "font": {"color": [["black"] * len(rows)] * (len(columns) - 1) + [colours]},
                },
                columnwidth=[1.3, 3, 1.2, 1.3, 1.8, 1.1],
            )
        )
        fig.update_layout(
            title=f"Replications on {self.model_id} ({self.config.mode} mode)",
            height=120 + 60 * len(rows),
            margin={"l": 10, "r": 10, "t": 50, "b": 10},
        )
        return fig

    def _forest(self) -> go.Figure:
        """One row per claim (own x axis: the claims' units differ): interval, estimate, paper's mark."""
        n = max(len(self.claims), 1)
        titles = [wrapped(f"{c.paper}: {c.claim}", 110) for c in self.claims]  # whole, on ≤ 2 lines
        fig = make_subplots(rows=n, cols=1, subplot_titles=titles or None, vertical_spacing=0.6 / n)
        for i, (c, o) in enumerate(zip(self.claims, self.outcomes, strict=True), start=1):
            scale = 100.0 if c.unit == "%" else 1.0
            colour = VERDICT_COLOURS.get(o.verdict, OTHER_COLOUR)
            if math.isfinite(o.value):
                has_ci = math.isfinite(o.low) and math.isfinite(o.high)
                error = (
                    {
                        "type": "data",
                        "symmetric": False,
                        "array": [(o.high - o.value) * scale],
                        "arrayminus": [(o.value - o.low) * scale],
                        "color": colour,
                    }
                    if has_ci
                    else None
                )
                fig.add_trace(
                    go.Scatter(
                        x=[o.value * scale],
                        y=["lenslab"],
                        error_x=error,
                        mode="markers",
                        marker={"color": colour, "size": 10},
                        name=o.verdict,
                        showlegend=False,
                        hovertext=f"{format_outcome(o, c.unit)} — {o.verdict}",
                        hoverinfo="text",
                    ),
                    row=i,
                    col=1,
                )
            if math.isfinite(c.threshold):
                fig.add_trace(
                    go.Scatter(
                        x=[c.threshold * scale],
                        y=["paper"],
                        mode="markers",
                        marker={"symbol": "line-ns-open", "size": 18, "color": "black"},
                        showlegend=False,
                        hovertext=f"paper: {c.paper_value} ({c.paper_model}); "
                        f"threshold {format_value(c.threshold, c.unit)}",
                        hoverinfo="text",
                    ),
                    row=i,
                    col=1,
                )
                fig.add_vline(x=c.threshold * scale, line_dash="dot", line_color="black", row=i, col=1)
            unit = " (%)" if c.unit == "%" else " (×)" if c.unit == "×" else ""
            fig.update_xaxes(
                type="log" if c.log_scale else None,
                exponentformat="e",  # 1e-15, not the SI "1f"
                title_text=f"value{unit} · verdict: {o.verdict}",
                row=i,
                col=1,
            )
        fig.update_layout(
            title="lenslab's 95% interval (dot, bar) vs the paper's number (black mark)",
            height=170 * n + 80,
            margin={"l": 10, "r": 10, "t": 60, "b": 10},
        )
        fig.update_annotations(font_size=11)
        return fig


@register
class Replications(Probe[ReplicationsConfig, ReplicationsResult]):
    """Re-run each seed paper's key check and compare with the paper's number."""

    name = "replications"
    title = "Replications"
    description = (
        "Each seed paper's key claim re-measured on the loaded model: paper vs lenslab with a 95% "
        "interval, and a verdict (holds / does not hold / inconclusive at 95%)."
    )
    config_cls = ReplicationsConfig
    result_cls = ReplicationsResult

    def run(
        self,
        session: ModelSession,
        prompt: str,
        config: ReplicationsConfig,
        progress: Progress = NO_PROGRESS,
    ) -> ReplicationsResult:
        """Measure the selected families' claims (``prompt`` is not used: each claim has its data)."""
        config.validate(session)
        families = config.family_list()
        claims: list[Claim] = []
        outcomes: list[ClaimOutcome] = []
        seconds: dict[str, float] = {}
        for index, family in enumerate(families):

            def part(fraction: float, message: str = "", index: int = index, family: str = family) -> None:
                progress((index + fraction) / len(families), f"{family}: {message}")

            part(0.0, "starting")
            started = time.perf_counter()
            family_claims, family_outcomes = measure_family(session, family, config.mode, part)
            seconds[family] = round(time.perf_counter() - started, 2)
            claims += family_claims
            outcomes += family_outcomes
        progress(1.0, "done")
        return ReplicationsResult(
            model_id=session.model_id,
            prompt="replications",
            config=config,
            claims=claims,
            outcomes=outcomes,
            seconds=seconds,
            command=f"{config.command()} --model {shlex.quote(session.model_id)}",
        )


def measure_family(
    session: ModelSession, family: str, mode: str, progress: Progress = NO_PROGRESS
) -> tuple[list[Claim], list[ClaimOutcome]]:
    """Run (or read) one family's measurement and turn it into outcomes of its claims."""
    if family == "future_lens":
        result = get_probe("future_lens_eval").run(session, "", future_lens.config(mode), progress)
        return list(future_lens.CLAIMS), future_lens.outcomes(result)  # type: ignore[arg-type]
    if family == "jacobian":
        return list(jacobian.CLAIMS), jacobian.outcomes(jacobian.run(session, mode, progress))
    if family == "sae":
        return list(sae.CLAIMS), sae.outcomes(session)
    if family == "shared_neurons":
        result = get_probe("shared_neurons").run(session, "", shared_neurons.config(mode), progress)
        return list(shared_neurons.CLAIMS), shared_neurons.outcomes(result)  # type: ignore[arg-type]
    if family == "neurosymbolic":
        return list(neurosymbolic.CLAIMS), neurosymbolic.outcomes(session)
    raise ValueError(f"unknown family {family!r}; choose from {list(FAMILIES)}")
