"""The plugin API: every contract and registry of beyondmle, in one import.

    from beyondmle.api import Objective, ObjectiveSettings, register_objective, setting

Layers (docs/architecture.md): leaves (model, tokenization, decoding, fused loss, settings)
→ these contracts → training and evaluation, and the plugins → the matrix → the CLI.
"""

from beyondmle.api.corpus import (
    CORPORA,
    SPLITS,
    Corpus,
    CorpusError,
    CorpusSettings,
    CorpusSource,
    available_corpora,
    get_corpus,
    load_corpus,
    register_corpus,
)
from beyondmle.api.featurizer import (
    FEATURIZERS,
    Featurizer,
    FeaturizerUnavailableError,
    available_featurizers,
    get_featurizer,
    register_featurizer,
)
from beyondmle.api.lm import IGNORE_INDEX, CausalLM, ModelInfo
from beyondmle.api.metric import (
    METRICS,
    EvalInputs,
    Metric,
    MetricValue,
    Output,
    available_metrics,
    fingerprint,
    get_metric,
    register_metric,
)
from beyondmle.api.objective import (
    OBJECTIVES,
    Objective,
    ObjectiveDiverged,
    ObjectiveOutput,
    ObjectiveSettings,
    Optimizers,
    TrainingState,
    available_objectives,
    get_objective,
    register_objective,
    token_nll,
)
from beyondmle.api.registry import (
    DuplicatePluginError,
    PluginWarning,
    Registry,
    UnknownPluginError,
)
from beyondmle.settings import Problem, Settings, SettingsError, build_settings, setting
from beyondmle.tokenization import SpecialTokens

__all__ = [
    "CORPORA",
    "FEATURIZERS",
    "IGNORE_INDEX",
    "METRICS",
    "OBJECTIVES",
    "SPLITS",
    "CausalLM",
    "Corpus",
    "CorpusError",
    "CorpusSettings",
    "CorpusSource",
    "DuplicatePluginError",
    "EvalInputs",
    "Featurizer",
    "FeaturizerUnavailableError",
    "Metric",
    "MetricValue",
    "ModelInfo",
    "Objective",
    "ObjectiveDiverged",
    "ObjectiveOutput",
    "ObjectiveSettings",
    "Optimizers",
    "Output",
    "PluginWarning",
    "Problem",
    "Registry",
    "Settings",
    "SettingsError",
    "SpecialTokens",
    "TrainingState",
    "UnknownPluginError",
    "available_corpora",
    "available_featurizers",
    "available_metrics",
    "available_objectives",
    "build_settings",
    "fingerprint",
    "get_corpus",
    "get_featurizer",
    "get_metric",
    "get_objective",
    "load_corpus",
    "register_corpus",
    "register_featurizer",
    "register_metric",
    "register_objective",
    "setting",
    "token_nll",
]
