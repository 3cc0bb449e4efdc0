"""Sparse-autoencoder features: which SAE features fire, what each means, and steering with them.

Modules: ``loading`` (shipped, trained and pretrained SAEs, checked against the model),
``corpus`` (offline documents, split into training and held-out ones, in token windows),
``training`` (training a TopK SAE with sae-lens), ``evaluation`` (quality on held-out documents
with 95% intervals), ``dashboards`` (every feature's dashboard in one streaming pass),
``features`` (the per-token and per-feature probes and the inspector view) and ``steering``
(steer / clamp / ablate).
"""

from lenslab.probes.sae.dashboards import get_dashboards
from lenslab.probes.sae.evaluation import HeldOutEvaluation, evaluate_sae
from lenslab.probes.sae.features import (
    SAEFeature,
    SAEFeatureConfig,
    SAEFeatureResult,
    SAEFeatures,
    SAEFeaturesConfig,
    SAEFeaturesResult,
    prepare_default_artefacts,
)
from lenslab.probes.sae.loading import LoadedSAE, available_specs, load_sae
from lenslab.probes.sae.steering import SAESteering, SAESteeringConfig, SAESteeringResult
from lenslab.probes.sae.training import SAETrainingConfig, train_sae

__all__ = [
    "HeldOutEvaluation",
    "LoadedSAE",
    "SAEFeature",
    "SAEFeatureConfig",
    "SAEFeatureResult",
    "SAEFeatures",
    "SAEFeaturesConfig",
    "SAEFeaturesResult",
    "SAESteering",
    "SAESteeringConfig",
    "SAESteeringResult",
    "SAETrainingConfig",
    "available_specs",
    "evaluate_sae",
    "get_dashboards",
    "load_sae",
    "prepare_default_artefacts",
    "train_sae",
]
