"""Baseline for the serving benchmark: the naive way to serve a LoRA adapter.

FastAPI + uvicorn, one `model.generate` per request, one request at a time (a lock), no
batching, no streaming, no cache. OpenAI-shaped `/v1/completions` so the same load
generator drives it and tuneserve; `ignore_eos: true` gives exactly `max_tokens` tokens (min_new_tokens),
as tuneserve's field does, so the two compare tokens/s on equal answers.

    python benchmarks/naive_server.py --base tiny-llama --adapter artifacts/a1 --port 8200
    proc = spawn_naive(base_dir, adapter_dir, port, log_path)   # from a benchmark: started and ready
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_app(base: str, adapter: str | None):
    import torch
    from fastapi import FastAPI

    from training.artifact import load_artifact
    from training.artifact.loading import attach_adapter, load_base

    torch.set_num_threads(2)
    loaded = load_base(base)
    model = loaded.model
    if adapter:
        model = attach_adapter(model, load_artifact(adapter, expect_base_sha256=loaded.sha256), "adapter")
    tokenizer = loaded.tokenizer
    lock = asyncio.Lock()
    app = FastAPI()

    def generate(prompt: str, max_tokens: int, ignore_eos: bool) -> tuple[str, int, int]:
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():  # ignore_eos: exactly max_tokens tokens, as tuneserve's field gives
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=max_tokens, min_new_tokens=max_tokens if ignore_eos else 0,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True), enc["input_ids"].shape[1], len(new)

    @app.post("/v1/completions")
    async def completions(body: dict):
        async with lock:
            text, prompt_tokens, completion_tokens = await asyncio.to_thread(
                generate, body["prompt"], int(body.get("max_tokens", 16)), bool(body.get("ignore_eos")))
        return {"object": "text_completion", "model": body.get("model"),
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.get("/ready")
    async def ready():
        return {"status": "ok"}

    return app


def spawn_naive(base_dir: Path, adapter: Path, port: int, log_path: Path) -> subprocess.Popen:
    """This server in its own process group, once /ready answers (the log's tail in the error if it never does)."""
    import httpx

    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--base", str(base_dir),
                                 "--adapter", str(adapter), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(log_path.read_text()[-2000:])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny-llama")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    uvicorn.run(build_app(args.base, args.adapter), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
