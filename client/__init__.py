"""The client node: ClientApp, local DP-SGD training and the privacy ledger."""

from client.app import build_client_app
from client.data import ClientData, ClientDataFn
from client.node_ledger import LedgerError, NodeLedger, read_ledger
from client.privacy import PrivacyLedger, StepPlan, compute_epsilon, noise_for_target, plan_round
from client.training import DPStep, LocalResult, train_locally

__all__ = [
    "ClientData",
    "ClientDataFn",
    "DPStep",
    "LedgerError",
    "LocalResult",
    "NodeLedger",
    "PrivacyLedger",
    "StepPlan",
    "build_client_app",
    "compute_epsilon",
    "noise_for_target",
    "plan_round",
    "read_ledger",
    "train_locally",
]
