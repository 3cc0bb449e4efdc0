"""The state inspector's registry: every probe's view of ONE hidden state.

A hidden state is addressed as (prompt, layer, position[, hook]) by a :class:`StateRef`. A probe
joins the inspector with one call, ``register_state_view(StateView(...))``, giving a function that
computes a normal probe Result focused on that state; the app shows all of them side by side and
can save them together as one report. A view that needs something missing (an SAE, a trained
encoder) raises ``FileNotFoundError`` with what to do, and the inspector shows that message.
Lenses that look at one activation vector of the state read it with :func:`read_state`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from lenslab.models import hooknames
from lenslab.probes.base import Result
from lenslab.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:
    from lenslab.models.session import ModelSession

HOOKS = ("resid_post",)


@dataclass(frozen=True)
class StateRef:
    """One hidden state: the residual stream after block ``layer`` at token ``position``."""

    prompt: str
    layer: int
    position: int = -1
    hook: str = "resid_post"

    def resolve(self, session: ModelSession) -> StateRef:
        """Validated copy with a non-negative layer and position for this model and prompt."""
        if self.hook not in HOOKS:
            raise ValueError(f"unknown hook {self.hook!r}; the inspector supports {HOOKS}")
        layer = session.check_layer(self.layer)
        seq_len = session.tokenize(self.prompt).shape[-1]
        position = session.check_position(self.position, seq_len)
        return StateRef(self.prompt, layer, position, self.hook)

    def hook_name(self) -> str:
        """TransformerLens hook name of this state."""
        return hooknames.resid(self.layer)

    def to_query(self) -> dict[str, str]:
        """Query-string form (the app keeps the selected state in the URL)."""
        return {
            "prompt": self.prompt,
            "layer": str(self.layer),
            "pos": str(self.position),
            "hook": self.hook,
        }

    @classmethod
    def from_query(cls, params: Mapping[str, Any]) -> StateRef | None:
        """Inverse of :meth:`to_query`; None when the URL holds no state, ValueError if garbled."""
        if "prompt" not in params or "layer" not in params:
            return None
        try:
            layer = int(str(params["layer"]))
            position = int(str(params.get("pos", "-1")))
        except ValueError as exc:
            raise ValueError("the link's layer/pos must be integers") from exc
        return cls(str(params["prompt"]), layer, position, str(params.get("hook", "resid_post")))


@dataclass(frozen=True)
class StateActivation:
    """One activation vector of a prompt, with the prompt's tokens and the resolved position."""

    tokens: list[str]
    position: int  # non-negative
    vector: Float[Tensor, " width"]  # float32


def read_state(session: ModelSession, prompt: str, hook: str, position: int) -> StateActivation:
    """The activation at ``hook`` and ``position`` (negative: from the end) of ``prompt``.

    One forward that stops once ``hook`` has fired. The lenses that look at a single vector of
    one state (the MLP units, the VSA readout) share it, so they resolve the position and label
    the tokens the same way.
    """
    tokens = session.tokenize(prompt)
    position = session.check_position(position, int(tokens.shape[-1]))
    vector = session.capture(tokens, [hook])[hook][0, position].float()
    return StateActivation(session.decode_each(tokens[0].tolist()), position, vector)


ViewFn = Callable[["ModelSession", StateRef, Progress], Result]


@dataclass(frozen=True)
class StateView:
    """One lens in the inspector."""

    name: str
    title: str
    compute: ViewFn
    order: int = 50
    describe: Callable[[Result, StateRef], list[str]] | None = None  # headline lines for the view


_VIEWS: dict[str, StateView] = {}


def register_state_view(view: StateView) -> StateView:
    """Add a lens to the inspector; duplicate names raise."""
    if view.name in _VIEWS and _VIEWS[view.name] != view:
        raise ValueError(f"a state view named {view.name!r} is already registered")
    _VIEWS[view.name] = view
    return view


def state_views() -> list[StateView]:
    """All registered lenses, in display order."""
    return sorted(_VIEWS.values(), key=lambda v: (v.order, v.name))


@dataclass(frozen=True)
class InspectorOutcome:
    """What one lens produced for a state: a result, or the reason it could not."""

    view: str
    title: str
    result: Result | None
    lines: list[str]
    error: str | None


def inspect_state(
    session: ModelSession, ref: StateRef, progress: Progress = NO_PROGRESS
) -> list[InspectorOutcome]:
    """Run every registered lens on one state; a lens that cannot run reports why."""
    ref = ref.resolve(session)
    views = state_views()
    outcomes = []
    for i, view in enumerate(views):
        progress(i / max(len(views), 1), view.title)
        try:
            result = view.compute(session, ref, NO_PROGRESS)
        except (ValueError, FileNotFoundError) as exc:
            outcomes.append(InspectorOutcome(view.name, view.title, None, [], str(exc)))
            continue
        lines = view.describe(result, ref) if view.describe else []
        outcomes.append(InspectorOutcome(view.name, view.title, result, lines, None))
    progress(1.0, "done")
    return outcomes
