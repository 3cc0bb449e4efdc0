"""Future Lens (Pal et al., CoNLL 2023): what one hidden state knows about tokens t+1 … t+4.

Modules: ``data`` (documents, examples, hidden states), ``linear`` and ``prompts`` (the trained
methods), ``methods`` (the four methods behind one dispatch), ``artefacts`` (files that refuse
another model), ``evaluation`` (the held-out evaluation probe) and ``probe`` (the per-prompt
grid probe and its inspector view).
"""

from lenslab.probes.future_lens.evaluation import (
    FutureLensEvalConfig,
    FutureLensEvalResult,
    FutureLensEvaluation,
    run_evaluation,
)
from lenslab.probes.future_lens.methods import METHODS
from lenslab.probes.future_lens.probe import (
    FutureLens,
    FutureLensConfig,
    FutureLensResult,
    prepare_default_artefacts,
    train_learned_prompt,
)
from lenslab.probes.future_lens.prompts import PromptTraining

__all__ = [
    "METHODS",
    "FutureLens",
    "FutureLensConfig",
    "FutureLensEvalConfig",
    "FutureLensEvalResult",
    "FutureLensEvaluation",
    "FutureLensResult",
    "PromptTraining",
    "prepare_default_artefacts",
    "run_evaluation",
    "train_learned_prompt",
]
