"""The train-to-serve parity gate: golden sets written by train/quantize, replayed at load and by the CLI.

Unit tests check the replay metrics on hand-built golden sets and logits; the flow tests train a
LoRA adapter (with its merged copy) on the tiny base, quantize it to int8, load all three through
the service registry (multi-LoRA, merged, int8: they pass) and then a tampered int8 artifact whose
scales are wrong but whose checksums are consistent (it is refused, naming the worst prompt).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.train_support import instruction_rows, make_config, train_args, write_jsonl
from training.artifact import load_artifact, sha256_file
from training.artifact.errors import ArtifactInvalid
from training.artifact.golden import GOLDEN_NAME, GoldenPrompt, GoldenSet, model_forward, parse_golden, read_golden
from training.artifact.loading import load_model_artifact
from training.artifact.replay import ParityGate, coarse_kl, replay

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "transformers4"
VOCAB = 6


# ---- replay metrics on hand-built golden sets ------------------------------------------------
def table_forward(table: dict[int, list[float]]):
    """A causal 'model' whose next-token logits depend only on the last input token."""
    def forward(input_ids, attention_mask):
        return torch.tensor([[table[int(t)] for t in row] for row in input_ids])
    return forward


def golden_from(forward, prompts: list[list[int]], new_tokens: int = 3, top_k: int = 3) -> GoldenSet:
    from training.artifact.golden import _greedy, teacher_forced_logprobs

    rows = []
    pairs = [(ids, _greedy(forward, ids, new_tokens)) for ids in prompts]
    for i, ((ids, tokens), lp) in enumerate(zip(pairs, teacher_forced_logprobs(forward, pairs))):
        top = lp.topk(top_k, dim=-1)
        rows.append(GoldenPrompt(text=f"prompt {i}", input_ids=ids, tokens=tokens,
                                 logprobs=[float(lp[p, t]) for p, t in enumerate(tokens)],
                                 top_ids=top.indices.tolist(), top_logprobs=top.values.tolist()))
    return GoldenSet(task="causal-lm", new_tokens=new_tokens, top_k=top_k, prompts=rows)


REFERENCE = {t: [3.0 if j == (t + 1) % VOCAB else 0.0 for j in range(VOCAB)] for t in range(VOCAB)}


def test_replay_of_the_reference_itself_is_exact():
    golden = golden_from(table_forward(REFERENCE), [[0], [2, 3]])
    report = replay(golden, table_forward(REFERENCE))
    assert report["token_agreement"] == 1.0 and report["positions"] == 6
    assert report["mean_kl"] < 1e-9 and report["max_logprob_diff"] < 1e-6
    assert ParityGate().violations(report) == []


def test_replay_finds_the_drifted_prompt():
    golden = golden_from(table_forward(REFERENCE), [[0], [3]])
    drifted = dict(REFERENCE)
    drifted[4] = [5.0 if j == 0 else 0.0 for j in range(VOCAB)]  # after token 4 (reached only from prompt 1) it flips
    report = replay(golden, table_forward(drifted))
    assert report["token_agreement"] == pytest.approx(5 / 6)
    assert report["worst"]["index"] == 1 and report["worst"]["text"] == "prompt 1"
    assert report["per_prompt"][0]["kl"] < 1e-9 < report["per_prompt"][1]["kl"]
    assert report["max_logprob_diff"] > 1.0
    message = ParityGate(max_kl=0.01).refusal("model 'x'", report)
    assert message is not None and "worst prompt #1 'prompt 1'" in message and "mean KL" in message
    assert ParityGate(max_kl=10.0, min_token_agreement=0.5).refusal("model 'x'", report) is None


def test_coarse_kl_matches_the_full_kl_when_top_k_holds_everything_and_bounds_it_otherwise():
    p = torch.tensor([2.0, 1.0, 0.0, -1.0]).log_softmax(-1)
    q = torch.tensor([1.0, 1.5, 0.5, -2.0]).log_softmax(-1)
    full = float((p.exp() * (p - q)).sum())
    assert coarse_kl(p.tolist(), q.tolist()) == pytest.approx(full, rel=1e-6)
    assert 0 < coarse_kl(p[:2].tolist(), q[:2].tolist()) <= full + 1e-9
    assert coarse_kl(p.tolist(), p.tolist()) == 0.0


def test_classifier_replay_reports_label_agreement_and_probability_difference():
    probs = [[0.9, 0.1], [0.2, 0.8]]
    golden = GoldenSet(task="classification", labels=["neg", "pos"], prompts=[
        GoldenPrompt(text=f"t{i}", input_ids=[1, 2 + i], label=["neg", "pos"][i], probs=p) for i, p in enumerate(probs)])
    served = {2: [0.9, 0.1], 3: [0.6, 0.4]}  # the second prompt flips to neg

    def forward(input_ids, attention_mask):
        return torch.tensor([served[int(input_ids[0, -1])]]).log()

    report = replay(golden, forward)
    assert report["label_agreement"] == 0.5 and report["max_prob_diff"] == pytest.approx(0.4)
    expected_kl = 0.2 * math.log(0.2 / 0.6) + 0.8 * math.log(0.8 / 0.4)
    assert report["mean_kl"] == pytest.approx(expected_kl / 2, rel=1e-5)
    assert report["worst"]["text"] == "t1" and "label agreement 0.500" in ParityGate().refusal("clf", report)


def test_artifacts_without_a_golden_set_still_load_and_a_malformed_one_is_refused():
    assert read_golden(load_artifact(FIXTURES / "micro-lora")) is None
    assert read_golden(load_artifact(FIXTURES / "micro-int8")) is None
    with pytest.raises(ArtifactInvalid, match="malformed"):
        parse_golden('{"task": "causal-lm"}', "x")


# ---- train -> quantize -> serve ---------------------------------------------------------------
def rewrite_checksums(path: Path) -> None:
    """Make a hand-edited artifact consistent again, as someone re-writing it would."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = {rel: sha256_file(path / rel) for rel in manifest["files"]}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))


def tamper_int8_scales(path: Path, factor: float) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = path / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    for key in tensors:
        if key.endswith(".scale"):  # every per-row weight scale written wrong by the same factor
            tensors[key] = tensors[key] * factor
    save_file(tensors, str(weights), metadata=metadata)
    rewrite_checksums(path)


@pytest.fixture(scope="module")
def flow(tiny_base_dir, tmp_path_factory):
    from training.quantize import QuantizeConfig, quantize
    from training.train import train

    tmp = tmp_path_factory.mktemp("parity")
    data = write_jsonl(tmp / "rows.jsonl", instruction_rows(48))
    cfg = make_config(*train_args(tiny_base_dir, data, tmp / "adapter", "merge=true", "optim.lr=2e-2"))
    outcome = train(cfg)
    int8 = tmp / "int8"
    quantize(outcome.artifact, QuantizeConfig(scheme="torch-int8", merge=True, parity={"latency_repeats": 0}), int8)
    return {"cfg": cfg, "outcome": outcome, "adapter": outcome.artifact, "merged": outcome.merged, "int8": int8,
            "base": tiny_base_dir, "tmp": tmp}


def registry(base_dir: Path, models: list[Path] = (), base_task: str = "causal-lm", **parity):
    from service.engine.registry import ModelRegistry
    from service.engine.settings import ModelSettings

    reg = ModelRegistry(ModelSettings(base_model=str(base_dir), models=list(models), base_task=base_task,
                                      parity=ParityGate(**parity)))
    reg.start()
    return reg


def test_train_and_quantize_store_the_training_time_golden_set(flow):
    from training.train.data import load_splits

    adapter, merged, int8 = (load_artifact(flow[k]) for k in ("adapter", "merged", "int8"))
    golden = read_golden(adapter)
    assert adapter.manifest.golden["prompts"] == len(golden.prompts) == 4 and golden.new_tokens > 0
    assert GOLDEN_NAME in adapter.manifest.files
    validation = load_splits(flow["cfg"].data, "causal-lm", flow["cfg"].seed).validation
    assert all(row["input"] in p.text for row, p in zip(validation, golden.prompts))
    # the merged copy and the int8 quantization carry the training-time golden set, not their own outputs
    assert read_golden(merged) == golden == read_golden(int8)
    assert int8.manifest.metrics["golden_parity"]["token_agreement"] >= 0.75
    report = replay(golden, model_forward(flow["outcome"].model))
    assert report["token_agreement"] == 1.0 and report["mean_kl"] < 1e-6


def test_service_serves_adapter_merged_and_int8_after_replaying_their_golden_sets(flow):
    from service import metrics

    reg = registry(flow["base"], [flow["merged"], flow["int8"]])
    merged_name, int8_name = load_artifact(flow["merged"]).name, load_artifact(flow["int8"]).name
    assert set(reg.targets) >= {merged_name, int8_name}, reg.catalog.skipped
    assert reg.targets[merged_name].parity["mean_kl"] < 1e-4
    assert reg.targets[merged_name].parity["token_agreement"] == 1.0
    assert reg.targets[int8_name].parity["token_agreement"] >= 0.75
    info = reg.load_adapter("trained", flow["adapter"])  # served unmerged through the batched multi-LoRA stacks
    assert reg.base.multilora is not None and reg.adapters["trained"].slot in reg.base.multilora.slots
    assert info["parity"]["token_agreement"] == 1.0 and info["parity"]["mean_kl"] < 1e-4
    assert reg.list_adapters()[0]["parity"] == info["parity"]
    assert metrics.PARITY_AGREEMENT.labels("trained")._value.get() == 1.0


@pytest.fixture(scope="module")
def broken_int8(flow) -> Path:
    broken = flow["tmp"] / "int8-broken"
    shutil.copytree(flow["int8"], broken)
    tamper_int8_scales(broken, 2.0)
    return broken


def test_a_broken_int8_quantization_is_refused_at_load_naming_the_worst_prompt(flow, broken_int8):
    broken = broken_int8
    artifact = load_artifact(broken)  # checksums are consistent: only the parity gate can tell
    name = artifact.name
    golden = read_golden(artifact)
    reg = registry(flow["base"], [broken])
    assert name not in reg.targets
    message = reg.catalog.skipped[str(broken)]
    assert f"model {name!r} does not behave like the model it was trained as" in message
    worst = replay(golden, model_forward(load_model_artifact(artifact).model))["worst"]
    assert f"worst prompt #{worst['index']} {worst['text']!r}" in message
    assert name in registry(flow["base"], [broken], enabled=False).targets  # the gate, nothing else, refused it


def test_a_drifted_adapter_is_refused_and_the_registry_keeps_serving_as_before(flow):
    from safetensors.torch import load_file, save_file

    broken = flow["tmp"] / "adapter-broken"
    shutil.copytree(flow["adapter"], broken)
    weights = broken / "adapter_model.safetensors"
    save_file({k: v * 20 if "lora_B" in k else v for k, v in load_file(str(weights)).items()}, str(weights))
    rewrite_checksums(broken)
    reg = registry(flow["base"])
    with pytest.raises(ArtifactInvalid, match=r"adapter 'drifted' does not behave .* worst prompt #\d"):
        reg.load_adapter("drifted", broken)
    assert reg.list_adapters() == [] and (reg.base.multilora is None or not reg.base.multilora.slots)
    assert reg.load_adapter("trained", flow["adapter"])["parity"]["token_agreement"] == 1.0


def test_evaluate_parity_prints_the_replay_and_fails_over_the_threshold(flow, broken_int8):
    import typer
    from typer.testing import CliRunner

    from tuneserve.commands import evaluate as evaluate_commands

    app = typer.Typer()
    app.callback()(lambda: None)
    evaluate_commands.register(app)
    run = lambda *args: CliRunner().invoke(app, ["evaluate", *map(str, args)], catch_exceptions=True)
    for ok in (flow["adapter"], flow["int8"]):
        result = run("--parity", ok)
        assert result.exit_code == 0 and "PASS" in result.output and "token_agreement" in result.output, result.output
    result = run("--parity", broken_int8)
    assert result.exit_code == 1 and "FAIL" in result.output and "worst prompt #" in result.output, result.output
    assert run("--parity", broken_int8, "--max-kl", "100", "--min-agreement", "0").exit_code == 0
    result = run("--parity", FIXTURES / "micro-int8")
    assert isinstance(result.exception, ArtifactInvalid) and "no golden set" in result.exception.message


def test_the_tuneserve_entry_point_exits_non_zero_when_parity_fails(broken_int8):
    import subprocess
    import sys

    argv = [sys.executable, "-c", "import sys; from tuneserve.cli import run; sys.argv[0] = 'tuneserve'; run()",
            "evaluate", "--parity", str(broken_int8)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "worst prompt #" in done.stdout, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])


def test_a_trained_classifier_stores_labels_and_probabilities_and_serves_through_the_gate(tiny_base_dir, tmp_path):
    from tests.train_support import classification_rows
    from training.artifact.replay import load_served
    from training.train import train

    rows = [r for r in classification_rows(48) if r["label"] != "music"]  # the served base takes 2 labels
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    outcome = train(make_config(*train_args(tiny_base_dir, data, tmp_path / "clf", "task=classification")))
    artifact, forward = load_served(outcome.artifact)
    golden = read_golden(artifact)
    assert golden.task == "classification" and golden.labels == artifact.manifest.labels
    assert all(p.label in golden.labels and sum(p.probs) == pytest.approx(1.0, abs=1e-4) for p in golden.prompts)
    assert replay(golden, forward)["label_agreement"] == 1.0
    reg = registry(tiny_base_dir, base_task="classification")
    info = reg.load_adapter("clf", outcome.artifact)
    assert info["parity"]["label_agreement"] == 1.0 and info["parity"]["mean_kl"] < 1e-6
