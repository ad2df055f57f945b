"""Norm-bounded FedAvg: FedAvg of client updates each clipped to an L2 norm bound.

A defence against scaled (model-replacement) updates (Sun et al. 2019, "Can You
Really Backdoor Federated Learning?"): no single client can move the global
model by more than ``norm_bound`` times its weight share. Clipping is the same
operation as Flower's server-side DP clipping, without the noise.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.differential_privacy import compute_clip_model_update


class NormBoundedFedAvg(FedAvg):
    """FedAvg over updates clipped to ``norm_bound`` (L2, over all tensors of a reply).

    Args:
        norm_bound: the largest update norm a client may contribute (> 0).
        **kwargs: FedAvg's own settings.
    """

    def __init__(self, *, norm_bound: float, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not norm_bound > 0:
            raise ValueError(f"norm_bound must be > 0, got {norm_bound}")
        self.norm_bound = norm_bound
        self._current = ArrayRecord()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                continue
            record = reply.content.array_records[self.arrayrecord_key]
            names = list(record.keys())
            new = record.to_numpy_ndarrays()
            # Clients may leave frozen tensors out: clip what they sent.
            current = [self._current[name].numpy() for name in names]
            norm = float(
                np.sqrt(sum(np.sum((n - c) ** 2) for n, c in zip(new, current, strict=True)))
            )
            if norm > self.norm_bound:  # (a zero update needs no clipping, nor a division by 0)
                compute_clip_model_update(new, current, self.norm_bound)
            reply.content[self.arrayrecord_key] = ArrayRecord(
                {name: Array(np.asarray(v)) for name, v in zip(names, new, strict=True)}
            )
        return super().aggregate_train(server_round, replies)
