"""Evaluation per declared slice: slice membership on prepared rows, the gap bootstrap, the report sections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.artifact.config import load_config
from training.data import DataConfig, prepare
from training.data.slices import SliceMembership, resolve_slice_key
from training.evaluation.datasets import load_eval_data
from training.evaluation.fairness import FairnessOptions, slice_report
from training.evaluation.metrics import slice_gap_bootstrap
from training.evaluation.predictions import ClassPrediction
from training.evaluation.report import read_eval_report
from training.evaluation.runner import EvalConfig, evaluate
from training.artifact.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def planted_rows(n_per_group: int = 40) -> tuple[list[dict], list[float]]:
    """Group a scores 1 on every row, group b on every other row: a gap of exactly 0.5."""
    rows, scores = [], []
    for i in range(n_per_group):
        rows += [{"text": f"a{i}", "label": "x", "slices": {"column:group": "a"}},
                 {"text": f"b{i}", "label": "x", "slices": {"column:group": "b"}}]
        scores += [1.0, float(i % 2)]
    return rows, scores


def test_gap_bootstrap_on_a_planted_gap():
    rows, scores = planted_rows()
    groups = [r["slices"]["column:group"] for r in rows]
    boot = slice_gap_bootstrap(scores, groups, n_resamples=500, seed=3)
    assert boot["gap"] == pytest.approx(0.5) and (boot["best"], boot["worst"]) == ("a", "b")
    assert boot["groups"] == {"a": 1.0, "b": 0.5}
    assert boot["low"] < 0.5 < boot["high"] and boot["high"] - boot["low"] < 0.5
    same = slice_gap_bootstrap(scores, groups, n_resamples=200, scores_b=scores)["paired"]
    assert same["delta"] == 0 and same["low"] == 0 and same["high"] == 0  # identical models: the same draws
    fair = [1.0] * len(scores)
    better = slice_gap_bootstrap(scores, groups, n_resamples=200, scores_b=fair)["paired"]
    assert better["delta"] == pytest.approx(-0.5) and better["high"] < 0
    with pytest.raises(ValueError):
        slice_gap_bootstrap(scores, ["a"] * len(scores))


def test_slice_report_metric_per_group_gap_and_flags():
    rows, scores = planted_rows()
    rows.append({"text": "c", "label": "x", "slices": {"column:group": "c"}})  # a group too small for the gap
    scores.append(0.0)
    report = slice_report(rows, {"accuracy": scores}, "classification", FairnessOptions(threshold=0.2, min_rows=5),
                          n_resamples=200)
    entry = report["slices"][0]
    assert {g["group"]: (g["n"], g["accuracy"]) for g in entry["groups"]} == {"a": (40, 1.0), "b": (40, 0.5),
                                                                            "c": (1, 0.0)}
    assert entry["gap"] == pytest.approx(0.5) and entry["worst"] == "b" and entry["flagged"]
    assert entry["worst_shortfall"] == pytest.approx(report["overall"] - 0.5)
    assert report["flags"] and "column:group" in report["flags"][0]
    calm = slice_report(rows, {"accuracy": scores}, "classification", FairnessOptions(threshold=0.6, min_rows=5))
    assert not calm["flags"] and not calm["slices"][0]["flagged"]
    assert slice_report([{"text": "t"}], {"accuracy": [1.0]}, "classification", FairnessOptions()) == {}


def test_prepare_stores_slices_and_old_datasets_still_load(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("text,label,group\n" + "".join(
        f"ticket {i} about my {'refund' if i % 3 == 0 else 'parcel'} number {i * 7},l{i % 2},g{i % 2}\n"
        for i in range(60)))
    base = {"sources": [{"path": str(csv)}], "task": "classification"}
    out = prepare(load_config(DataConfig, None, [f"output.dir={tmp_path / 'with'}", "output.plots=false",
                                                 "bias.slices=[group]", "bias.keywords={money: [refund]}"],
                              base=base)).path
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["slices"] == ["column:group", "keywords:money"]
    data = load_eval_data(out)
    for row in data.rows:
        assert row["slices"]["column:group"] == f"g{row['label'][1]}"
        assert row["slices"]["keywords:money"] == ("yes" if "refund" in row["text"] else "no")
    old = prepare(load_config(DataConfig, None, [f"output.dir={tmp_path / 'without'}", "output.plots=false"],
                              base=base)).path
    assert "slices" not in json.loads((old / "dataset.json").read_text())
    plain = load_eval_data(old)
    assert all("slices" not in r for r in plain.rows)
    extra = load_eval_data(old, slices=SliceMembership([], {"money": ["refund"]}))
    assert {r["slices"]["keywords:money"] for r in extra.rows} == {"yes", "no"}


def test_resolve_slice_key():
    keys = ["column:group", "keywords:money"]
    assert resolve_slice_key("group", keys) == "column:group"
    assert resolve_slice_key("keywords:money", keys) == "keywords:money"
    with pytest.raises(ConfigError, match="unknown"):
        resolve_slice_key("gender", keys)
    with pytest.raises(ConfigError, match="no slices"):
        resolve_slice_key("group", [])


class AlwaysX:
    """A predictor that answers `x` to everything: right on group a's rows, wrong on half of group b's."""

    name = "always-x"
    info = {"kind": "test"}

    def classify(self, texts):
        return [ClassPrediction("x", {"x": 0.9, "y": 0.1}) for _ in texts]

    def close(self):
        pass


def test_evaluate_writes_slice_tables_and_flags(tmp_path):
    raw = tmp_path / "test.jsonl"
    raw.write_text("".join(json.dumps({"text": f"row {i}", "label": "x" if i % 4 else "y", "group": "ab"[i % 2]}) + "\n"
                           for i in range(80)))
    cfg = load_config(EvalConfig, None, [f"data={raw}", "task=classification", f"out={tmp_path / 'ev'}",
                                         "fairness.columns=[group]", "fairness.threshold=0.1",
                                         "bootstrap_resamples=200"])
    result, out = evaluate(cfg, predictor=AlwaysX(), progress=False)
    entry = result.fairness["slices"][0]
    assert {g["group"]: g["accuracy"] for g in entry["groups"]} == {"a": 0.5, "b": 1.0}
    assert entry["gap"] == pytest.approx(0.5) and entry["flagged"]
    assert any("slice flag" in note for note in result.notes)
    md = (out / "eval_report.md").read_text()
    assert "## Slices" in md and "Worst-slice gap" in md and "**flag**" in md
    assert "Worst-slice gap" in (out / "eval_report.html").read_text()
    again = read_eval_report(out)
    assert again.fairness["slices"][0]["gap"] == pytest.approx(0.5)
    assert again.samples[0]["slices"] == {"column:group": "a"}
    legacy = json.loads((out / "eval_report.json").read_text())
    legacy.pop("fairness")  # a report written before slices existed still reads
    (out / "eval_report.json").write_text(json.dumps(legacy))
    assert read_eval_report(out).fairness == {}


def test_compare_gives_a_paired_interval_of_the_gap(tmp_path):
    from training.evaluation.compare import compare_results, write_compare_report

    raw = tmp_path / "test.jsonl"
    raw.write_text("".join(json.dumps({"text": f"row {i}", "label": "x" if i % 4 else "y", "group": "ab"[i % 2]}) + "\n"
                           for i in range(80)))

    class Oracle(AlwaysX):
        name = "oracle"

        def classify(self, texts):
            return [ClassPrediction("y" if int(t.split()[1]) % 4 == 0 else "x", {"x": 0.5, "y": 0.5}) for t in texts]

    cfg = load_config(EvalConfig, None, [f"data={raw}", "task=classification", "fairness.columns=[group]",
                                         "bootstrap_resamples=200"])
    a, _ = evaluate(cfg.model_copy(update={"out": str(tmp_path / "a")}), predictor=AlwaysX(), progress=False)
    b, _ = evaluate(cfg.model_copy(update={"out": str(tmp_path / "b")}), predictor=Oracle(), progress=False)
    table = compare_results(a, b, n_resamples=200)
    gap = table["slice_gaps"][0]
    assert gap["gap_a"] == pytest.approx(0.5) and gap["gap_b"] == 0 and gap["delta"] == pytest.approx(-0.5)
    assert gap["high"] < 0
    assert "Worst-slice gap" in write_compare_report(table, tmp_path / "cmp")["md"].read_text()
