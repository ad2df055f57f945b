"""The coordinator: ServerApp, strategies, the round loop and the run folder."""

from server.app import CentralData, CentralDataFn, build_server_app, run_federation
from server.loop import LoopResult, RoundRecord, run_rounds
from server.run_folder import RunFolder
from server.strategies import aggregate_train_metrics, build_strategy

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
