"""`tuneserve demo`: the whole chain on the embedded defaults, in a few minutes on 2 CPU cores.

    tuneserve demo                      # base → LoRA → int8 → serve with a key → answer → stop
    tuneserve demo --keep-serving       # leave the server up and print how to curl it

Steps: build (or reuse) the tiny base; LoRA SFT on the shipped demo instructions; merge
and quantize to an int8 checkpoint; create an API key; start the Ray Serve app on the
artifacts directory; ask the base, the adapter and the int8 model the same question over
HTTP with the key; print a summary.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from tuneserve.commands.common import console

DEMO_PROMPT = "What is the capital of France?"


def demo_data_path() -> Path:
    return Path(str(resources.files("training.demo").joinpath("instructions.jsonl")))


def _step(number: int, text: str) -> None:
    console.rule(f"[bold cyan]{number}/6 {text}")


def _ask(url: str, key: str, model: str, prompt: str, max_tokens: int = 24) -> str:
    """One chat completion: the server renders the tokenizer's chat template, as in training."""
    import httpx

    response = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": model, "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": max_tokens, "temperature": 0})
    if response.status_code != 200:
        return f"<HTTP {response.status_code}: {response.text[:200]}>"
    return response.json()["choices"][0]["message"]["content"].strip()


def run_demo(workdir: Path, port: int, keep_serving: bool, base_steps: int | None, train_steps: int | None) -> dict:
    import time

    from service import launcher
    from service.keys import create_key, write_keys
    from training.base.build import BaseBuildConfig, build_base
    from training.quantize.config import QuantizeConfig
    from training.quantize.pipeline import quantize
    from training.train import TrainConfig, train

    started = time.monotonic()
    artifacts = workdir / "artifacts"
    adapter_dir, int8_dir = artifacts / "demo-lora", artifacts / "demo-lora-int8"
    artifacts.mkdir(parents=True, exist_ok=True)

    _step(1, "tiny base model (built once, then cached)")
    base_cfg = BaseBuildConfig() if base_steps is None else BaseBuildConfig(steps=base_steps)
    base_dir = build_base(base_cfg, progress=True)
    console.print(f"base: {base_dir}")

    _step(2, "LoRA fine-tuning on the demo instructions")
    train_cfg = TrainConfig(base="tiny-llama", method="lora", output=str(adapter_dir), name="demo-lora",
                            overwrite=True, data={"path": str(demo_data_path())}, epochs=3,
                            max_steps=train_steps, batch_size=8, optim={"lr": 3e-3},
                            profile={"embed": False})
    outcome = train(train_cfg)
    metrics = outcome.manifest.metrics
    console.print(f"adapter: {outcome.artifact}  metrics: { {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)} }")

    _step(3, "merge + int8 quantization")
    manifest = quantize(adapter_dir, QuantizeConfig(scheme="torch-int8", merge=True), int8_dir, overwrite=True,
                        status=lambda message: console.print(f"  {message}"))
    quant = manifest.quantization or {}
    console.print(f"int8 model: {int8_dir}  size ratio vs fp32: {quant.get('size_ratio')}")

    _step(4, "API key")
    plain, record = create_key(owner="demo", scopes=["infer", "admin"])
    keys_file = workdir / "keys.json"
    write_keys(keys_file, [record])
    console.print(f"key id {record.id} stored hashed in {keys_file} (the key itself is shown once, below)")

    _step(5, "serving on Ray Serve")
    server = launcher.start(None, [f"artifacts_dir={artifacts}", f"keys_file={keys_file}", f"port={port}",
                                   "api_keys_env=null"])
    try:
        _step(6, "asking each model over HTTP")
        answers = {model: _ask(server.url, plain, model, DEMO_PROMPT) for model in ("base", "demo-lora", "demo-lora-int8")}
        import httpx

        unauthorized = httpx.post(f"{server.url}/v1/completions", json={"model": "base", "prompt": "hi"}, timeout=30)
        console.print(f"[bold]prompt:[/] {DEMO_PROMPT}")
        for model, text in answers.items():
            console.print(f"  [green]{model:>15}[/]: {text!r}")
        console.print(f"without a key the server answers HTTP {unauthorized.status_code}")
        summary = {"base": str(base_dir), "adapter": str(adapter_dir), "quantized": str(int8_dir),
                   "keys_file": str(keys_file), "url": server.url, "answers": answers,
                   "seconds": round(time.monotonic() - started, 1)}
        console.rule("[bold green]done")
        console.print(f"artifacts: {artifacts}\nserver:    {server.url}  (took {summary['seconds']} s)")
        console.print("try it:\n"
                      f"  curl -s {server.url}/v1/completions -H 'Authorization: Bearer {plain}' "
                      "-H 'Content-Type: application/json' "
                      f"-d '{{\"model\": \"demo-lora\", \"prompt\": \"{DEMO_PROMPT}\", \"max_tokens\": 16}}'")
        if keep_serving:
            console.print("serving until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return summary
    finally:
        launcher.stop()
        console.print("server stopped")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        workdir: Path = typer.Option(Path("runs/demo"), help="Where artifacts and the key file go."),
        port: int = typer.Option(8000, help="HTTP port of the server."),
        keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the server running until Ctrl-C."),
        base_steps: int = typer.Option(None, help="Pretraining steps of the tiny base (default: the base config's)."),
        train_steps: int = typer.Option(None, help="Cap the LoRA optimizer steps (default: 3 epochs)."),
    ) -> None:
        """Build the tiny base, fine-tune a LoRA adapter, quantize it, serve it with an API key and ask it."""
        run_demo(workdir.resolve(), port, keep_serving, base_steps, train_steps)
