"""The run config: parsed once, validated, round-trips through run_config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedpriv.shared_models.config import DPConfig, RunConfig
from fedpriv.shared_models.errors import ConfigError


def test_round_trip_through_flat_run_config():
    config = RunConfig(rounds=3, dp=DPConfig(noise_multiplier=1.1, target_epsilon=None))
    assert RunConfig.from_run_config(config.to_run_config()) == config
    no_dp = RunConfig(dp=DPConfig(enabled=False, target_epsilon=None))
    assert RunConfig.from_run_config(no_dp.to_run_config()) == no_dp


def test_pyproject_flwr_config_lists_every_setting_at_its_default():
    # `flwr run --run-config` only accepts keys listed there, so all must be.
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    flwr_config = pyproject["tool"]["flwr"]["app"]["config"]
    # one exception: num-clients 0 means "the federation's SuperNodes" under `flwr run .`
    assert flwr_config["num-clients"] == 0
    assert {**flwr_config, "num-clients": 10} == RunConfig().to_run_config()
    assert RunConfig.from_run_config({**flwr_config, "num-clients": 10}) == RunConfig()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rounds": 0}, "rounds must be an integer >= 1"),
        ({"fraction_train": 0.0}, "fraction-train must be in"),
        ({"fraction_evaluate": 1.5}, "fraction-evaluate must be in \\[0, 1\\]"),
        ({"learning_rate": -1.0}, "learning-rate must be > 0"),
        ({"strategy": "fedprox"}, "unknown strategy 'fedprox'"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_run_settings_are_refused_with_their_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, "target epsilon must be a positive number"),
        ({"target_epsilon": -1.0}, "target epsilon must be a positive number"),
        ({"target_epsilon": float("inf")}, "target epsilon must be a positive number"),
        ({"noise_multiplier": 0.0}, "noise multiplier must be > 0"),
        ({"target_epsilon": None}, "needs a target epsilon or a noise multiplier"),
        ({"delta": 0.0}, "delta must be in"),
        ({"delta": 1.0}, "delta must be in"),
        ({"max_grad_norm": 0.0}, "max grad norm"),
        ({"accountant": "gdp"}, "unknown accountant"),
    ],
)
def test_impossible_privacy_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DPConfig(**kwargs)


def test_unknown_and_mistyped_run_config_keys_are_refused():
    with pytest.raises(ConfigError, match="unknown setting 'roundz'"):
        RunConfig.from_run_config({"roundz": 3})
    with pytest.raises(ConfigError, match="setting 'rounds' must be int"):
        RunConfig.from_run_config({"rounds": "three"})
    with pytest.raises(ConfigError, match="setting 'dp' must be bool"):
        RunConfig.from_run_config({"dp": 1})
