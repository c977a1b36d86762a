"""Tail latency under load (P11 of benchmarks/serving.py): 16 closed-loop streaming clients, and where the tail
comes from.

Not a benchmark on its own (serving.py runs it). Each client keeps one keep-alive stdlib `http.client`
connection (the load generator shares the cores with the server, so it is lean), sends its requests one
after another with unique prompts and fixed-length answers (`ignore_eos`), streams them (SSE) and times
  - TTFT: from sending the request to the first `data:` chunk carrying text,
  - end to end: from sending to `data: [DONE]`.
P11a is end-to-end p95 / p50 (goal <= 2.0), P11b TTFT p95 / p50 (goal <= 3.0). Where the tail comes from:
the engine's per-request histograms (`tuneserve_queue_wait_seconds`, `tuneserve_prefill_seconds`,
`tuneserve_decode_seconds`, scraped from `/metrics` before and after the phase) give each part's mean and an
upper bound of its p95 (the bucket edge it falls in) over the phase's requests.

    from benchmarks.latency import drive_streaming, engine_timing, timing_breakdown
    before = engine_timing(url, key)
    tail = drive_streaming(url, key, ["a1"], requests=4, max_tokens=64)
    tail["breakdown"] = timing_breakdown(before, engine_timing(url, key))
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

CLIENTS = 16
PARTS = ("queue_wait", "prefill", "decode")  # tuneserve_<part>_seconds histograms of the engine


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q`th percentile (0-100) of `values`; NaN when empty."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def tail_ratio(values: list[float], high: float = 95, low: float = 50) -> float:
    """p`high` / p`low` of `values` (how much longer the tail is than the typical request)."""
    return percentile(values, high) / percentile(values, low)


def sse_chunk(line: bytes) -> dict | str | None:
    """One SSE line: the parsed JSON of a `data: {...}` line, "done" for `data: [DONE]`, None for anything else."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return "done"
    return json.loads(data) if data.startswith(b"{") else None


def has_content(chunk: dict) -> bool:
    """Whether a completions or chat chunk carries generated text (not only a role, usage or a finish)."""
    for choice in chunk.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def read_stream(response, started: float, clock=time.perf_counter) -> dict:
    """Read an SSE response line by line: {"ttft_s", "total_s", "completion_tokens"} (times since `started`;
    completion tokens from the usage chunk, None without one). Raises when the stream ends before [DONE]."""
    ttft = tokens = None
    while True:
        line = response.readline()
        if not line:
            raise RuntimeError("the stream ended before data: [DONE]")
        chunk = sse_chunk(line)
        if chunk == "done":
            return {"ttft_s": ttft, "total_s": clock() - started, "completion_tokens": tokens}
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            raise RuntimeError(f"the stream failed: {chunk['error']}")
        if ttft is None and has_content(chunk):
            ttft = clock() - started
        if chunk.get("usage"):
            tokens = chunk["usage"].get("completion_tokens")


def drive_streaming(url: str, key: str, models: list[str], requests: int, max_tokens: int, prompts: list[str],
                    clients: int = CLIENTS) -> dict:
    """`clients` closed-loop clients, each streaming `requests` completions in turn (unique prompts, exactly
    `max_tokens` tokens each): tokens/s, TTFT and end-to-end percentiles and the P11 ratios."""
    import http.client

    address = urlsplit(url)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connections = [http.client.HTTPConnection(address.hostname, address.port, timeout=300) for _ in range(clients)]
    for connection in connections:  # connected before the clock starts
        connection.request("GET", "/ready", headers=headers)
        connection.getresponse().read()
    start = threading.Barrier(clients + 1)

    def client(i: int) -> list[dict]:
        out = []
        start.wait()
        for r in range(requests):
            body = {"model": models[(i + r) % len(models)], "max_tokens": max_tokens, "temperature": 0,
                    "prompt": f"[{i}.{r}] " + prompts[(i + r) % len(prompts)], "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            started = time.perf_counter()
            connections[i].request("POST", "/v1/completions", body=json.dumps(body).encode(), headers=headers)
            reply = connections[i].getresponse()
            if reply.status != 200:
                raise RuntimeError(f"POST /v1/completions answered {reply.status}: {reply.read()[:200]!r}")
            out.append(read_stream(reply, started))
            reply.read()  # the chunked body's end, so the connection can be reused
        return out

    results, wall = closed_loop(client, clients, start, connections)
    return summarize(results, wall)


def summarize(results: list[dict], wall_s: float) -> dict:
    """Percentiles and P11 ratios of read_stream results collected over `wall_s` seconds."""
    ttft = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    total = [r["total_s"] for r in results]
    tokens = sum(r["completion_tokens"] or 0 for r in results)
    return {"requests": len(results), "tokens_per_s": tokens / wall_s,
            "e2e_p50_s": percentile(total, 50), "e2e_p95_s": percentile(total, 95),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
            "e2e_p95_over_p50": tail_ratio(total), "ttft_p95_over_p50": tail_ratio(ttft)}


def engine_timing(url: str, key: str) -> dict[str, dict]:
    """The engine's per-request timing histograms from `/metrics`, summed over adapters:
    {part: {"count", "sum", "buckets": {le: cumulative count}}} for each of PARTS."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    reply = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    reply.raise_for_status()
    found = {part: {"count": 0.0, "sum": 0.0, "buckets": {}} for part in PARTS}
    for family in text_string_to_metric_families(reply.text):
        part = family.name.removeprefix("tuneserve_").removesuffix("_seconds")
        if part not in found:
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                found[part]["count"] += sample.value
            elif sample.name.endswith("_sum"):
                found[part]["sum"] += sample.value
            elif sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                found[part]["buckets"][le] = found[part]["buckets"].get(le, 0.0) + sample.value
    return found


def timing_breakdown(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per part, over the requests between two engine_timing scrapes: count, mean seconds and p95_le_s (the
    upper edge of the bucket holding the 95th percentile; inf when it lies past the last edge)."""
    out = {}
    for part in PARTS:
        count = after[part]["count"] - before[part]["count"]
        total = after[part]["sum"] - before[part]["sum"]
        cumulative = sorted((le, n - before[part]["buckets"].get(le, 0.0)) for le, n in after[part]["buckets"].items())
        p95 = next((le for le, n in cumulative if count and n >= 0.95 * count), float("inf"))
        out[part] = {"count": int(count), "mean_s": total / count if count else float("nan"), "p95_le_s": p95}
    return out


def closed_loop(client, clients: int, start: threading.Barrier, connections: list) -> tuple[list, float]:
    """Run `client(i)` on `clients` threads released together by `start` (this thread is its last party):
    (every client's results, seconds from the release until the last one finished); closes `connections`."""
    try:
        with ThreadPoolExecutor(clients) as pool:
            parts = [pool.submit(client, i) for i in range(clients)]
            start.wait()
            started = time.perf_counter()
            results = [item for part in parts for item in part.result()]
            return results, time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
