"""Real data: SQuAD EM/F1 through the evaluate runner with the lead-sentence baseline; report and run written."""

from __future__ import annotations

import json
import math

import pytest

from training.evaluation.baselines import LeadSentence
from training.evaluation.report import read_eval_report
from training.evaluation.runner import EvalConfig, compare, evaluate
from training.tracking import TrackingConfig

SQUAD = "squad_v1.1_dev/squad_v1.1_dev_subset2k.jsonl"


def squad_cfg(shared_data, tmp_path, **kw) -> EvalConfig:
    fields = {"data": str(shared_data / SQUAD), "task": "qa", "limit": 300, "seed": 1, **kw}
    return EvalConfig(tracking=TrackingConfig(uri=f"file:{tmp_path / 'mlruns'}", tensorboard_dir=str(tmp_path / "tb")),
                      **fields)


def test_squad_em_f1_report_and_tracking(shared_data, tmp_path):
    result, out = evaluate(squad_cfg(shared_data, tmp_path), predictor=LeadSentence(), progress=False,
                           out=tmp_path / "eval")
    em, f1 = result.metrics["exact_match"], result.metrics["f1"]
    assert math.isfinite(em) and math.isfinite(f1) and 0 <= em <= f1 <= 100
    assert result.data["rows"] == 300 and len(result.per_sample["f1"]) == 300
    report = json.loads((out / "eval_report.json").read_text())
    assert report["metrics"]["f1"] == pytest.approx(f1)
    assert f"| f1 | {f1:.4f} |" in (out / "eval_report.md").read_text()
    assert "data:image/png;base64," in (out / "eval_report.html").read_text()
    assert len((out / "samples.jsonl").read_text().splitlines()) == 300
    assert result.tracking["backends"] == ["mlflow", "tensorboard"]

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}").get_run(result.tracking["run_id"])
    assert run.data.metrics["f1"] == pytest.approx(f1)
    assert read_eval_report(out).metrics == result.metrics


def test_compare_two_baselines_from_reports(shared_data, tmp_path):
    cfg = squad_cfg(shared_data, tmp_path, limit=200, bootstrap_resamples=500)
    evaluate(cfg, predictor=LeadSentence(), progress=False, out=tmp_path / "a")
    evaluate(cfg, predictor=LeadSentence(words=4), progress=False, out=tmp_path / "b")
    table, out = compare(cfg.model_copy(update={"out": str(tmp_path / "cmp")}), str(tmp_path / "a"),
                         str(tmp_path / "b"), progress=False)
    f1 = next(r for r in table["paired_bootstrap"] if r["metric"] == "f1")
    assert f1["low"] <= f1["delta"] <= f1["high"]
    head = next(r for r in table["headline"] if r["metric"] == "f1")
    assert head["delta"] == pytest.approx(f1["delta"] * 100)
    assert {p.name for p in out.iterdir()} >= {"compare_report.json", "compare_report.md", "compare_report.html",
                                               "compare.png"}
