"""Task runners: rows + a Predictor -> metrics, per-example scores (for bootstrap) and per-example records.

One registry entry per task: `classification` ({text, label}: accuracy, P/R/F1, confusion
matrix, ECE), `instruction` ({instruction, input, output}: BLEU, ROUGE, perplexity, latency),
`qa` ({context, question, answers}: SQuAD EM/F1, latency) and `text` ({text}: perplexity).

    result = TASK_RUNNERS["qa"](predictor, data, RunSettings(max_new_tokens=32))
    result.metrics["f1"], result.per_sample["f1"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from training.evaluation import metrics as M
from training.evaluation.datasets import EvalData
from training.evaluation.predictions import Generation, Predictor, ScoringUnsupported
from training.evaluation.prompts import extract_answer, instruction_prompt, qa_prompt


@dataclass
class RunSettings:
    batch_size: int = 8
    max_new_tokens: int = 64
    ece_bins: int = 15
    perplexity: bool = True
    progress: bool = True


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]
    per_sample: dict[str, list[float]]
    samples: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def batches(items: Sequence[Any], size: int, description: str, progress: bool) -> Iterator[Sequence[Any]]:
    """Yield slices of `items`, advancing a rich progress bar when `progress` is on."""
    chunks = [items[i:i + size] for i in range(0, len(items), max(size, 1))]
    if not progress:
        yield from chunks
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=len(items))
        for chunk in chunks:
            yield chunk
            bar.advance(task, len(chunk))


def map_batches(items: Sequence[Any], fn: Callable[[Sequence[Any]], list[Any]], settings: RunSettings,
            description: str) -> list[Any]:
    out: list[Any] = []
    for chunk in batches(items, settings.batch_size, description, settings.progress):
        out.extend(fn(chunk))
    return out


def latency_metrics(generations: list[Generation]) -> dict[str, float]:
    latencies = np.array([g.latency_s for g in generations])
    result = {"latency_mean_s": float(latencies.mean()), "latency_p50_s": float(np.percentile(latencies, 50)),
              "latency_p95_s": float(np.percentile(latencies, 95))}
    tokens = [g.tokens for g in generations]
    if all(t is not None for t in tokens) and latencies.sum() > 0:
        result["tokens_per_s"] = float(sum(tokens) / latencies.sum())
        result["mean_new_tokens"] = float(np.mean(tokens))
    return result


def _generate(predictor: Predictor, prompts: list[str], settings: RunSettings) -> list[Generation]:
    return map_batches(prompts, lambda chunk: predictor.generate(list(chunk), settings.max_new_tokens), settings,
                   "generating")


def _perplexity(predictor: Predictor, prompts: list[str], targets: list[str], settings: RunSettings,
                result: TaskResult) -> None:
    if not settings.perplexity:
        return
    pairs = list(zip(prompts, targets))
    try:
        scored = map_batches(pairs, lambda chunk: predictor.score([p for p, _ in chunk], [t for _, t in chunk]),
                         settings, "scoring")
    except ScoringUnsupported as exc:
        result.notes.append(f"perplexity not computed: {exc}")
        return
    total_nll = sum(n for n, _ in scored)
    total_tokens = sum(k for _, k in scored)
    result.metrics["perplexity"] = M.perplexity(total_nll, total_tokens)
    result.metrics["nll_per_token"] = total_nll / total_tokens
    result.per_sample["nll_per_token"] = [n / k if k else math.nan for n, k in scored]
    for sample, (nll, k) in zip(result.samples, scored):
        sample["nll"], sample["scored_tokens"] = nll, k


def run_classification(predictor: Predictor, data: EvalData, settings: RunSettings) -> TaskResult:
    texts = [row["text"] for row in data.rows]
    preds = map_batches(texts, lambda chunk: predictor.classify(list(chunk)), settings, "classifying")
    gold = [row["label"] for row in data.rows]
    labels = list(data.labels or [])
    labels += sorted({p.label for p in preds} - set(labels))
    report = M.classification_report(gold, [p.label for p in preds], labels=labels,
                                     confidences=[p.confidence for p in preds], n_bins=settings.ece_bins)
    headline = {k: v for k, v in report.items() if isinstance(v, float)}
    samples = [{"text": t, "gold": g, "prediction": p.label, "confidence": p.confidence, "correct": g == p.label}
               for t, g, p in zip(texts, gold, preds)]
    details = {k: report[k] for k in ("labels", "per_class", "confusion_matrix", "calibration_bins")}
    return TaskResult("classification", headline, {"accuracy": [float(s["correct"]) for s in samples]}, samples,
                      details)


def run_instruction(predictor: Predictor, data: EvalData, settings: RunSettings) -> TaskResult:
    prompts = [instruction_prompt(predictor, row) for row in data.rows]
    refs = [row["output"] for row in data.rows]
    gens = _generate(predictor, prompts, settings)
    hyps = [g.text.strip() for g in gens]
    bleu, rouge = M.bleu(hyps, refs), M.rouge(hyps, refs)
    headline = {"bleu": bleu["bleu"], **{k: rouge[k] for k in ("rouge1", "rouge2", "rougeL")}, **latency_metrics(gens)}
    per_sample = {"bleu": bleu["per_sample"], **rouge["per_sample"]}
    samples = [{"instruction": row["instruction"], "input": row.get("input", ""), "reference": ref, "prediction": hyp,
                "bleu": b, "rougeL": r, "latency_s": g.latency_s}
               for row, ref, hyp, b, r, g in zip(data.rows, refs, hyps, bleu["per_sample"], rouge["per_sample"]["rougeL"],
                                                 gens)]
    result = TaskResult("instruction", headline, per_sample, samples, {"bleu_signature": bleu["signature"]})
    _perplexity(predictor, prompts, refs, settings, result)
    return result


def run_qa(predictor: Predictor, data: EvalData, settings: RunSettings) -> TaskResult:
    prompts = [qa_prompt(predictor, row) for row in data.rows]
    gens = _generate(predictor, prompts, settings)
    answers = [extract_answer(g.text) for g in gens]
    scores = [M.squad_em_f1(a, row["answers"]) for a, row in zip(answers, data.rows)]
    em = [s[0] for s in scores]
    f1 = [s[1] for s in scores]
    headline = {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1)), **latency_metrics(gens)}
    samples = [{"question": row["question"], "answers": row["answers"], "prediction": a, "raw": g.text,
                "exact_match": e, "f1": f, "latency_s": g.latency_s}
               for row, a, g, e, f in zip(data.rows, answers, gens, em, f1)]
    return TaskResult("qa", headline, {"exact_match": em, "f1": f1}, samples,
                      notes=["EM and F1 are SQuAD-normalized, max over gold answers, in percent"])


def run_text(predictor: Predictor, data: EvalData, settings: RunSettings) -> TaskResult:
    result = TaskResult("text", {}, {}, [{"text": row["text"][:200]} for row in data.rows])
    _perplexity(predictor, [""] * len(data.rows), [row["text"] for row in data.rows], settings, result)
    if "perplexity" not in result.metrics:
        result.notes.append("the text task measures only perplexity, which this model source cannot provide")
    return result


TASK_RUNNERS: dict[str, Callable[[Predictor, EvalData, RunSettings], TaskResult]] = {
    "classification": run_classification,
    "instruction": run_instruction,
    "qa": run_qa,
    "text": run_text,
}
