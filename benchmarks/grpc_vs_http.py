"""Benchmark P7: gRPC unary latency vs the OpenAI-compatible HTTP API, on the real Ray Serve app.

One run starts the app (`service.launcher`, response cache off, API-key auth on) and sends the
same greedy completion over both transports, interleaved call by call so both see the same
engine load: `Generate` through `service.client.TuneserveClient` and `POST /v1/completions`
through a keep-alive httpx client. Scenarios: 1 new token (transport-dominated), 16 new tokens
sequentially (P7), and 16 new tokens with 4 concurrent callers. Goal P7: gRPC p50 / HTTP p50 ≤ 1.0.

    python benchmarks/grpc_vs_http.py [--base tiny-llama] [--requests 100]
Writes benchmarks/results/grpc_vs_http.{json,md}.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import (  # noqa: E402
    RAY_TMPDIR, arguments, command, goals_table, load_average, machine, provenance, versions, write_results)

os.environ.setdefault("RAY_TMPDIR", RAY_TMPDIR)
PROMPT = "To be, or not to be, that is the question:"
SCENARIOS = [("1 token, sequential", 1, 1), ("16 tokens, sequential", 16, 1), ("16 tokens, 4 concurrent", 16, 4)]
P7_SCENARIO = "16 tokens, sequential"


def start_app(base: str, workdir: Path):
    from service import launcher
    from service.keys import add_key, create_key
    from service.ports import free_port

    key, record = create_key("bench", ["infer"], ["*"])
    add_key(workdir / "keys.json", record)
    http_port, grpc_port = free_port(), free_port()
    overrides = [f"base_model={base}", "artifacts_dir=null", f"keys_file={workdir / 'keys.json'}", "api_keys_env=null",
                 "cache.enabled=false", f"port={http_port}", f"grpc_port={grpc_port}"]
    server = launcher.start(None, overrides)
    return server.url, f"127.0.0.1:{grpc_port}", key


def transports(http_url: str, grpc_target: str, key: str, model: str, max_tokens: int):
    import httpx

    from service.client import TuneserveClient

    grpc_client = TuneserveClient(grpc_target, key)
    http_client = httpx.Client(base_url=http_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}

    def via_grpc() -> str:
        return grpc_client.generate(PROMPT, model=model, max_tokens=max_tokens, temperature=0).choices[0].text

    def via_http() -> str:
        response = http_client.post("/v1/completions", json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["text"]

    return {"grpc": via_grpc, "http": via_http}, lambda: (grpc_client.close(), http_client.close())


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(calls: dict, requests: int, concurrency: int) -> dict[str, list[float]]:
    """Each worker alternates transports call by call (order flipped every round)."""
    names = list(calls)

    def worker(w: int) -> dict[str, list[float]]:
        out = {n: [] for n in names}
        for i in range(requests // concurrency):
            for name in (names if (i + w) % 2 == 0 else names[::-1]):
                out[name].append(timed(calls[name]))
        return out

    with ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(worker, range(concurrency)))
    return {n: [x for p in parts for x in p[n]] for n in names}


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in seconds)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--requests", type=int, default=100, help="requests per transport per scenario")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    from service import launcher

    with tempfile.TemporaryDirectory(prefix="grpc-bench-") as tmp:
        http_url, grpc_target, key = start_app(args.base, Path(tmp))
        try:
            model = base_model_id(grpc_target, key)
            scenarios = []
            for name, max_tokens, concurrency in SCENARIOS:
                calls, close = transports(http_url, grpc_target, key, model, max_tokens)
                texts = {n: fn() for n, fn in calls.items()}
                assert texts["grpc"] == texts["http"], f"transports disagree: {texts}"
                measure(calls, args.warmup, 1)
                stats = {n: summary(xs) for n, xs in measure(calls, args.requests, concurrency).items()}
                close()
                ratio = round(stats["grpc"]["p50_ms"] / stats["http"]["p50_ms"], 3)
                scenarios.append({"scenario": name, "max_tokens": max_tokens, "concurrency": concurrency,
                                  "grpc": stats["grpc"], "http": stats["http"], "p50_ratio_grpc_over_http": ratio})
                print(f"{name}: gRPC p50 {stats['grpc']['p50_ms']} ms, HTTP p50 {stats['http']['p50_ms']} ms, ratio {ratio}")
        finally:
            launcher.stop()
    write_report(args, scenarios)


def base_model_id(grpc_target: str, key: str) -> str:
    from service.client import TuneserveClient

    with TuneserveClient(grpc_target, key) as client:
        return next(m.id for m in client.list_models() if m.kind == "base")


def write_report(args, scenarios: list[dict]) -> None:
    p7 = next(s for s in scenarios if s["scenario"] == P7_SCENARIO)["p50_ratio_grpc_over_http"]
    goals = [{"id": "P7", "measure": f"gRPC unary p50 / HTTP p50 ({P7_SCENARIO}, same prompt, one run)",
              "value": p7, "goal": "<= 1.0", "met": p7 <= 1.0}]
    report = {"benchmark": "grpc_vs_http", "goals": goals, "scenarios": scenarios, "prompt": PROMPT,
              "setup": "real Ray Serve app (Ingress: FastAPI + grpc.aio server; Engine: ServingCore), cache off, auth on",
              "command": command(), "requests_per_transport": args.requests,
              "machine": machine(load_average_at_end=load_average()),
              "versions": versions("grpcio", "protobuf", "ray", "fastapi", "uvicorn", "httpx", "torch")}
    lines = ["# gRPC vs HTTP latency (P7)", "", __doc__.split("\n\n")[1].replace("\n", " "), "", *provenance(report), "",
             "| scenario | gRPC p50 ms | HTTP p50 ms | gRPC p90 ms | HTTP p90 ms | p50 ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {s['scenario']} | {s['grpc']['p50_ms']} | {s['http']['p50_ms']} | {s['grpc']['p90_ms']} | "
              f"{s['http']['p90_ms']} | {s['p50_ratio_grpc_over_http']} |" for s in scenarios]
    lines += ["", *goals_table(goals)]
    path = write_results("grpc_vs_http", report, "\n".join(lines))
    print(f"P7 = {p7} (goal <= 1.0) -> {path}")


if __name__ == "__main__":
    main()
