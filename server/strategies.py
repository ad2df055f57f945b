"""The aggregation strategies a run can use, selected by name.

All are Flower's own (``flwr.serverapp.strategy``), configured so that sampling waits for
``RunConfig.min_available_nodes`` connected nodes (the whole population in a
simulation) and training metrics are aggregated by
:func:`aggregate_train_metrics`. FedProx is left out on purpose: its proximal
term's gradient is not per-sample, so Opacus would drop it under DP-SGD.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from shared_models.config import STRATEGIES, RunConfig
from shared_models.errors import ConfigError
from shared_models.messages import (
    ARRAYS_KEY,
    CLIENT_WEIGHT,
    CONFIG_KEY,
    EPSILON,
    EPSILON_ROUND,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)

_FACTORIES: dict[str, Callable[..., Strategy]] = {
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedavg": FedAvg,
    "fedavgm": lambda **kw: FedAvgM(server_momentum=0.9, **kw),
    "fedmedian": FedMedian,
    "fedtrimmedavg": lambda **kw: FedTrimmedAvg(beta=0.2, **kw),
    "fedyogi": FedYogi,
    "krum": Krum,
    "multikrum": MultiKrum,
}


def build_strategy(config: RunConfig) -> Strategy:
    """The strategy named by ``config.strategy``, sized for ``config.num_clients``.

    Under client-level DP the clients' updates are averaged with equal weights
    (the noise is calibrated to a plain mean); the caller wraps the result in
    a DP wrapper (:func:`server.client_dp.wrap_client_dp`).
    """
    try:
        factory = _FACTORIES[config.strategy]
    except KeyError:
        raise ConfigError(
            f"unknown strategy '{config.strategy}'; choose one of: {', '.join(STRATEGIES)}"
        ) from None
    per_round = max(1, math.floor(config.min_available_nodes * config.fraction_train))
    return factory(
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=per_round,
        min_evaluate_nodes=1 if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.min_available_nodes,
        weighted_by_key=CLIENT_WEIGHT if config.client_dp.enabled else NUM_EXAMPLES,
        arrayrecord_key=ARRAYS_KEY,
        configrecord_key=CONFIG_KEY,
        train_metrics_aggr_fn=aggregate_train_metrics,
    )


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean train loss; max and mean of the clients' epsilons.

    ``epsilon-max``/``epsilon-mean`` are over the clients that replied this
    round, of their *cumulative* epsilon; ``epsilon-round-max`` is the largest
    single-round spend. Without DP (epsilon reported as -1) they are -1.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = [float(m[weight_key]) for m in metrics]  # type: ignore[arg-type]
    total = sum(weights)
    losses = [float(m[TRAIN_LOSS]) for m in metrics]  # type: ignore[arg-type]
    loss = sum(w * x for w, x in zip(weights, losses, strict=True))
    eps = [float(m[EPSILON]) for m in metrics]  # type: ignore[arg-type]
    eps_round = [float(m[EPSILON_ROUND]) for m in metrics]  # type: ignore[arg-type]
    return MetricRecord(
        {
            weight_key: int(total),
            TRAIN_LOSS: loss / total if total else float("nan"),
            "epsilon-max": max(eps),
            "epsilon-mean": sum(eps) / len(eps),
            "epsilon-round-max": max(eps_round),
        }
    )
