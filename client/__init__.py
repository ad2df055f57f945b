"""The client node: ClientApp, the client round (local DP-SGD), the ledger's store,
the node command. Names are imported on first use."""

from fedpriv.shared_models.plumbing.lazy import lazy_exports

__all__ = [
    "ClientData",
    "ClientDataFn",
    "DPStep",
    "LedgerError",
    "LocalResult",
    "RoundResult",
    "build_client_app",
    "client_round",
    "load_local_data",
    "read_ledger",
    "train_locally",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ClientData": ".data",
        "ClientDataFn": ".data",
        "DPStep": ".training",
        "LedgerError": ".ledger_store",
        "LocalResult": ".training",
        "RoundResult": ".round",
        "build_client_app": ".app",
        "client_round": ".round",
        "load_local_data": ".data",
        "read_ledger": ".ledger_store",
        "train_locally": ".training",
    },
)
