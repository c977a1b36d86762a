"""Learning curve: nested seeded fractions, the 95 % rule on a planted curve, intervals, the augmentation arm
(training replaced by a stub that scores the rows it was given, so the wiring is tested in milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from training.artifact.config import load_config
from training.train import learning_curve as lc


def test_fractions_are_nested_and_seeded():
    a = lc.nested_subsets(1000, [0.05, 0.1, 0.5, 1.0], seed=3)
    assert [len(a[f]) for f in (0.05, 0.1, 0.5, 1.0)] == [50, 100, 500, 1000]
    assert set(a[0.05]) <= set(a[0.1]) <= set(a[0.5]) <= set(a[1.0]) == set(range(1000))
    assert a == lc.nested_subsets(1000, [0.05, 0.1, 0.5, 1.0], seed=3)
    assert a[0.1] != lc.nested_subsets(1000, [0.1], seed=4)[0.1]
    assert len(lc.nested_subsets(10, [0.01], 0)[0.01]) == 1  # never empty


def test_smallest_fraction_reaching_95_percent_on_a_planted_curve():
    points = [{"fraction": f, "mean": m} for f, m in ((1.0, 0.90), (0.05, 0.40), (0.25, 0.86), (0.1, 0.70), (0.5, 0.89))]
    hit = lc.smallest_reaching(points, 0.95)
    assert hit["fraction"] == 0.25 and hit["threshold"] == pytest.approx(0.855)
    assert lc.smallest_reaching(points, 0.98)["fraction"] == 0.5
    assert lc.smallest_reaching(points, 0.99)["fraction"] == 1.0
    assert lc.smallest_reaching([{"fraction": 1.0, "mean": 0.5}], 0.95)["fraction"] == 1.0


def test_no_95_percent_point_without_the_full_data_run():
    cfg = lc.CurveConfig(fractions=[0.1, 0.5, 1.0])
    runs = [{"fraction": f, "seed": 0, "arm": "plain", "train_rows": int(f * 100), "metric": "test_accuracy", "value": v}
            for f, v in ((0.1, 0.3), (0.5, 0.6))]
    report = lc.summarize(runs, cfg)
    assert report["smallest_fraction_reaching_target"] is None and report["missing_fractions"] == [1.0]


def test_t_interval():
    mean, low, high = lc.t_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and low < 0.5 and high > 0.7 and high - mean == pytest.approx(mean - low)
    assert lc.t_interval([0.3]) == (0.3, 0.3, 0.3)


def _stub_train(calls):
    """Accuracy grows with the number of distinct train rows; augmented copies add a fixed 0.01."""
    def train(cfg):
        rows = [json.loads(x) for x in (Path(cfg.data.path) / "train.jsonl").read_text().splitlines()]
        meta = json.loads((Path(cfg.data.path) / "dataset.json").read_text())
        test = (Path(cfg.data.path) / "test.jsonl").read_text().splitlines()
        assert cfg.data.label_field is None and cfg.data.max_rows is None  # subsets hold {text, label} rows
        calls.append({"rows": rows, "labels": meta["labels"], "test": len(test), "seed": cfg.seed})
        plain = [r for r in rows if not r.get("augmented")]
        value = min(0.9, 0.3 + len(plain) / 200) + (0.01 if len(plain) < len(rows) else 0.0)
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        manifest = SimpleNamespace(metrics={"test_accuracy": value}, wall_time_seconds=1.0, trainable_parameters=10)
        return SimpleNamespace(manifest=manifest, artifact=Path(cfg.output))
    return train


@pytest.fixture
def data(tmp_path):
    words = ["card arrived late today", "exchange rate looks wrong", "top up has failed again", "refund not showing"]
    rows = [{"text": f"{words[i % 4]} number {i}", "label": f"L{i % 4}"} for i in range(400)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
    return tmp_path


def test_curve_runs_fractions_and_reports(monkeypatch, data, tmp_path):
    import training.train.run as run_module

    calls = []
    monkeypatch.setattr(run_module, "train", _stub_train(calls))
    cfg = load_config(lc.CurveConfig, None, [f"train.data.path={data}", "train.task=classification",
                                             "fractions=[1.0,0.1,0.5]", "seeds=2",
                                             "small_fraction=0.2", "test_rows=10", f"output={tmp_path / 'curve'}"])
    report = lc.run_curve(cfg)
    assert [(p["fraction"], p["n_seeds"]) for p in report["curves"]["plain"]] == [(0.1, 2), (0.5, 1), (1.0, 1)]
    assert all(c["labels"] == ["L0", "L1", "L2", "L3"] and c["test"] == 10 for c in calls)
    assert report["smallest_fraction_reaching_target"]["fraction"] == 0.5  # 0.9 at 180+ rows; 0.1 -> ~0.48
    paths = report["paths"]
    assert Path(paths["png"]).stat().st_size > 1000 and "Smallest fraction" in Path(paths["md"]).read_text()
    assert not list((tmp_path / "curve" / "runs").iterdir())  # artifacts and subsets are removed


def test_augmentation_arm_is_paired_with_an_interval(monkeypatch, data, tmp_path):
    import training.train.run as run_module

    calls = []
    monkeypatch.setattr(run_module, "train", _stub_train(calls))
    cfg = load_config(lc.CurveConfig, None, [f"train.data.path={data}", "train.task=classification",
                                             "fractions=[0.1]", "seeds=3", "compare=augmentation",
                                             f"output={tmp_path / 'aug'}"])
    report = lc.run_curve(cfg)
    augmented = [c for c in calls if any(r.get("augmented") for r in c["rows"])]
    assert len(calls) == 6 and len(augmented) == 3
    effect = report["augmentation"][0]
    assert effect["n_seeds"] == 3 and effect["mean"] == pytest.approx(0.01) and effect["low"] == pytest.approx(0.01)
    assert "Augmentation" in Path(report["paths"]["md"]).read_text()


def test_train_file_becomes_the_train_section():
    from tuneserve.commands.baseline import _train_file_override
    from tuneserve.commands.common import load_cli_config

    args = _train_file_override(["train=training/configs/classify-minilm.yaml", "train.epochs=1", "seeds=2"])
    cfg = load_cli_config(lc.CurveConfig, args, lc.ENV_PREFIX)
    assert cfg.train.base == "all-minilm-l6-v2" and cfg.train.lora.r == 16 and cfg.train.epochs == 1 and cfg.seeds == 2
