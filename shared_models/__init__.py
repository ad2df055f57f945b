"""What server and clients must agree on: the models and their registry, the run
config, the message contract, evaluation, and the errors."""

from shared_models.config import DPConfig, RunConfig
from shared_models.errors import (
    ConfigError,
    DataError,
    FederationError,
    FedprivError,
    PrivacyBudgetError,
)
from shared_models.evaluation import evaluate_model, resolve_device
from shared_models.messages import EvalReport, MessageFormatError, TrainReport
from shared_models.registry import MODEL_NAMES, ModelConfig, build_model

__all__ = [
    "MODEL_NAMES",
    "ConfigError",
    "DPConfig",
    "DataError",
    "EvalReport",
    "FederationError",
    "FedprivError",
    "MessageFormatError",
    "ModelConfig",
    "PrivacyBudgetError",
    "RunConfig",
    "TrainReport",
    "build_model",
    "evaluate_model",
    "resolve_device",
]
