"""Faulty and malicious simulated clients, for testing what the coordinator withstands.

``fedpriv-sim --faults nan:1,signflip:2`` makes some simulated clients misbehave:
after a faulty client trains honestly, a Flower mod rewrites its reply. The last
partition ids get the faults, in the order given; the rest stay honest.

Kinds:

- ``nan``: the first tensor of the update is all NaN.
- ``shape``: the first tensor is sent with one row missing.
- ``huge``: the update (reply minus global weights) is multiplied by 10^6.
- ``scale``: the update is multiplied by ``scale`` (a boosted, model-replacement
  style update, Bagdasaryan et al. 2020).
- ``signflip``: the update is multiplied by ``-scale`` (pushes the model away
  from where honest clients take it).
- ``crash``: the client raises instead of replying (Flower sends an error reply).
- ``hang``: the client sleeps ``hang_seconds`` before it trains (past a short
  ``--round-timeout``, the round goes on without it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.messages import ARRAYS_KEY

logger = logging.getLogger(__name__)

FAULT_KINDS: tuple[str, ...] = ("nan", "shape", "huge", "scale", "signflip", "crash", "hang")


@dataclass(frozen=True)
class FaultPlan:
    """Which simulated clients misbehave, and how.

    Args:
        faults: partition id -> fault kind.
        scale: the factor of ``scale`` and ``signflip`` updates.
    """

    faults: dict[int, str]
    scale: float = 10.0
    hang_seconds: float = 45.0

    @classmethod
    def parse(cls, spec: str, num_clients: int, scale: float = 10.0) -> FaultPlan:
        """``"nan:1,signflip:2"``: one NaN client and two sign-flippers, the last partition ids."""
        faults: dict[int, str] = {}
        next_id = num_clients - 1
        for part in filter(None, (p.strip() for p in spec.split(","))):
            kind, _, count_text = part.partition(":")
            if kind not in FAULT_KINDS:
                raise ConfigError(
                    f"unknown fault '{kind}' in --faults; choose from: {', '.join(FAULT_KINDS)}"
                )
            try:
                count = int(count_text or "1")
            except ValueError:
                raise ConfigError(
                    f"--faults: '{part}' needs a whole count, e.g. {kind}:2"
                ) from None
            if count < 1:
                raise ConfigError(f"--faults: '{part}' needs a count >= 1")
            for _ in range(count):
                if next_id < 0:
                    raise ConfigError(
                        f"--faults '{spec}' names more faulty clients than --clients {num_clients}"
                    )
                faults[next_id] = kind
                next_id -= 1
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"--fault-scale must be > 0, got {scale}")
        return cls(faults=faults, scale=scale)

    def describe(self) -> str:
        kinds: dict[str, list[int]] = {}
        for pid, kind in sorted(self.faults.items()):
            kinds.setdefault(kind, []).append(pid)
        return ", ".join(
            f"{kind} (clients {', '.join(map(str, ids))})" for kind, ids in kinds.items()
        )

    def mod(self) -> Mod:
        """The Flower mod that makes this plan's clients misbehave."""

        def faulty_clients_mod(
            msg: Message, context: Context, call_next: ClientAppCallable
        ) -> Message:
            kind = self.faults.get(int(context.node_config.get("partition-id", -1)))  # type: ignore[arg-type]
            if kind is None or msg.metadata.message_type != "train":
                return call_next(msg, context)
            if kind == "crash":
                raise RuntimeError("simulated client crash (--faults crash)")
            if kind == "hang":
                time.sleep(self.hang_seconds)
            sent = msg.content.array_records[ARRAYS_KEY]
            reply = call_next(msg, context)
            if reply.has_error():
                return reply
            arrays = reply.content.array_records[ARRAYS_KEY]
            reply.content[ARRAYS_KEY] = ArrayRecord(_corrupt(kind, arrays, sent, self.scale))
            return reply

        return faulty_clients_mod


def _corrupt(kind: str, arrays: ArrayRecord, sent: ArrayRecord, scale: float) -> dict[str, Array]:
    names = list(arrays.keys())
    new = {name: arrays[name].numpy().copy() for name in names}
    first = names[0]
    if kind == "nan":
        new[first] = np.full_like(new[first], np.nan)
    elif kind == "shape":
        new[first] = new[first][:-1]
    else:
        factor = {"huge": 1e6, "scale": scale, "signflip": -scale}[kind]
        for name in names:
            base = sent[name].numpy()
            if new[name].dtype.kind == "f":
                new[name] = (base + factor * (new[name] - base)).astype(new[name].dtype)
    return {name: Array(value) for name, value in new.items()}
