"""What server and clients must agree on: the models and their registry, the run
config, the data-folder format, the privacy accounting and ledger, the message
contract, evaluation, and the errors. (Plumbing every command needs lives in
:mod:`fedpriv.shared_models.plumbing`.)

Names are imported on first use, so importing this package costs nothing.
"""

from fedpriv.shared_models.plumbing.lazy import lazy_exports

__all__ = [
    "MODEL_NAMES",
    "ClientDPConfig",
    "ConfigError",
    "DPConfig",
    "DataError",
    "DataMeta",
    "EvalReport",
    "FederationError",
    "FedprivError",
    "MessageFormatError",
    "ModelConfig",
    "PrivacyBudgetError",
    "PrivacyLedger",
    "RunConfig",
    "StepPlan",
    "TrainReport",
    "build_model",
    "compute_epsilon",
    "evaluate_model",
    "noise_for_target",
    "plan_round",
    "resolve_device",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MODEL_NAMES": ".registry",
        "ClientDPConfig": ".config",
        "ConfigError": ".errors",
        "DPConfig": ".config",
        "DataError": ".errors",
        "DataMeta": ".data_format",
        "EvalReport": ".messages",
        "FederationError": ".errors",
        "FedprivError": ".errors",
        "MessageFormatError": ".messages",
        "ModelConfig": ".registry",
        "PrivacyBudgetError": ".errors",
        "PrivacyLedger": ".ledger",
        "RunConfig": ".config",
        "StepPlan": ".accounting",
        "TrainReport": ".messages",
        "build_model": ".registry",
        "compute_epsilon": ".accounting",
        "evaluate_model": ".evaluation",
        "noise_for_target": ".accounting",
        "plan_round": ".accounting",
        "resolve_device": ".evaluation",
    },
)
