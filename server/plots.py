"""The run's picture: test accuracy and cumulative epsilon, round by round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedpriv.server.loop import RoundRecord  # noqa: E402


def plot_accuracy_epsilon(
    records: list[RoundRecord],
    path: Path,
    *,
    title: str,
    epsilon_label: str | None,
    client_epsilon_label: str | None = None,
) -> Path:
    """Two panels: central test accuracy; cumulative epsilon.

    The epsilon panel has the clients' example-level epsilon (max and mean)
    when ``epsilon_label`` (e.g. "example-level, cumulative, δ=1e-05, RDP")
    is given, and the federation's client-level epsilon when
    ``client_epsilon_label`` is; with neither, DP was off and the panel says so.
    """
    rounds = [r.round for r in records]
    fig, (ax_acc, ax_eps) = plt.subplots(1, 2, figsize=(10, 4))
    acc = [r.test_accuracy for r in records]
    ax_acc.plot(rounds, [a if a is not None else float("nan") for a in acc], marker="o")
    ax_acc.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title="Global model")
    ax_acc.grid(alpha=0.3)
    curves = []
    if epsilon_label is not None:
        curves += [
            ("epsilon_max", f"client ε, max over clients [{epsilon_label}]"),
            ("epsilon_mean", "client ε, mean over clients"),
        ]
    if client_epsilon_label is not None:
        curves.append(("client_epsilon", f"federation ε [{client_epsilon_label}]"))
    if not curves:
        ax_eps.text(0.5, 0.5, "no DP: no privacy guarantee", ha="center", va="center")
        ax_eps.set_axis_off()
    else:
        for attr, label in curves:
            values = [getattr(r, attr) for r in records]
            ax_eps.plot(
                rounds,
                [v if v is not None else float("nan") for v in values],
                marker="o",
                label=label,
            )
        ax_eps.set(xlabel="round", ylabel="cumulative ε", title="Privacy spent")
        ax_eps.legend(fontsize=7)
        ax_eps.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
