"""The aggregation strategies a run can use, selected by name.

Flower's own (``flwr.serverapp.strategy``) plus norm-bounded FedAvg
(:mod:`fedpriv.server.normbounded`), configured so that sampling waits for
``RunConfig.min_available_nodes`` connected nodes (the whole population in a
simulation) and training metrics are aggregated by
:func:`aggregate_train_metrics`. FedProx is left out on purpose: its proximal
term's gradient is not per-sample, so Opacus would drop it under DP-SGD.

Robust aggregation: ``fedmedian`` (coordinate-wise median), ``fedtrimmedavg``
(drops the ``byzantine_fraction`` largest and smallest values of each
coordinate), ``krum``/``multikrum`` (assume ``f = floor(byzantine_fraction x
sampled)`` malicious clients), ``normbounded`` (FedAvg of updates clipped to
``norm_bound``).

Which combine with what (the rule ``RunConfig`` enforces where it can):

- example-level DP (DP-SGD on the clients): every strategy. The noise is added
  before an update leaves the client; aggregation is post-processing.
- client-level DP: ``fedavg`` only. Flower's wrappers add noise calibrated to
  a plain mean of clipped updates (sensitivity clip / clients) after the
  wrapped strategy aggregates; a median, a trimmed mean, Krum's selection or a
  server optimiser (FedAdam, FedAvgM) has another sensitivity, or would need
  the noise before its own step. (``normbounded`` is redundant with it: the DP
  wrapper already clips.)
- secure aggregation (not available in Flower 1.41's Message API, see
  docs/privacy.md): only aggregates that are sums of the updates, i.e.
  ``fedavg``, with any clipping done on the client (``--client-dp
  client-fixed``/``client-adaptive``). Median, trimmed mean, Krum and
  server-side norm bounding all need to see each update.
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

from fedpriv.server.normbounded import NormBoundedFedAvg
from fedpriv.shared_models.config import STRATEGIES, RunConfig
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.messages import (
    ARRAYS_KEY,
    CLIENT_WEIGHT,
    CONFIG_KEY,
    EPSILON,
    EPSILON_ROUND,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)


def _factories(config: RunConfig, per_round: int) -> dict[str, Callable[..., Strategy]]:
    """Each strategy's constructor, with its robustness settings from ``config``."""
    byzantine = math.floor(config.byzantine_fraction * per_round)
    return {
        "fedadagrad": FedAdagrad,
        "fedadam": FedAdam,
        "fedavg": FedAvg,
        "fedavgm": lambda **kw: FedAvgM(server_momentum=0.9, **kw),
        "fedmedian": FedMedian,
        "fedtrimmedavg": lambda **kw: _tolerating(
            FedTrimmedAvg(beta=config.byzantine_fraction, **kw), byzantine
        ),
        "fedyogi": FedYogi,
        "krum": lambda **kw: Krum(num_malicious_nodes=byzantine, **kw),
        "multikrum": lambda **kw: _tolerating(
            MultiKrum(
                num_malicious_nodes=byzantine,
                num_nodes_to_select=max(1, per_round - byzantine),
                **kw,
            ),
            byzantine,
        ),
        "normbounded": lambda **kw: NormBoundedFedAvg(norm_bound=config.norm_bound, **kw),
    }


#: Attribute holding how many malicious clients a robust rule is sized for.
_BYZANTINE = "fedpriv_byzantine"


def _tolerating(strategy: Strategy, byzantine: int) -> Strategy:
    setattr(strategy, _BYZANTINE, byzantine)
    return strategy


def fit_to_replies(strategy: Strategy, replies: int) -> None:
    """Size the strategy for the ``replies`` about to be aggregated (fewer than sampled when
    some were rejected, failed or timed out).

    A client-level DP wrapper calibrates its noise to them (std ``z * clip / replies``);
    MultiKrum keeps ``replies - f`` updates (not ``sampled - f``, which would let an
    attacker in); the trimmed mean trims ``f`` values per side (its ``beta`` is a fraction
    of the values it is given).
    """
    if replies < 1:
        return
    if hasattr(strategy, "num_sampled_clients"):  # Flower's DP wrappers
        strategy.num_sampled_clients = replies
    byzantine = getattr(strategy, _BYZANTINE, None)
    if byzantine is None:
        return
    if isinstance(strategy, MultiKrum) and not isinstance(strategy, Krum):
        strategy.num_nodes_to_select = max(1, replies - byzantine)
    if isinstance(strategy, FedTrimmedAvg):
        strategy.beta = min(0.49, (byzantine + 0.5) / replies) if byzantine else 0.0


def build_strategy(config: RunConfig) -> Strategy:
    """The strategy named by ``config.strategy``, sized for ``config.num_clients``.

    Under client-level DP the clients' updates are averaged with equal weights
    (the noise is calibrated to a plain mean); the caller wraps the result in
    a DP wrapper (:func:`fedpriv.server.client_dp.wrap_client_dp`).
    """
    per_round = max(1, math.floor(config.min_available_nodes * config.fraction_train))
    try:
        factory = _factories(config, per_round)[config.strategy]
    except KeyError:
        raise ConfigError(
            f"unknown strategy '{config.strategy}'; choose one of: {', '.join(STRATEGIES)}"
        ) from None
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
