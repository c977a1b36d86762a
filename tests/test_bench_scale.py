"""The scale benchmarks' arithmetic and lean clients, without running a benchmark: the roofline bound
(benchmarks/roofline.py), percentiles and tail ratios, SSE TTFT parsing and the 16-client streaming
driver against a tiny fake server, the engine timing breakdown from /metrics (benchmarks/latency.py),
and serving.py's P1 goal by size and per-base result names.

    pytest tests/test_bench_scale.py
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.latency import (drive_streaming, engine_timing, has_content, percentile, sse_chunk, summarize,
                                tail_ratio, timing_breakdown)
from benchmarks.roofline import Box, decode_bound, model_size, report
from benchmarks.serving import engine_replicas_config, goals, p1_target, results_name, write

ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
METRICS = """# HELP tuneserve_prefill_seconds x
# TYPE tuneserve_prefill_seconds histogram
tuneserve_prefill_seconds_bucket{adapter="a",le="0.01"} 1.0
tuneserve_prefill_seconds_bucket{adapter="a",le="0.1"} 3.0
tuneserve_prefill_seconds_bucket{adapter="a",le="+Inf"} 4.0
tuneserve_prefill_seconds_count{adapter="a"} 4.0
tuneserve_prefill_seconds_sum{adapter="a"} 0.5
tuneserve_prefill_seconds_bucket{adapter="b",le="0.01"} 0.0
tuneserve_prefill_seconds_bucket{adapter="b",le="0.1"} 0.0
tuneserve_prefill_seconds_bucket{adapter="b",le="+Inf"} 1.0
tuneserve_prefill_seconds_count{adapter="b"} 1.0
tuneserve_prefill_seconds_sum{adapter="b"} 0.5
# TYPE tuneserve_requests_total counter
tuneserve_requests_total{adapter="a"} 9.0
"""


def test_memory_bound_when_weights_outweigh_the_flops():
    box = Box(peak_gflops=100.0, bandwidth_gbs=10.0, threads=2)
    bound = decode_bound(params=100_000_000, weight_bytes=400_000_000, box=box, batch=16)
    assert bound.compute_s == pytest.approx(2 * 100e6 * 16 / 100e9)  # 0.032 s
    assert bound.memory_s == pytest.approx(0.04)
    assert (bound.limit, bound.step_s) == ("memory", pytest.approx(0.04))
    assert bound.tokens_per_s == pytest.approx(400.0)


def test_compute_bound_on_a_fast_memory_box_and_batch_scales_only_compute():
    box = Box(peak_gflops=50.0, bandwidth_gbs=100.0, threads=2)
    bound = decode_bound(params=10_000_000, weight_bytes=80_000_000, box=box, batch=16)
    assert (bound.limit, bound.step_s) == ("compute", pytest.approx(2 * 10e6 * 16 / 50e9))
    assert bound.tokens_per_s == pytest.approx(16 / 0.0064)
    single = decode_bound(params=10_000_000, weight_bytes=80_000_000, box=box, batch=1)  # 0.4 ms of FLOPs
    assert single.limit == "memory" and single.tokens_per_s == pytest.approx(1 / 0.0008)


def test_bound_refuses_nonsense():
    with pytest.raises(ValueError):
        decode_bound(0, 4, Box(1.0, 1.0, 2))
    with pytest.raises(ValueError):
        decode_bound(1, 4, Box(0.0, 1.0, 2))


def test_model_size_counts_tied_weights_once():
    torch = pytest.importorskip("torch")
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "norm": torch.nn.LayerNorm(4)})
    assert model_size(model) == (40 + 8, 48 * 4)


def test_percentiles_and_tail_ratio():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 51.0 and percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0 and percentile([], 50) != percentile([], 50)  # NaN
    assert tail_ratio([1.0] * 19 + [10.0]) == 1.0  # one slow request in 20 sits past p95
    assert tail_ratio([1.0] * 18 + [10.0, 10.0]) == 10.0
    summary = summarize([{"ttft_s": 0.1, "total_s": 1.0, "completion_tokens": 8}] * 3
                        + [{"ttft_s": 0.4, "total_s": 3.0, "completion_tokens": 8}], wall_s=2.0)
    assert summary["tokens_per_s"] == 16.0 and summary["e2e_p95_over_p50"] == 3.0
    assert summary["ttft_p95_over_p50"] == pytest.approx(4.0)


def test_sse_lines_and_content_chunks():
    assert sse_chunk(b"data: [DONE]\n") == "done"
    assert sse_chunk(b": keep-alive\n") is None and sse_chunk(b"\n") is None
    chunk = sse_chunk(b'data: {"choices": [{"index": 0, "text": "hi"}]}\n')
    assert has_content(chunk)
    assert not has_content(ROLE) and not has_content({"choices": [], "usage": {"completion_tokens": 3}})
    assert has_content({"choices": [{"delta": {"content": "x"}}]})


class FakeServer(BaseHTTPRequestHandler):
    """Streams a role chunk at once, the first text after DELAY, usage and [DONE] after another DELAY."""

    protocol_version = "HTTP/1.1"
    DELAY = 0.15

    def log_message(self, *args):
        pass

    def _send(self, body: bytes, kind: str = "application/json"):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self):
        self._send(METRICS.encode() if self.path == "/metrics" else b"{}", "text/plain")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["stream"] and body["ignore_eos"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(f"data: {json.dumps(ROLE)}\n\n".encode())
        time.sleep(self.DELAY)
        self._chunk(b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n')
        time.sleep(self.DELAY)
        usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        self._chunk(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self._chunk(b"")


@pytest.fixture
def fake_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_streaming_clients_time_the_first_text_not_the_role_chunk(fake_url):
    result = drive_streaming(fake_url, "k", ["m"], requests=2, max_tokens=5, prompts=["p"], clients=3)
    assert result["requests"] == 6
    assert FakeServer.DELAY <= result["ttft_p50_s"] < 2 * FakeServer.DELAY
    assert 2 * FakeServer.DELAY <= result["e2e_p50_s"] < result["ttft_p50_s"] + 2 * FakeServer.DELAY
    assert result["tokens_per_s"] == pytest.approx(30 / (2 * 2 * FakeServer.DELAY), rel=0.5)
    # the tail ratio is of the same first-text times (an upper bound on it flaked: one of 6 requests on a loaded
    # CI box took 2.14 x the median)
    assert result["ttft_p95_over_p50"] == pytest.approx(result["ttft_p95_s"] / result["ttft_p50_s"])
    assert result["ttft_p95_s"] >= result["ttft_p50_s"] >= FakeServer.DELAY


def test_engine_timing_sums_adapters_and_breakdown_diffs_two_scrapes(fake_url):
    after = engine_timing(fake_url, "k")
    assert after["prefill"]["count"] == 5 and after["prefill"]["sum"] == 1.0
    assert after["prefill"]["buckets"] == {0.01: 1.0, 0.1: 3.0, float("inf"): 5.0}
    before = {part: {"count": 0.0, "sum": 0.0, "buckets": {}} for part in after}
    before["prefill"] = {"count": 1.0, "sum": 0.5, "buckets": {0.01: 0.0, 0.1: 0.0, float("inf"): 1.0}}
    parts = timing_breakdown(before, after)
    assert parts["prefill"] == {"count": 4, "mean_s": 0.125, "p95_le_s": float("inf")}  # 3 of 4 under 0.1 s
    assert parts["decode"]["count"] == 0


def test_p1_goal_by_size_and_result_names(tmp_path):
    assert p1_target(5_048_576) == 0.75 and p1_target(28_000_000) == 0.85 and p1_target(134_515_008) == 0.85
    assert results_name("tiny-llama", Path("/x/tiny-llama")) == "serving"
    assert results_name("smollm2-135m", Path("/cache/smollm2-135m")) == "serving-smollm2-135m"
    (tmp_path / "my-base").mkdir()
    assert results_name(str(tmp_path / "my-base"), tmp_path / "my-base") == "serving-my-base"


def test_goal_rows_from_planted_phases(tmp_path):
    results = {"base_params": 134_000_000, "hot_load_ms_median": 50.0, "p50_with_many_adapters_s": 1.0,
               "p50_with_few_adapters_s": 1.0, "tail": {"e2e_p95_over_p50": 2.5, "ttft_p95_over_p50": 1.5},
               "per_rep_tokens_per_s": {"raw": [100, 100, 100], "one_adapter": [90, 80, 86], "naive": [30, 20, 40],
                                        "eight_adapters": [80, 80, 80], "roofline_bound": [200, 200, 200],
                                        "raw_engine_threads": [90, 100, 80], "bare_forward": [120, 110, 130]}}
    rows = {row["id"]: row for row in goals(results, many=100)}
    assert results["per_rep_ratios"]["served_over_raw_engine_threads"] == [1.0, 0.8, 1.075]  # recorded, not a goal
    assert rows["P14-ceiling"]["value"] == 0.6 and rows["P14-ceiling"]["met"] is None  # informs P14
    assert "served_over_raw_engine_threads" not in rows
    assert rows["P1"]["value"] == 0.86 and rows["P1"]["goal"] == ">= 0.85" and rows["P1"]["met"]
    assert rows["P2"]["value"] == 3.0 and rows["P14"]["value"] == 0.43 and rows["P14"]["met"]
    assert (rows["P11a"]["met"], rows["P11b"]["met"]) == (False, True)
    results["base_params"] = 5_000_000
    rows = {row["id"]: row for row in goals(results, many=100)}
    assert rows["P1"]["goal"] == ">= 0.75" and rows["P14"]["met"] is None  # recorded, the goal is the 135M base's

    # the report of such a run is written where asked (never over benchmarks/results in a smoke run)
    empty = {part: {"count": 0.0, "sum": 0.0, "buckets": {}} for part in ("queue_wait", "prefill", "decode")}
    phase = {"tokens_per_s": 90.0, "p50_s": 0.5, "p95_s": 0.9}
    box = Box(peak_gflops=30.0, bandwidth_gbs=7.0, threads=2)
    results.update(base="x", load_average_before=[1, 1, 1], load_average_after=[2, 2, 2], raw_tokens_per_s=100.0, raw_unpacked_tokens_per_s=60.0,
                   engine_threads=1, raw_engine_threads_tokens_per_s=90.0,
                   naive=phase, one_adapter=phase, eight_adapters=phase,
                   tail={**results["tail"], **summarize([{"ttft_s": 0.1, "total_s": 1.0, "completion_tokens": 8}], 1.0),
                         "breakdown": timing_breakdown(empty, empty)},
                   roofline=[report(decode_bound(5_000_000, 20_000_000, box), box, 90.0)],
                   streaming={"ttft_p50_ms": 10.0, "ttft_p95_ms": 20.0, "itl_p50_ms": 1.0, "itl_p95_ms": 2.0})
    results["goals"] = goals(results, many=100)
    write(results, "serving-x", tmp_path)
    assert json.loads((tmp_path / "serving-x.json").read_text())["goals"][0]["id"] == "P1"
    markdown = (tmp_path / "serving-x.md").read_text()
    assert "| P14 |" in markdown and "compute-bound" in markdown and "1 torch thread(s) as the served engine runs | 90" in markdown and "(5.0M parameters)" in markdown


def test_bare_forward_rate_runs_decode_steps_of_a_base(tiny_base_dir):
    from benchmarks.roofline import forward_rate

    rate = forward_rate(str(tiny_base_dir), threads=1, batch=4, prompt_tokens=5, steps=3)
    assert 0 < rate < float("inf")


def test_engine_replicas_config_is_the_shipped_one_with_more_engines(tmp_path):
    import os

    from service.launcher import build_config

    config, settings = build_config(engine_replicas_config(2, tmp_path), ["base_model=tiny-llama"])
    engine = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Engine")
    assert engine["autoscaling_config"]["min_replicas"] == engine["autoscaling_config"]["max_replicas"] == 2
    assert engine["ray_actor_options"]["num_cpus"] == max(1, (os.cpu_count() or 1) // 2)
    assert settings.num_threads == 1  # the shipped engine thread count is kept
