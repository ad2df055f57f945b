"""The coordinator: ServerApp, strategies, the round loop, checkpoints, the run folder,
certificates and the coordinator command. Names are imported on first use."""

from fedpriv.shared_models.plumbing.lazy import lazy_exports

__all__ = [
    "CentralData",
    "CentralDataFn",
    "LoopResult",
    "RoundRecord",
    "RunFolder",
    "aggregate_train_metrics",
    "build_server_app",
    "build_strategy",
    "run_federation",
    "run_rounds",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CentralData": ".central_data",
        "CentralDataFn": ".central_data",
        "LoopResult": ".loop",
        "RoundRecord": ".loop",
        "RunFolder": ".run_folder",
        "aggregate_train_metrics": ".strategies",
        "build_server_app": ".app",
        "build_strategy": ".strategies",
        "run_federation": ".federation",
        "run_rounds": ".loop",
    },
)
