"""Resuming a run that stopped: its own settings, its newest checkpoint, checked first.

``fedpriv-sim --resume RUN_DIR`` and ``fedpriv-server start DIR --resume
RUN_DIR`` both go through :func:`prepare_resume` before anything starts: the
run's settings come from its ``config.json`` (only where/how flags may be
given again), and the newest round checkpoint must belong to that run and
model. A corrupt or foreign checkpoint is refused with one line naming the
file, and nothing is changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from fedpriv.server.central_data import CentralData, CentralDataFn
from fedpriv.server.loop import RoundRecord
from fedpriv.server.model_init import initial_model
from fedpriv.server.round_checkpoint import RoundState, load_latest
from fedpriv.server.run_folder import RunFolder
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.errors import ConfigError


def resume_config(run_dir: Path, **overrides: object) -> RunConfig:
    """The settings of the run in ``run_dir``, set to resume it (``overrides``: e.g. device)."""
    folder = RunFolder.open_existing(run_dir)
    return dataclasses.replace(
        saved_run_config(folder),
        resume=str(folder.path),
        run_dir=str(folder.path),
        **overrides,  # type: ignore[arg-type]
    )


def prepare_resume(
    run_dir: Path, load_central: CentralDataFn, **overrides: object
) -> tuple[RunConfig, CentralData]:
    """Everything a command checks before it resumes ``run_dir``; changes nothing.

    Returns the run's settings (set to resume) and its central data.

    Raises:
        ConfigError, DataError: not a run folder, settings or model that differ,
            a corrupt or foreign checkpoint.
    """
    config = resume_config(run_dir, **overrides)
    central = load_central(config)
    model, _ = initial_model(config, central)
    check_resume(
        RunFolder.open_existing(Path(config.resume)),
        config,
        model,
        central.model_config.to_dict(),
    )
    return config, central


def saved_run_config(folder: RunFolder, saved: dict | None = None) -> RunConfig:
    """The run settings in ``folder``'s config.json (``saved``: its content, if read already)."""
    try:
        return RunConfig.from_run_config((saved or folder.read_config())["run"])
    except (KeyError, TypeError, ConfigError) as err:
        raise ConfigError(
            f"{folder.path / 'config.json'} holds no valid run settings: {err}"
        ) from None


def check_resume(
    folder: RunFolder, cfg: RunConfig, model: nn.Module, model_config: dict
) -> RoundState:
    """The newest checkpoint of ``folder``, after checking it belongs to this run and model.

    Changes nothing: the commands call it up front, before anything starts.
    """
    saved = folder.read_config()
    if saved_run_config(folder, saved).identity() != cfg.identity():
        raise ConfigError(
            f"the settings differ from those {folder.path} was started with; resume with the "
            "run's own settings"
        )
    if saved.get("model") != model_config:
        raise ConfigError(f"{folder.path} was run with another model: refusing to resume")
    state = load_latest(folder.path, run_config=cfg.identity(), model_config=model_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.arrays.items()}
    if expected != found:
        raise ConfigError(f"checkpoint {state.path} does not fit the model: refusing to resume")
    return state


def record_from_row(row: dict) -> RoundRecord:
    """A round's record, back from its ``metrics.jsonl`` row."""
    names = {f.name for f in dataclasses.fields(RoundRecord)}
    return RoundRecord(**{k: v for k, v in row.items() if k in names})
