"""Privacy/utility of the text models: test accuracy at epsilon 1, 3, 8 and
without DP, from scratch and from a checkpoint pretrained on public text.

Every cell is one real `fedpriv-sim` federation (Flower simulation on Ray,
Opacus DP-SGD, example-level DP per client, cumulative epsilon at delta 1e-5,
RDP accountant). The no-DP column is the baseline each epsilon is compared
with, measured in the same run. Writes the table into docs/benchmarks.md
between markers, and prints it.

    python benchmarks/text_privacy_utility.py            # full table (~30 min on 2 cores)
    python benchmarks/text_privacy_utility.py --quick    # 1 combination, 2 rounds (smoke test)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from shared_models.config import DPConfig, RunConfig
from simulations.cli import configure_logging, simulate
from simulations.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- text-privacy-utility:start -->", "<!-- text-privacy-utility:end -->"
COMBOS = [("lstm", "sotu"), ("transformer", "sotu"), ("transformer", "sentiment")]
EPSILONS: list[float | None] = [1.0, 3.0, 8.0, None]  # None: no DP (the baseline)
# Client and pretraining SGD learning rates: the Transformer diverges at the LSTM's 1.0.
LEARNING_RATES = {"lstm": 1.0, "transformer": 0.3}


def run_cell(
    model: str, task: str, epsilon: float | None, checkpoint: Path | None, args, work: Path
) -> tuple[float, float, float | None]:
    """One federation; returns (test accuracy, wall seconds, max client epsilon)."""
    dp = (
        DPConfig(enabled=False, target_epsilon=None)
        if epsilon is None
        else DPConfig(target_epsilon=epsilon)
    )
    config = RunConfig(
        model=model,
        dataset=task,
        num_clients=args.clients,
        rounds=args.rounds,
        partitioning="natural",
        fraction_evaluate=0.0,
        local_epochs=2,
        learning_rate=LEARNING_RATES[model],
        init_checkpoint=str(checkpoint) if checkpoint else "",
        seed=0,
        dp=dp,
    )
    tag = f"{model}-{task}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}"
    tag += "-pre" if checkpoint else "-scratch"
    started = time.monotonic()
    summary = simulate(config, work / tag)
    return summary["test_accuracy"], time.monotonic() - started, summary["privacy"]["epsilon_max"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one combination, 2 rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4, help="natural clients per task")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument(
        "--only",
        action="append",
        metavar="MODEL:TASK",
        help="run only these combinations, e.g. --only lstm:sotu (repeatable)",
    )
    args = parser.parse_args()
    configure_logging(verbose=False)
    logging.getLogger("server").setLevel(logging.WARNING)  # one line per cell, not per round
    combos, epsilons = (COMBOS[:1], [8.0, None]) if args.quick else (COMBOS, EPSILONS)
    if args.only:
        combos = [tuple(item.split(":", 1)) for item in args.only]
    if args.quick:
        args.rounds = 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-") as tmp:
        work = Path(tmp)
        for model, task in combos:
            started = time.monotonic()
            ckpt = pretrain(
                model=model,
                task=task,
                out=work / f"{model}-{task}.safetensors",
                epochs=args.pretrain_epochs,
                learning_rate=LEARNING_RATES[model],
            )
            print(
                f"pretrained {model} for {task}: Brown held-out next-char accuracy "
                f"{ckpt.heldout_accuracy:.3f} in {time.monotonic() - started:.0f}s",
                flush=True,
            )
            for init, checkpoint in (("scratch", None), ("pretrained", ckpt.path)):
                cells = {}
                for epsilon in epsilons:
                    acc, seconds, spent = run_cell(model, task, epsilon, checkpoint, args, work)
                    cells[epsilon] = (acc, seconds, spent)
                    label = "no DP" if epsilon is None else f"eps {epsilon:g} (spent {spent:.3f})"
                    print(
                        f"{model:11s} {task:9s} {init:10s} {label:22s} accuracy {acc:.3f} "
                        f"{seconds:.0f}s",
                        flush=True,
                    )
                rows.append((model, task, init, cells))
    table = render(rows, epsilons, args)
    print(table)
    if not args.quick:
        write_section(table)


def render(rows, epsilons, args) -> str:
    head = (
        ["model", "task", "start"]
        + ["no DP" if e is None else f"ε={e:g}" for e in epsilons]
        + ["wall time (all cells)"]
    )
    lines = [
        f"{args.clients} natural clients, {args.rounds} rounds, FedAvg, 2 local epochs, SGD lr "
        f"{LEARNING_RATES} (clients and pretraining); test accuracy on the central held-out "
        "split. ε is each client's cumulative "
        "example-level budget at δ=1e-5 (RDP); the spent ε is within 0.01 of it. In brackets: "
        "accuracy relative to the no-DP baseline of the same row.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for model, task, init, cells in rows:
        base = cells[None][0] if None in cells else None
        values = []
        for e in epsilons:
            acc = cells[e][0]
            rel = f" ({acc / base:.2f}x)" if base and acc is not None and e is not None else ""
            values.append(f"{_fmt(acc)}{rel}")
        total = sum(c[1] for c in cells.values())
        lines.append(f"| {model} | {task} | {init} | " + " | ".join(values) + f" | {total:.0f}s |")
    return "\n".join(lines)


def _fmt(accuracy: float | None) -> str:
    # The run folder stores a non-finite accuracy as null: the model diverged (NaN weights).
    return "diverged" if accuracy is None else f"{accuracy:.3f}"


def write_section(table: str) -> None:
    body = (
        f"{START}\n## Text models: privacy vs utility\n\n"
        f"Produced by `python benchmarks/text_privacy_utility.py {' '.join(sys.argv[1:])}` on "
        f"{time.strftime('%Y-%m-%d')} (2 CPU cores, no GPU).\n\n{table}\n{END}"
    )
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in text:
        text = text[: text.index(START)] + body + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
