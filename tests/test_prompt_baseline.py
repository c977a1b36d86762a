"""Prompt/embedding baselines: label-likelihood scoring (shared-prefix path == whole path, a planted label wins),
nearest-centroid and kNN on separable toy embeddings, few-shot selection, the cost table and CLI errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from training.artifact.errors import ConfigError, DataError
from training.evaluation.prompt_baseline import (
    EmbeddingClassifier,
    FewShotPicker,
    LabelLikelihood,
    label_text,
    mean_ci,
)
from tuneserve.commands import baseline as baseline_commands

LABELS = ["card arrival", "card linking", "card payment fee charged", "top up failed", "exchange rate"]


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    from training.artifact.loading import load_base

    return load_base(str(tiny_base_dir))


def _boost(loaded, token_id: int, amount: float = 50.0):
    """Plant a label: add `amount` to one token's logit at every position."""
    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_id] += amount
        return output

    return loaded.model.get_output_embeddings().register_forward_hook(hook)


def test_shared_prefix_trie_matches_whole_sequences(tiny):
    texts = ["my card has not arrived yet", "what rate do you use"]
    labels = [lab.replace(" ", "_") for lab in LABELS]
    shared = LabelLikelihood(tiny, labels, score="sum")
    whole = LabelLikelihood(tiny, labels, score="sum", share_prefix=False)
    assert len(shared._trie[0]) < sum(map(len, shared.label_ids))  # "card ..." labels share trie nodes
    np.testing.assert_allclose(shared.label_logprobs(texts), whole.label_logprobs(texts), atol=1e-4)
    rows = [{"text": "card came", "label": labels[0]}, {"text": "rate?", "label": labels[4]}]
    few = LabelLikelihood(tiny, labels, FewShotPicker(rows, 2, "random", seed=1), score="mean")
    few_whole = LabelLikelihood(tiny, labels, FewShotPicker(rows, 2, "random", seed=1), score="mean", share_prefix=False)
    np.testing.assert_allclose(few.label_logprobs(texts), few_whole.label_logprobs(texts), atol=1e-4)


def test_likelihood_picks_the_planted_label(tiny):
    labels = ["alpha_one", "beta_two", "gamma_three"]
    scorer = LabelLikelihood(tiny, labels, score="mean")
    planted = scorer.label_ids[1][0]
    assert planted not in scorer.label_ids[0] + scorer.label_ids[2]
    handle = _boost(tiny, planted)
    try:
        preds = LabelLikelihood(tiny, labels, score="mean").classify(["one text", "another text"])
        calibrated = LabelLikelihood(tiny, labels, score="calibrated").label_logprobs(["one text"])
    finally:
        handle.remove()
    assert [p.label for p in preds] == ["beta_two", "beta_two"]
    assert abs(sum(preds[0].scores.values()) - 1) < 1e-6 and preds[0].confidence > 0.5
    # calibration subtracts the same label's score after a content-free message: the planted bias cancels
    assert np.abs(calibrated).max() < 5


def test_score_modes_share_forward_passes(tiny, monkeypatch):
    scorer = LabelLikelihood(tiny, LABELS, score="sum")
    first = scorer.label_logprobs(["top up did not work"])
    calls = []
    monkeypatch.setattr(scorer, "_shared", lambda body: calls.append(body))
    mean = scorer.with_score("mean")
    assert mean.name.endswith("@mean") and scorer.info["score"] == "sum"
    np.testing.assert_allclose(mean.label_logprobs(["top up did not work"]), first / scorer._lengths)
    assert calls == []  # memoised: a second score mode re-runs nothing
    mean.classify(["top up did not work"])
    assert mean.info["seconds_per_example"] > 0  # the shared compute time, not the memo lookup's


def _toy_embed(texts: list[str]) -> np.ndarray:
    """Separable toy embeddings: the cluster is the text's first word, plus small deterministic noise."""
    centres = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1]}
    rng = np.random.default_rng(len(texts))
    return np.array([centres[t.split()[0]] for t in texts], dtype=float) + 0.05 * rng.standard_normal((len(texts), 3))


def test_centroid_and_knn_on_separable_embeddings():
    rows = [{"text": f"{c} {i}", "label": c.upper()} for c in ("red", "green", "blue") for i in range(6)]
    queries = ["blue x", "red y", "green z", "red w"]
    for method in ("centroid", "knn"):
        clf = EmbeddingClassifier(rows, _toy_embed, method, k=3, labels=["BLUE", "GREEN", "RED", "UNSEEN"])
        preds = clf.classify(queries)
        assert [p.label for p in preds] == ["BLUE", "RED", "GREEN", "RED"], method
        assert all(abs(sum(p.scores.values()) - 1) < 1e-6 for p in preds)
        assert preds[0].scores["UNSEEN"] < 1e-6  # a label with no training rows never wins
    with pytest.raises(ConfigError):
        EmbeddingClassifier(rows, _toy_embed, "svm")


def test_few_shot_picker_nearest_and_random():
    rows = [{"text": f"{c} {i}", "label": c} for c in ("red", "green", "blue") for i in range(4)]
    nearest = FewShotPicker(rows, 3, "nearest", _toy_embed).pick(["green q"])[0]
    assert {r["label"] for r in nearest} == {"green"}
    a, b = FewShotPicker(rows, 3, "random", seed=7), FewShotPicker(rows, 3, "random", seed=7)
    assert a.pick(["x", "y"]) == [a.fixed, a.fixed] and a.fixed == b.fixed
    with pytest.raises(ConfigError):
        FewShotPicker(rows, 3, "nearest", None)


def test_label_text_and_wilson_interval():
    assert label_text("card_arrival") == "card arrival" and label_text("card_arrival", "raw") == "card_arrival"
    p, low, high = mean_ci([1.0] * 8 + [0.0] * 2)
    assert p == 0.8 and 0.44 < low < 0.8 < high < 0.97


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = typer.Typer()
    app.callback()(lambda: None)
    baseline_commands.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=True)


def test_baseline_cli_errors_are_user_errors(cli, tmp_path, tiny_base_dir):
    result = cli("baseline", "base=tiny-llama", "--no-progress")
    assert isinstance(result.exception, ConfigError) and "no evaluation data" in result.exception.message
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    result = cli("baseline", f"base={tiny_base_dir}", f"data={data}", "task=classification", "modes=[knn]")
    assert isinstance(result.exception, ConfigError) and "do not apply" in result.exception.message
    result = cli("baseline", f"base={tiny_base_dir}", f"data={data}", "task=classification")
    assert isinstance(result.exception, ConfigError) and "no training rows" in result.exception.message
    result = cli("learning-curve", "fractions=[0.5,1.5]")
    assert isinstance(result.exception, ConfigError) and "fractions" in result.exception.message


def test_baseline_cli_end_to_end_on_tiny_base(cli, tmp_path, tiny_base_dir):
    from training.evaluation.cost_table import cost_table

    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(f'{{"text": "{w} text {i}", "label": "{w}_label"}}\n' for w in ("red", "blue") for i in range(3)))
    test.write_text('{"text": "red thing", "label": "red_label"}\n{"text": "blue thing", "label": "blue_label"}\n')
    result = cli("baseline", f"base={tiny_base_dir}", f"data={test}", f"train_data={train}", "task=classification",
                 "shots=2", "selection=random", "scores=[calibrated]", "eval.tracking.enabled=false", "out=bl",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    modes = sorted(p.name for p in (tmp_path / "bl").iterdir() if p.is_dir())
    assert modes == ["few-shot-calibrated", "zero-shot-calibrated"]
    summary = json.loads((tmp_path / "bl" / "baseline_summary.json").read_text())
    assert [r["rows"] for r in summary["results"]] == [2, 2] and "accuracy" in result.output
    table = cost_table([str(tmp_path / "bl" / m) for m in modes])
    assert all(r["kind"] == "baseline" and r["trainable_parameters"] == 0 and r["rows"] == 2 for r in table["rows"])
    shutil.copytree(tmp_path / "bl" / modes[0], tmp_path / "other")
    report = json.loads((tmp_path / "other" / "eval_report.json").read_text())
    report["data"]["fingerprint"] = "different rows"
    (tmp_path / "other" / "eval_report.json").write_text(json.dumps(report))
    with pytest.raises(DataError):
        cost_table([str(tmp_path / "bl" / modes[0]), str(tmp_path / "other")])
