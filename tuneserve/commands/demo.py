"""`tuneserve demo`: a real pretrained base fine-tuned, served and asked, in a few minutes on 2 CPU cores.

    tuneserve demo                      # convert → LoRA SFT → intent classifier → serve with a key → ask → stop
    tuneserve demo --keep-serving       # leave the server up and print how to curl it

Steps: convert SmolLM2-135M-Instruct from its GGUF file once (`smollm2-135m`, cached);
LoRA SFT on a slice of `../shared/data/alpaca_en_demo` (or the shipped instructions); a
LoRA intent classifier on the MiniLM encoder over twelve banking77 intents (or the shipped
tickets), merged into a full model; an API key; the Ray Serve app started in its own
process (its logs go to `<workdir>/server.log`); the base and the adapter answer the same
questions over HTTP and the classifier labels a sentence through /v1/classify.
Third-party warnings stay out of the output; the server is stopped at the end unless
--keep-serving.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from tuneserve.commands.common import console

QUESTIONS = ("What is the capital of France?", "Give me a synonym for the word 'happy'.")
SFT_ROWS, SFT_BATCH = 160, 4  # one epoch of 36 steps (10% held out): ~2 minutes on 2 cores
INTENT_STEPS = 96  # batches of 32: two passes over the banking77 slice, many over the small shipped tickets
STEPS = 6


def _step(number: int, text: str) -> None:
    console.rule(f"[bold cyan]{number}/{STEPS} {text}")


def quiet_third_party() -> None:
    """Warnings and log lines from torch, transformers, PEFT, bitsandbytes and Ray are not the demo's story."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "ray", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _post(url: str, key: str | None, path: str, body: dict):
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=180)


def ask(url: str, key: str, model: str, prompt: str, max_tokens: int = 32) -> str:
    """One chat completion: the server renders the tokenizer's chat template, as in training."""
    response = _post(url, key, "/v1/chat/completions", {"model": model, "max_tokens": max_tokens, "temperature": 0,
                                                         "messages": [{"role": "user", "content": prompt}]})
    if response.status_code != 200:
        return f"<HTTP {response.status_code}: {response.text[:200]}>"
    return response.json()["choices"][0]["message"]["content"].strip()


def classify(url: str, key: str, model: str, text: str) -> tuple[str, float]:
    response = _post(url, key, "/v1/classify", {"model": model, "input": [text], "top_k": 1})
    if response.status_code != 200:
        return f"<HTTP {response.status_code}: {response.text[:200]}>", 0.0
    best = response.json()["data"][0]
    return best["label"], best["score"]


def curl_line(url: str, key: str, model: str) -> str:
    """One line to paste into a shell (printed unwrapped, without markup)."""
    body = {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": QUESTIONS[0]}]}
    return (f"  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'")


def train_sft(base: str, data: Path, out: Path, steps: int | None) -> dict:
    from training.train import TrainConfig, train

    cfg = TrainConfig(base=base, method="lora", output=str(out), name=out.name, overwrite=True,
                      data={"path": str(data), "max_length": 128}, epochs=1, max_steps=steps, batch_size=SFT_BATCH,
                      optim={"lr": 1e-3}, lora={"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                      profile={"embed": False})
    return train(cfg).manifest.metrics


def train_intents(data: Path, out: Path, steps: int | None) -> tuple[Path, dict]:
    """LoRA on MiniLM, merged into a full model so the server runs it beside the LLM base."""
    from training.artifact.paths import MINILM
    from training.train import TrainConfig, train

    cfg = TrainConfig(base=MINILM, task="classification", method="lora", output=str(out), name=out.name,
                      overwrite=True, merge=True, data={"path": str(data), "max_length": 48}, epochs=100,
                      max_steps=steps or INTENT_STEPS, batch_size=32, group_by_length=True, optim={"lr": 2e-3},
                      lora={"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"]},
                      profile={"embed": False})
    outcome = train(cfg)
    return outcome.merged, outcome.manifest.metrics


def wait_for_interrupt(proc) -> None:
    """Until Ctrl-C or SIGTERM (the server runs in its own session: the caller's finally stops it)."""
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}


def run_demo(workdir: Path, port: int, keep_serving: bool, train_steps: int | None,
             data_dir: Path | None = None) -> dict:
    quiet_third_party()
    from rich.markup import escape

    from service import server_process
    from service.keys import create_key, write_keys
    from training.artifact.paths import SMOLLM2
    from training.base.gguf import convert_base
    from training.demo.slices import find_shared_data, instruction_slice, intent_slice

    started = time.monotonic()
    artifacts = workdir / "artifacts"
    adapter_dir = artifacts / "demo-lora"
    artifacts.mkdir(parents=True, exist_ok=True)
    shared = find_shared_data(data_dir)

    _step(1, f"real base {SMOLLM2} (SmolLM2-135M-Instruct, converted once)")
    base_dir = convert_base(SMOLLM2, progress=True)
    console.print(f"base: {base_dir}")

    _step(2, "LoRA fine-tuning of the base on instructions")
    sft_data, sft_source = instruction_slice(shared, workdir / "data" / "instructions.jsonl", SFT_ROWS)
    console.print(f"data: {SFT_ROWS} short rows of {sft_source}")
    metrics = train_sft(SMOLLM2, sft_data, adapter_dir, train_steps)
    console.print(f"adapter: {adapter_dir}  metrics: {_rounded(metrics)}")

    _step(3, "LoRA intent classifier on the MiniLM encoder")
    intents = intent_slice(shared, workdir / "data" / "intents.csv")
    console.print(f"data: {len(intents.labels)} intents of {intents.source}")
    classifier, metrics = train_intents(intents.path, workdir / "classifier" / "intents", train_steps)
    console.print(f"classifier: {classifier}  metrics: {_rounded(metrics)}")

    _step(4, "API key")
    plain, record = create_key(owner="demo", scopes=["infer", "admin"])
    keys_file = workdir / "keys.json"
    write_keys(keys_file, [record])
    console.print(f"key id {record.id} stored hashed in {keys_file} (the key itself is shown only with --keep-serving)")

    _step(5, "serving on Ray Serve")
    log_path = workdir / "server.log"
    overrides = [f"base_model={SMOLLM2}", f"artifacts_dir={artifacts}", f"models=[{classifier}]",
                 f"keys_file={keys_file}", f"port={port}", "api_keys_env=null", "grpc_port=null"]
    proc, url = server_process.spawn(overrides, log_path, timeout_s=600)
    console.print(f"server: {url}  (logs: {log_path})")
    try:
        _step(6, "asking over HTTP with the key")
        answers = {}
        for question in QUESTIONS:
            console.print(f"[bold]question:[/] {question}")
            for model in ("base", adapter_dir.name):
                answers[(model, question)] = ask(url, plain, model, question)
                console.print(f"  [green]{model:>10}[/]: {escape(answers[(model, question)])}")
        label, score = classify(url, plain, classifier.name, intents.question)
        mark = "[green]right[/]" if label == intents.expected else f"[red]expected {intents.expected}[/]"
        console.print(f"[bold]/v1/classify[/] {intents.question!r} → {escape(label)} ({score:.2f}, {mark})")
        unauthorized = _post(url, None, "/v1/completions", {"model": "base", "prompt": "hi"})
        console.print(f"without a key the server answers HTTP {unauthorized.status_code}")
        summary = {"base": str(base_dir), "adapter": str(adapter_dir), "classifier": str(classifier),
                   "keys_file": str(keys_file), "url": url, "intent": label, "intent_expected": intents.expected,
                   "answers": {f"{m}: {q}": a for (m, q), a in answers.items()},
                   "seconds": round(time.monotonic() - started, 1)}
        console.rule("[bold green]done")
        console.print(f"artifacts: {artifacts}   took {summary['seconds']} s")
        if keep_serving:
            console.print(f"serving at {url} until Ctrl-C; try:")
            console.print(curl_line(url, plain, adapter_dir.name), markup=False, highlight=False, soft_wrap=True)
            wait_for_interrupt(proc)
        return summary
    finally:
        server_process.terminate(proc)
        console.print("server stopped")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        workdir: Path = typer.Option(Path("runs/demo"), help="Where artifacts, data slices, the key file and the server log go."),
        port: int = typer.Option(8000, help="HTTP port of the server."),
        keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the server running until Ctrl-C."),
        train_steps: int = typer.Option(None, help="Cap the optimizer steps of both trainings (default: the demo's)."),
        data_dir: Path = typer.Option(None, help="Shared real data (default: ../shared/data when present)."),
    ) -> None:
        """Fine-tune the real SmolLM2 base and a MiniLM intent classifier, serve both with an API key and ask them."""
        run_demo(workdir.resolve(), port, keep_serving, train_steps, data_dir)
