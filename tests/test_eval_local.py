"""LocalPredictor on real models: a trained tiny-Llama adapter (generation + perplexity) and a MiniLM
banking77 adapter (classification, full report with confusion matrix and reliability diagram)."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from training.evaluation.local import LocalPredictor
from training.evaluation.metrics import perplexity
from training.evaluation.runner import EvalConfig, evaluate
from training.tracking import TrackingConfig

torch.set_num_threads(2)


def tracking(tmp_path: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"file:{tmp_path / 'mlruns'}", tensorboard_dir=str(tmp_path / "tb"))


def reverse_rows(n: int, seed: int) -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "forest"]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        picked = rng.sample(words, 3)
        out.append({"instruction": "Reverse the words.", "input": " ".join(picked), "output": " ".join(reversed(picked))})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_adapter(base: str | Path, data: Path, out: Path, *extra: str) -> Path:
    from training.artifact.config import load_config
    from training.train import TrainConfig, train

    cfg = load_config(TrainConfig, None, [f"base={base}", f"data.path={data}", f"output={out}", "progress=false",
                                          "threads=2", "profile.enabled=false", *extra])
    return Path(train(cfg).artifact)


@pytest.fixture(scope="module")
def llama_adapter(tiny_base_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gen")
    data = write_jsonl(tmp / "train.jsonl", reverse_rows(64, seed=0))
    return train_adapter(tiny_base_dir, data, tmp / "reverse", "max_steps=8", "batch_size=8", "optim.lr=5e-3",
                         "data.max_length=64")


def test_adapter_generation_and_perplexity(llama_adapter, tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", reverse_rows(6, seed=9))
    cfg = EvalConfig(data=str(test), task="instruction", max_new_tokens=6, batch_size=3, tracking=tracking(tmp_path))
    result, out = evaluate(cfg.model_copy(update={"model": str(llama_adapter)}), progress=False)
    assert out == Path(f"{llama_adapter}.eval") and (out / "eval_report.html").is_file()
    for key in ("bleu", "rouge1", "rougeL", "perplexity", "latency_mean_s", "tokens_per_s"):
        assert math.isfinite(result.metrics[key]), key
    assert result.model["kind"] == "adapter" and result.model["source"] == "artifact"
    nll = sum(s["nll"] for s in result.samples)
    tokens = sum(s["scored_tokens"] for s in result.samples)
    assert result.metrics["perplexity"] == pytest.approx(perplexity(nll, tokens))


def test_score_matches_a_manual_forward_pass(llama_adapter):
    predictor = LocalPredictor(str(llama_adapter), task="instruction")
    prompt = predictor.render_instruction("Reverse the words.", "apple river stone")
    [(nll, count)] = predictor.score([prompt], ["stone river apple"])
    tok = predictor.tokenizer
    prompt_ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    cont_ids = tok("stone river apple", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + cont_ids])
    with torch.inference_mode():
        logprobs = predictor.model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    expected = -sum(logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(cont_ids))
    assert count == len(cont_ids) and nll == pytest.approx(expected, rel=1e-4)
    # batching with padding must not change a row's score
    batched = predictor.score([prompt, "x"], ["stone river apple", "a much longer continuation than the other"])
    assert batched[0][0] == pytest.approx(nll, rel=1e-4)


def test_human_eval_sheet_from_real_models(llama_adapter, tiny_base_dir, tmp_path):
    from training.evaluation.human import collect_responses, export_sheet, load_prompts

    prompts = write_jsonl(tmp_path / "prompts.jsonl", reverse_rows(3, seed=2))
    items = load_prompts(prompts)
    answers = collect_responses(items, [f"adapter={llama_adapter}", f"base={tiny_base_dir}"], [], max_new_tokens=5)
    assert set(answers) == {"adapter", "base"} and all(len(v) == 3 for v in answers.values())
    paths = export_sheet(items, answers, tmp_path / "sheet", ["helpfulness"])
    key = json.loads(paths["key"].read_text())
    for row in map(json.loads, paths["jsonl"].read_text().splitlines()):
        where = key["rows"][row["row_id"]]
        index = int(where["prompt_id"])
        for letter, model in where["positions"].items():
            assert row[f"response_{letter}"] == answers[model][index]


def prepare_banking77(src: Path, dest: Path, per_class: int, test_rows: int, seed: int = 0) -> Path:
    """A prepared dataset dir (as `tuneserve data prepare` writes) from the real banking77 CSVs."""
    labels = json.loads((src / "categories.json").read_text())

    def read(name: str) -> list[dict]:
        with open(src / name, newline="") as handle:
            return [{"text": r["text"], "label": r["category"]} for r in csv.DictReader(handle)]

    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for row in read("train.csv"):
        by_label.setdefault(row["label"], []).append(row)
    train, validation = [], []
    for label in labels:
        rows = rng.sample(by_label[label], per_class + 1)
        train += rows[:per_class]
        validation += rows[per_class:]
    rng.shuffle(train)
    splits = {"train": train, "validation": validation, "test": rng.sample(read("test.csv"), test_rows)}
    dest.mkdir(parents=True)
    for name, rows in splits.items():
        write_jsonl(dest / f"{name}.jsonl", rows)
    meta = {"task": "classification", "fingerprint": f"banking77-{per_class}-{test_rows}-{seed}", "labels": labels,
            "rows": {k: len(v) for k, v in splits.items()}, "class_weights": None, "fields": {}}
    (dest / "dataset.json").write_text(json.dumps(meta))
    return dest


@pytest.mark.integration
def test_banking77_minilm_adapter_full_report(shared_data, tmp_path):
    data = prepare_banking77(shared_data / "banking77", tmp_path / "banking77", per_class=8, test_rows=200)
    adapter = train_adapter("all-minilm-l6-v2", data, tmp_path / "b77", "task=classification", "max_steps=20",
                            "batch_size=16", "optim.lr=5e-3", "lora.r=8", "data.max_length=32")
    cfg = EvalConfig(model=str(adapter), data=str(data), batch_size=32, tracking=tracking(tmp_path))
    result, out = evaluate(cfg, progress=False)
    metrics = result.metrics
    assert result.data["rows"] == 200 and len(result.details["labels"]) == 77
    for key in ("accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "ece"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["accuracy"] > 3 / 77, "a briefly trained adapter is well above chance (1/77)"
    assert metrics["micro_f1"] == pytest.approx(metrics["accuracy"])
    assert sum(map(sum, result.details["confusion_matrix"])) == 200
    assert set(result.plots) == {"confusion_matrix.png", "reliability.png"}
    for name in ("eval_report.json", "eval_report.md", "eval_report.html", "samples.jsonl", *result.plots):
        assert (out / name).stat().st_size > 0, name
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| card_arrival |" in (out / "eval_report.md").read_text()
    print(f"\nbanking77 MiniLM LoRA (20 steps, 8/class): {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")



def test_a_classifier_scores_each_text_as_it_would_alone_in_any_batch():
    """BERT-style encoders have absolute positions: left padding shifted a short text's tokens and its label then
    depended on the longest text in its batch (MiniLM on emotion: 0.853 validation accuracy instead of 0.893)."""
    from training.artifact.loading import load_base

    texts = ["card declined", "I was charged twice for the same coffee this morning and I want my money back now"]
    base = load_base("all-minilm-l6-v2", task="classification", labels=["a", "b", "c"])
    assert base.tokenizer.padding_side == "right"
    torch.manual_seed(0)
    with torch.no_grad():
        base.model.classifier.weight.normal_(0, 1.0)  # a head that separates inputs
        together = base.model(**base.tokenizer(texts, padding=True, return_tensors="pt")).logits
        alone = torch.cat([base.model(**base.tokenizer([t], return_tensors="pt")).logits for t in texts])
    assert torch.allclose(together, alone, atol=1e-4), (together - alone).abs().max()
