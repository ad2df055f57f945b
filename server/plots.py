"""The run's picture: test accuracy and cumulative epsilon, round by round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from server.loop import RoundRecord  # noqa: E402


def plot_accuracy_epsilon(
    records: list[RoundRecord], path: Path, *, title: str, epsilon_label: str | None
) -> Path:
    """Two panels: central test accuracy; max and mean cumulative client epsilon.

    ``epsilon_label`` (e.g. "cumulative, δ=1e-05, RDP") names the guarantee;
    ``None`` means DP was off and the epsilon panel says so.
    """
    rounds = [r.round for r in records]
    fig, (ax_acc, ax_eps) = plt.subplots(1, 2, figsize=(10, 4))
    acc = [r.test_accuracy for r in records]
    ax_acc.plot(rounds, [a if a is not None else float("nan") for a in acc], marker="o")
    ax_acc.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title="Global model")
    ax_acc.grid(alpha=0.3)
    if epsilon_label is None:
        ax_eps.text(0.5, 0.5, "no DP: no privacy guarantee", ha="center", va="center")
        ax_eps.set_axis_off()
    else:
        for attr, label in (("epsilon_max", "max over clients"), ("epsilon_mean", "mean")):
            values = [getattr(r, attr) for r in records]
            ax_eps.plot(
                rounds,
                [v if v is not None else float("nan") for v in values],
                marker="o",
                label=label,
            )
        ax_eps.set(
            xlabel="round", ylabel=f"client ε ({epsilon_label})", title="Client privacy spent"
        )
        ax_eps.legend()
        ax_eps.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
