"""What server and clients must agree on: the models, their registry and the errors."""

from shared_models.errors import ConfigError, DataError, FedprivError, PrivacyBudgetError
from shared_models.registry import MODEL_NAMES, ModelConfig, build_model

__all__ = [
    "MODEL_NAMES",
    "ConfigError",
    "DataError",
    "FedprivError",
    "ModelConfig",
    "PrivacyBudgetError",
    "build_model",
]
