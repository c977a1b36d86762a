"""LoRA variants change what they should: NEFTune noise (train mode only), rsLoRA scaling, LoRA+ group
learning rates, PiSSA/OLoRA initialisation (base weights moved, output unchanged, saved adapter fits the
original base)."""

from __future__ import annotations

import math

import pytest
import torch
from train_support import instruction_rows, logits_of, make_config, train_args, write_jsonl

from training.artifact.errors import ConfigError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "rows.jsonl", instruction_rows(16))


def _prepared(tiny_base_dir, data_file, tmp_path, *extra):
    from training.train.parts import prepare

    cfg = make_config(*train_args(tiny_base_dir, data_file, tmp_path / "out", "data.max_length=32", *extra))
    return cfg, prepare(cfg, torch.device("cpu"))


def _base_logits(tiny_base_dir, prep):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir))
    return logits_of(base, prep.collate, prep.train_ex[:4]), base


def test_neftune_noise_only_in_training_mode(tiny_base_dir, data_file, tmp_path):
    _, prep = _prepared(tiny_base_dir, data_file, tmp_path, "lora.neftune_alpha=5")
    embed = prep.model.get_input_embeddings()
    ids = torch.tensor([prep.train_ex[0]["input_ids"]])
    clean = torch.nn.functional.embedding(ids, embed.weight)
    prep.model.train()
    noisy = embed(ids)
    bound = 5 / math.sqrt(ids.shape[1] * embed.weight.shape[1])
    assert not torch.equal(noisy, clean)
    assert (noisy - clean).abs().max() <= bound + 1e-6
    prep.model.eval()
    assert torch.equal(embed(ids), clean)


@pytest.mark.parametrize("rslora", [False, True])
def test_rslora_scaling(tiny_base_dir, data_file, tmp_path, rslora):
    _, prep = _prepared(tiny_base_dir, data_file, tmp_path, "lora.r=16", "lora.alpha=8", f"lora.use_rslora={rslora}")
    scalings = {m.scaling["default"] for m in prep.model.modules() if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling}
    assert scalings == {8 / math.sqrt(16) if rslora else 8 / 16}


def test_loraplus_gives_b_matrices_ratio_times_lr(tiny_base_dir, data_file, tmp_path):
    from training.train.loop import TrainLoop

    cfg, prep = _prepared(tiny_base_dir, data_file, tmp_path, "lora.loraplus_lr_ratio=16", "optim.scheduler=constant")
    loop = TrainLoop(cfg, prep.model, prep.train_ex, prep.val_ex, prep.collate, torch.device("cpu"))
    loop._step(0)
    groups = loop.optimizer.param_groups
    ids = {name: id(p) for name, p in prep.model.named_parameters()}
    b_ids = {i for name, i in ids.items() if "lora_B" in name}
    a_ids = {i for name, i in ids.items() if "lora_A" in name}
    by_param = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert b_ids and a_ids
    assert sorted({by_param[i] for i in b_ids}) == pytest.approx([16 * cfg.optim.lr])
    assert sorted({by_param[i] for i in a_ids}) == pytest.approx([cfg.optim.lr])


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_olora_move_base_keep_output_and_save_for_original_base(tiny_base_dir, data_file, tmp_path, init):
    from training.train.run import load_trained, train

    _, prep = _prepared(tiny_base_dir, data_file, tmp_path / "probe", f"lora.init={init}")
    expected, base = _base_logits(tiny_base_dir, prep)
    got = logits_of(prep.model, prep.collate, prep.train_ex[:4])
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()
    moved = dict(prep.model.named_parameters())
    name = next(n for n in moved if n.endswith("q_proj.base_layer.weight"))
    original = dict(base.named_parameters())[name.replace("base_model.model.", "").replace(".base_layer", "")]
    assert not torch.allclose(moved[name], original, atol=1e-4)  # the residual base, not the original

    cfg = make_config(*train_args(tiny_base_dir, data_file, tmp_path / init, "data.max_length=32", "max_steps=2",
                                  f"lora.init={init}"))
    outcome = train(cfg)
    trained = logits_of(outcome.model, outcome.collate, outcome.examples[:4])
    reloaded, _, _ = load_trained(outcome.artifact)  # the original base plus the converted adapter
    again = logits_of(reloaded, outcome.collate, outcome.examples[:4])
    assert torch.allclose(trained, again, atol=1e-3), (trained - again).abs().max()
    untrained = logits_of(base, outcome.collate, outcome.examples[:4])
    assert not torch.allclose(trained, untrained, atol=1e-3)  # training changed the model


def test_variant_options_rejected_where_they_do_not_apply(tiny_base_dir, data_file, tmp_path):
    from training.train.methods import get_method

    cfg = make_config(*train_args(tiny_base_dir, data_file, tmp_path / "x", "method=loha", "lora.use_rslora=true"))
    with pytest.raises(ConfigError, match="use_rslora"):
        get_method("loha").validate(cfg, None)
    cfg = make_config(*train_args(tiny_base_dir, data_file, tmp_path / "y", "method=qlora", "lora.init=pissa"))
    with pytest.raises(ConfigError, match="4-bit"):
        get_method("qlora").validate(cfg, None)
