"""Auto mode's weight soup (training.search.soup) and merging classification adapters (their heads averaged):
runs of one recipe share the initialisation and split and differ in batch order; the soup is the exact mean
of their updates and heads; auto mode writes it only when it scores at least the chosen run on validation."""

from __future__ import annotations

import json

import pytest
import torch
from train_support import classification_rows, make_config, train_args, write_jsonl

from training.artifact import ConfigError, load_artifact, read_manifest
from training.search.soup import soup_plan

torch.set_num_threads(2)


def _classifier_args(tiny_base_dir, data, out, *extra):
    return train_args(tiny_base_dir, data, out, "task=classification", "data.validation_fraction=0.25",
                      "profile.enabled=false", "lora.target_modules=[q_proj, v_proj]", "max_steps=3", *extra)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("soup-data") / "rows.jsonl", classification_rows(48))


def test_soup_plan_counts_the_members_that_fit():
    assert soup_plan(4, left=1000, member_seconds=100) == 3  # the run itself is the soup's first member
    assert soup_plan(4, left=250, member_seconds=100) == 2
    assert soup_plan(4, left=50, member_seconds=100) == 0
    assert soup_plan(1, left=1000, member_seconds=100) == 0  # soup=1: off


def test_a_member_continues_the_run_for_one_epoch_at_a_tenth_of_its_rate(tmp_path):
    from training.search.soup import member_config
    from training.train.config import TrainConfig

    settings = TrainConfig(task="classification", epochs=6, optim={"lr": 2e-3, "warmup_ratio": 0.06}, eval_every=50)
    member = member_config(settings, tmp_path / "run", 2, tmp_path / "m2")
    assert member.init_adapter == str(tmp_path / "run") and member.epochs == 1 and member.eval_every is None
    assert member.optim.lr == pytest.approx(2e-4) and member.optim.scheduler == "constant"
    assert member.optim.warmup_ratio == 0.0 and member.order_seed == 42 + 2000 and member.seed == 42
    probed = member_config(settings, tmp_path / "run", 1, tmp_path / "m1", lr_factor=0.3)  # benchmarks/soup_probe.py
    assert probed.optim.lr == pytest.approx(6e-4) and probed.order_seed == 42 + 1000


def test_order_seed_changes_the_batches_but_not_the_initialisation(tiny_base_dir, rows_file, tmp_path):
    from training.train.loop import TrainLoop
    from training.train.parts import prepare

    def start(*extra):
        prep = prepare(make_config(*_classifier_args(tiny_base_dir, rows_file, tmp_path / "x", *extra)), torch.device("cpu"))
        weights = {k: v.detach().clone() for k, v in prep.model.named_parameters() if v.requires_grad}
        loop = TrainLoop(prep.cfg, prep.model, prep.train_ex, prep.val_ex, prep.collate, torch.device("cpu"))
        return weights, loop._order(0)

    base_weights, base_order = start()
    other_weights, other_order = start("order_seed=1042")
    reseeded_weights, _ = start("seed=43")
    assert base_weights.keys() == other_weights.keys() and any("lora_A" in k for k in base_weights)
    assert all(torch.equal(base_weights[k], other_weights[k]) for k in base_weights)  # same start, head included
    assert base_order != other_order and sorted(base_order) == sorted(other_order)
    assert not all(torch.equal(base_weights[k], reseeded_weights[k]) for k in base_weights)


def _train(tiny_base_dir, rows_file, out, *extra):
    from training.train.run import train

    train(make_config(*_classifier_args(tiny_base_dir, rows_file, out, *extra)))
    return out


def _head_and_logits(tiny_base_dir, artifact_dir):
    from transformers import AutoTokenizer

    from training.artifact.loading import attach_adapter, load_base

    artifact = load_artifact(artifact_dir)
    base = load_base(str(tiny_base_dir), task="classification", labels=artifact.manifest.labels)
    model = attach_adapter(base.model, artifact, "probe").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    with torch.no_grad():
        logits = model(**tokenizer(["I like the piano and the drum"], return_tensors="pt")).logits
    head = next(v for k, v in model.named_parameters() if "modules_to_save.probe" in k and k.endswith("weight"))
    return head.detach().clone(), logits


def test_classification_adapters_merge_with_their_heads_averaged(tiny_base_dir, rows_file, tmp_path):
    from training.artifact.config import load_config
    from training.train.merge import MergeConfig, merge_adapters

    first = _train(tiny_base_dir, rows_file, tmp_path / "a")
    second = _train(tiny_base_dir, rows_file, tmp_path / "b", "order_seed=7")

    def merge(out, *extra):
        return merge_adapters(load_config(MergeConfig, None, [f"sources={json.dumps([str(first), str(second)])}",
                                                              f"output={out}", "combination=cat", *extra])).path

    heads = [_head_and_logits(tiny_base_dir, a) for a in (first, second)]
    assert not torch.equal(heads[0][0], heads[1][0])
    only_first = _head_and_logits(tiny_base_dir, merge(tmp_path / "first", "weights=[1,0]"))
    assert torch.allclose(only_first[1], heads[0][1], atol=1e-5)  # PEFT alone refuses heads in a merge
    soup = _head_and_logits(tiny_base_dir, merge(tmp_path / "soup"))
    assert torch.allclose(soup[0], (heads[0][0] + heads[1][0]) / 2, atol=1e-6)
    with pytest.raises(ConfigError, match="positive sum"):  # heads cannot be averaged with weights summing to 0
        merge(tmp_path / "negated", "weights=[1,-1]")


def test_auto_mode_writes_a_soup_of_continuations_of_the_chosen_run(monkeypatch, tiny_base_dir, rows_file, tmp_path):
    from training.search.auto import auto_train

    monkeypatch.setattr("training.search.run.out_of_budget", lambda *a, **k: True)  # no search: the soup only
    cfg = make_config(*_classifier_args(tiny_base_dir, rows_file, tmp_path / "auto", "eval_every=1", "refit=false"))
    report = auto_train(cfg, budget=600, soup=3, soup_on_validation=False)
    soup = report["soup"]
    assert len(report["trials"]) == 1 and soup["members"] == 3 and not soup["on_validation"]
    assert soup["order_seeds"] == [None, 42 + 1000, 42 + 2000] and soup["member_lr"] == pytest.approx(5e-4)
    member = read_manifest(tmp_path / "auto.search" / "soup" / "member-1")
    assert member.hyperparameters["init_adapter"] == str(tmp_path / "auto.search" / "recipe")
    assert "on validation" in soup["why"] and 0.0 <= soup["val_accuracy"] <= 1.0
    written = read_manifest(tmp_path / "auto")
    if soup["written"]:  # within one standard error of the run on validation, or ahead
        assert soup["val_accuracy"] >= soup["run_val_accuracy"] - soup["trail_allowed"]
        assert written.lineage["combination"] == "cat" and len(written.lineage["sources"]) == 3
        assert "val_accuracy" not in written.metrics and written.hyperparameters["merge"]["combination"] == "cat"
    else:
        assert written.lineage is None and soup["val_accuracy"] < soup["run_val_accuracy"] - soup["trail_allowed"]
    load_artifact(tmp_path / "auto")  # checksums hold
    assert json.loads((tmp_path / "auto.search" / "report.json").read_text())["soup"] == soup
    assert "## Weight soup: 3 runs" in (tmp_path / "auto.search" / "report.md").read_text()


@pytest.mark.parametrize("refit", [True, False])
def test_the_members_continue_the_written_run_on_train_and_validation(refit, monkeypatch, tiny_base_dir, rows_file,
                                                                      tmp_path):
    """By default (and always after a refit) each member trains one epoch of train + validation; the soup is written."""
    from training.search.auto import auto_train

    monkeypatch.setattr("training.search.run.out_of_budget", lambda *a, **k: True)
    cfg = make_config(*_classifier_args(tiny_base_dir, rows_file, tmp_path / "auto", "eval_every=1", f"refit={refit}"))
    report = auto_train(cfg, budget=600, soup=2)
    soup = report["soup"]
    assert soup["on_validation"] and soup["members"] == 2 and soup["order_seeds"] == [None, 42 + 1000]
    assert "no validation" in soup["why"] and ("refit" in report) == refit
    member = read_manifest(tmp_path / "auto.search" / "soup" / "member-1")
    assert member.metrics["refit_steps"] == 6  # one epoch of train + validation: 36 + 12 rows / batch 8
    written = read_manifest(tmp_path / "auto")
    assert written.lineage["combination"] == "cat" and len(written.lineage["sources"]) == 2
    if refit:  # the members continue the refit, and the soup keeps its manifest
        assert report["refit"]["steps"] >= 1 and written.metrics["refit_steps"] == report["refit"]["steps"]
    else:  # they continue the recipe's trial
        assert member.hyperparameters["init_adapter"] == str(tmp_path / "auto.search" / "recipe")
