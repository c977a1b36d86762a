"""Config loading: YAML < environment < key=value overrides; unknown keys and bad types rejected clearly."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from training.artifact.config import StrictModel, load_config
from training.artifact.errors import ConfigError


class Lora(StrictModel):
    r: int = Field(8, gt=0)
    alpha: float = 16.0
    targets: list[str] = ["q_proj", "v_proj"]


class Demo(StrictModel):
    method: Literal["lora", "full"] = "lora"
    lr: float = Field(1e-4, gt=0)
    epochs: int = 1
    lora: Lora = Lora()


def test_defaults_yaml_env_overrides_precedence(tmp_path, monkeypatch):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.001\nepochs: 3\nlora:\n  r: 4\n")
    monkeypatch.setenv("TUNESERVE_DEMO__EPOCHS", "5")
    monkeypatch.setenv("TUNESERVE_DEMO__LORA__ALPHA", "32")
    cfg = load_config(Demo, cfg_file, ["lora.r=16", "lora.targets=[q_proj,k_proj]"], env_prefix="TUNESERVE_DEMO__")
    assert cfg.lr == 0.001  # yaml
    assert cfg.epochs == 5  # env beats yaml
    assert cfg.lora.alpha == 32.0
    assert cfg.lora.r == 16  # cli beats all
    assert cfg.lora.targets == ["q_proj", "k_proj"]
    assert cfg.method == "lora"  # default


def test_cli_beats_env(monkeypatch):
    monkeypatch.setenv("TUNESERVE_DEMO__EPOCHS", "5")
    assert load_config(Demo, None, ["epochs=7"], env_prefix="TUNESERVE_DEMO__").epochs == 7


def test_unknown_key_lists_allowed():
    with pytest.raises(ConfigError) as info:
        load_config(Demo, None, ["lora.rank=4"])
    text = str(info.value)
    assert "lora.rank: unknown key" in text and "alpha, r, targets" in text


def test_bad_type_names_field_value_and_allowed():
    with pytest.raises(ConfigError) as info:
        load_config(Demo, None, ["method=qlora2", "lr=-1"])
    text = str(info.value)
    assert "method = 'qlora2'" in text and "'lora' or 'full'" in text
    assert "lr = -1" in text and "greater than 0" in text


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(Demo, None, ["epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Demo, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(Demo, bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Demo, broken)
