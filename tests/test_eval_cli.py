"""The CLI: `tuneserve evaluate` on the real SQuAD subset with the lead-sentence baseline, `--compare`,
and the `human-eval export` -> ratings -> `human-eval import` round trip."""

from __future__ import annotations

import csv
import json
import math

import pytest
import typer
from typer.testing import CliRunner

from training.artifact.errors import ConfigError
from tuneserve.commands import evaluate as evaluate_commands

SQUAD = "squad_v1.1_dev/squad_v1.1_dev_subset2k.jsonl"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mlruns/, runs/ and evals/ land here
    app = typer.Typer()
    app.callback()(lambda: None)
    evaluate_commands.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=True)


def test_evaluate_squad_with_baseline_and_compare(cli, shared_data, tmp_path):
    data = shared_data / SQUAD
    first = cli("evaluate", "--model", "baseline:lead-sentence", "--data", data, "--task", "qa", "--limit", 150,
                "--no-progress", "seed=3")
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "evals/baseline-lead-sentence/eval_report.json").read_text())
    assert math.isfinite(report["metrics"]["exact_match"]) and math.isfinite(report["metrics"]["f1"])
    assert report["data"]["rows"] == 150 and report["tracking"]["backends"] == ["mlflow", "tensorboard"]
    assert (tmp_path / "mlruns").is_dir() and list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert "exact_match" in first.output

    second = cli("evaluate", "--compare", "evals/baseline-lead-sentence", "baseline:lead-sentence-3", "--data", data,
                 "--task", "qa", "--limit", 150, "--no-progress", "seed=3", "bootstrap_resamples=300",
                 "--out", "cmp")
    assert second.exit_code == 0, second.output
    table = json.loads((tmp_path / "cmp/compare_report.json").read_text())
    assert [r["metric"] for r in table["paired_bootstrap"]] == ["exact_match", "f1"]
    assert "CI [" in second.output


def test_evaluate_errors_are_user_errors(cli, tmp_path):
    result = cli("evaluate", "--model", "baseline:lead-sentence", "--no-progress")
    assert isinstance(result.exception, ConfigError) and "no evaluation data" in result.exception.message
    result = cli("evaluate", "--model", "baseline:nope", "--data", tmp_path, "--task", "qa", "bogus_key=1")
    assert isinstance(result.exception, ConfigError) and "bogus_key" in result.exception.message


def test_human_eval_cli_round_trip(cli, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\n" + "".join(f"q{i},Name a colour number {i}\n" for i in range(6)))
    for name, answer in (("base", "blue"), ("tuned", "a vivid red")):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt_id": f"q{i}", "response": f"{answer} {i}"}) + "\n" for i in range(6)))
    out = cli("human-eval", "export", "--prompts", prompts, "--responses", f"base={tmp_path / 'base.jsonl'}",
              "--responses", f"tuned={tmp_path / 'tuned.jsonl'}", "--out", "sheet", "--criteria", "helpfulness")
    assert out.exit_code == 0, out.output
    key = tmp_path / "sheet.key/key.json"
    with open(tmp_path / "sheet/sheet.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # this rater prefers the longer answer
        longer = max("AB", key=lambda p: len(row[f"response_{p}"]))
        row.update(rater="ann", preference=longer, score_A_helpfulness=4 if longer == "A" else 2,
                   score_B_helpfulness=4 if longer == "B" else 2)
    with open(tmp_path / "ann.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = cli("human-eval", "import", "--key", key, "--ratings", tmp_path / "ann.csv")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "sheet.key/human_eval_report.json").read_text())
    assert report["pairwise"][0] | {"low": 0, "high": 0} == {
        "a": "base", "b": "tuned", "wins_a": 0, "wins_b": 6, "ties": 0, "win_rate": 0.0, "low": 0, "high": 0,
        "tie_rate": 0.0}
    assert report["scores"]["tuned"]["helpfulness"]["mean"] == 4
