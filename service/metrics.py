"""tuneserve's Prometheus metrics: the metric objects, the hook functions the serving path calls,
and the `/metrics` exposition that aggregates every serving process of the node.

Scraping under Ray Serve (several processes: proxy, Ingress and Engine replicas) uses
prometheus_client's **multiprocess mode**: the launcher points `PROMETHEUS_MULTIPROC_DIR` at
one empty directory per node before Ray starts (`prepare_metrics_dir()`), every replica
inherits it and writes its samples to memory-mapped files there, and `render()` (served at
`GET /metrics` by whichever Ingress replica answers) merges all files, so any replica returns
the whole node. Ray's own metrics (`ray_serve_*`) stay on Ray's metrics export port, scraped
as a second target of job `tuneserve` (see docs/observability.md). Without the variable
(tests, in-process use) the default single-process registry is used.

    from service import metrics
    metrics.request_finished("/v1/completions", "a1", "http", 200, 0.12)
    body, content_type = metrics.render()

Names follow `tuneserve_<what>_<unit>`; the contract is docs/observability.md and the rules in
deploy/prometheus/rules/. Labels are bounded: adapter names pass `adapter_label`, which caps
the number of distinct values, and callers pass only ids the registry resolved (a request that
never resolved one: `""`; a failed load of a name the registry does not know: `"unresolved"`);
paths no route matches share `route="unmatched"`. Junk traffic therefore adds no series. Security code records through the published objects
(`AUTH_FAILURES`, `RATE_LIMITED`, `BLOCKED_CLIENTS`, `KEY_CLIENT_ADDRESSES`,
`PROMPT_INJECTION_SUSPECTED`) or the helpers below them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("tuneserve.service.metrics")
if os.environ.get(MULTIPROC_ENV):  # prometheus_client picks its value class at import; the env may come later
    values.ValueClass = values.get_value_class()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_ADAPTER_LABELS = 256
OTHER = "other"
UNRESOLVED = "unresolved"  # adapter label of an adapter event whose name the registry does not know
UNMATCHED_ROUTE = "unmatched"  # route label of a path no route matches (never the raw path)
_LABEL_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")

REQUESTS = Counter("tuneserve_requests", "Finished requests.", ["adapter", "transport", "route", "code"])
REQUEST_DURATION = Histogram("tuneserve_request_duration_seconds", "Request latency.",
                             ["adapter", "transport", "route"], buckets=LATENCY_BUCKETS)
FIRST_TOKEN = Histogram("tuneserve_time_to_first_token_seconds", "Time from arrival to the first generated token.",
                        ["adapter", "transport"], buckets=TOKEN_BUCKETS)
INTER_TOKEN = Histogram("tuneserve_inter_token_latency_seconds", "Time between consecutive generated tokens.",
                        ["adapter", "transport"], buckets=TOKEN_BUCKETS)
PROMPT_TOKENS = Counter("tuneserve_prompt_tokens", "Prompt tokens processed.", ["adapter"])
COMPLETION_TOKENS = Counter("tuneserve_completion_tokens", "Completion tokens generated.", ["adapter"])
QUEUE_WAIT = Histogram("tuneserve_queue_wait_seconds", "Time queued before joining a batch.", ["adapter"],
                       buckets=TOKEN_BUCKETS)
QUEUE_DEPTH = Gauge("tuneserve_queue_depth", "Requests waiting for a batch slot.", multiprocess_mode="livesum")
QUEUE_CAPACITY = Gauge("tuneserve_queue_capacity", "Bound of the request queue.", multiprocess_mode="livesum")
PREFILL = Histogram("tuneserve_prefill_seconds", "Prefill pass that admitted a request's row (one pass per group of "
                    "rows joining a batch together).", ["adapter"], buckets=TOKEN_BUCKETS)
DECODE = Histogram("tuneserve_decode_seconds", "Time from a row's first token (end of its prefill) to its last.",
                   ["adapter"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("tuneserve_batch_size", "Rows per engine batch when rows join it.", buckets=BATCH_BUCKETS)
CACHE_REQUESTS = Counter("tuneserve_cache_requests", "Cache lookups.", ["cache", "result"])
PREFIX_LOOKUPS = Counter("tuneserve_prefix_cache_lookups", "Prompt prefix KV cache lookups.", ["adapter", "result"])
PREFIX_TOKENS = Counter("tuneserve_prefix_cache_reused_tokens", "Prompt tokens whose KV came from the prefix cache.",
                        ["adapter"])
PREFIX_BYTES = Gauge("tuneserve_prefix_cache_bytes", "KV bytes held by the prefix cache.", multiprocess_mode="livesum")
ADAPTER_LOADS = Counter("tuneserve_adapter_loads", "Adapter load attempts.", ["adapter", "result"])
ADAPTER_EVICTIONS = Counter("tuneserve_adapter_evictions", "Adapters evicted from the loaded set.", ["adapter"])
ADAPTERS_LOADED = Gauge("tuneserve_adapters_loaded", "Adapters currently loaded.", multiprocess_mode="livesum")
MODEL_LOAD = Gauge("tuneserve_model_load_seconds", "How long loading a model or adapter took.", ["model"],
                   multiprocess_mode="max")
PARITY_KL = Gauge("tuneserve_parity_kl", "Mean KL of the served form vs the artifact's golden set, at load.",
                  ["adapter"], multiprocess_mode="livemax")
PARITY_AGREEMENT = Gauge("tuneserve_parity_agreement", "Token (label) agreement of the served form with the "
                         "artifact's golden set, at load.", ["adapter"], multiprocess_mode="livemin")
CLASSIFIED = Counter("tuneserve_classified_inputs", "Texts classified.", ["adapter"])
EMBEDDED = Counter("tuneserve_embedded_inputs", "Inputs embedded (/v1/embeddings, Embed).", ["adapter"])
RESIDENT_MEMORY = Gauge("tuneserve_process_resident_memory_bytes", "Resident memory of the serving processes.",
                        multiprocess_mode="livesum")
GPU_MEMORY = Gauge("tuneserve_gpu_memory_allocated_bytes", "CUDA memory allocated by torch.", ["device"],
                   multiprocess_mode="livesum")

# Security signals (recorded by service.auth / service.keys / the rate limiter).
AUTH_FAILURES = Counter("tuneserve_auth_failures", "Rejected authentications.", ["reason", "transport"])
RATE_LIMITED = Counter("tuneserve_rate_limited", "Requests rejected by the rate limiter.", ["key_id", "kind"])
BLOCKED_CLIENTS = Gauge("tuneserve_blocked_clients", "Client addresses currently blocked.", multiprocess_mode="livemax")
KEY_CLIENT_ADDRESSES = Gauge("tuneserve_key_client_addresses", "Distinct client addresses per key in the window.",
                             ["key_id"], multiprocess_mode="livemax")
PROMPT_INJECTION_SUSPECTED = Counter("tuneserve_prompt_injection_suspected", "Prompts matching injection heuristics.",
                                     ["adapter"])

# Drift (written by service.drift's background monitor).
DRIFT_SCORE = Gauge("tuneserve_drift_score", "Drift of live traffic vs the adapter's reference profile.",
                    ["adapter", "feature", "method"], multiprocess_mode="livemax")
DRIFT_THRESHOLD = Gauge("tuneserve_drift_threshold", "Configured threshold of a drift score.",
                        ["adapter", "feature", "method"], multiprocess_mode="livemax")
DRIFT_WINDOW = Gauge("tuneserve_drift_window_samples", "Samples in the current drift window.", ["adapter"],
                     multiprocess_mode="livemax")

# Production feedback (written by service.feedback): online quality per served model (adapter version).
FEEDBACK = Counter("tuneserve_feedback", "Feedback received on served responses.", ["adapter", "kind"])
# labelled so that no sample exists before the first drop (an unlabelled counter opens its multiprocess file at import)
FEEDBACK_DROPPED = Counter("tuneserve_feedback_records_dropped", "Records not stored durably (writer behind).", ["record"])
ONLINE_QUALITY = Gauge("tuneserve_online_quality", "Rolling online quality from feedback: accuracy (kind=accuracy, "
                       "0..1) or mean rating (kind=rating, 1..5).", ["adapter", "kind"],
                       multiprocess_mode="livemostrecent")
ONLINE_QUALITY_SAMPLES = Gauge("tuneserve_online_quality_samples", "Feedbacks in the online quality window.",
                               ["adapter", "kind"], multiprocess_mode="livemostrecent")
# Rollouts (service/rollout.py): per alias and resolved version; role is primary (answered the client) or shadow.
ROLLOUT_REQUESTS = Counter("tuneserve_rollout_requests", "Requests through an alias, per version and role.",
                           ["alias", "adapter", "role", "outcome"])
ROLLOUT_LATENCY = Histogram("tuneserve_rollout_latency_seconds", "Latency through an alias, per version and role.",
                            ["alias", "adapter", "role"], buckets=LATENCY_BUCKETS)
SHADOW_AGREEMENT = Histogram("tuneserve_shadow_agreement_ratio", "Agreement of a shadow answer with the client's.",
                             ["alias", "adapter"], buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0))
SHADOW_DROPPED = Counter("tuneserve_shadow_dropped", "Shadow copies dropped because the shadow queue was full.",
                         ["alias"])

_adapters: set[str] = set()
_quality_series: dict[str, str] = {}  # model -> kind of the online quality series this process exports
_GRPC_BY_STATUS: dict[int, str] = {}
_lock = threading.Lock()
_memory_at = 0.0


def adapter_label(name: str | None) -> str:
    """A bounded label value for a model/adapter name: "" for none, "other" past the cap or when odd."""
    if not name:
        return ""
    if name in _adapters:
        return name
    if not _LABEL_OK.match(name):
        return OTHER
    with _lock:
        if len(_adapters) >= MAX_ADAPTER_LABELS:
            return OTHER
        _adapters.add(name)
    return name


def _sample_memory(min_interval_s: float = 1.0) -> None:
    """Refresh this process's memory gauges, at most once per `min_interval_s` (cheap: /proc read)."""
    global _memory_at
    now = time.monotonic()
    if now - _memory_at < min_interval_s:
        return
    _memory_at = now
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        RESIDENT_MEMORY.set(pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        pass
    torch = __import__("sys").modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for device in range(torch.cuda.device_count()):
            GPU_MEMORY.labels(str(device)).set(torch.cuda.memory_allocated(device))


# ---- hooks called by the serving path -----------------------------------------------------
def grpc_code_name(code: int | str) -> str:
    """The upper-case gRPC code name for a gRPC call recorded with the HTTP status of its error."""
    if isinstance(code, str) and not code.isdigit():
        return code.upper()
    if not _GRPC_BY_STATUS:
        from service.errors import CLIENT_CLOSED, ERROR_TABLE, INTERNAL

        _GRPC_BY_STATUS.update({200: "OK", CLIENT_CLOSED: "CANCELLED", INTERNAL.http_status: INTERNAL.grpc_code})
        for spec in ERROR_TABLE.values():
            _GRPC_BY_STATUS.setdefault(spec.http_status, spec.grpc_code)
    return _GRPC_BY_STATUS.get(int(code), "UNKNOWN")


def request_finished(route: str, model: str | None, transport: str, code: int | str, seconds: float) -> None:
    """One finished HTTP or gRPC request. `code`: HTTP status (gRPC calls: the status of the error,
    turned into the gRPC code name here). A 404 names no model we serve, so its (free-text) model
    name is never used as a label."""
    adapter = "" if str(code) == "404" else adapter_label(model)
    label = grpc_code_name(code) if transport == "grpc" else str(code)
    REQUESTS.labels(adapter, transport, route, label).inc()
    REQUEST_DURATION.labels(adapter, transport, route).observe(seconds)
    _sample_memory()


def rollout_request(alias: str, version: str, role: str, ok: bool, seconds: float) -> None:
    labels = (adapter_label(alias), adapter_label(version), role)
    ROLLOUT_REQUESTS.labels(*labels, "ok" if ok else "error").inc()
    ROLLOUT_LATENCY.labels(*labels).observe(seconds)


def shadow_agreement(alias: str, version: str, score: float) -> None:
    SHADOW_AGREEMENT.labels(adapter_label(alias), adapter_label(version)).observe(score)


def shadow_dropped(alias: str) -> None:
    SHADOW_DROPPED.labels(adapter_label(alias)).inc()


def generation_finished(model: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
    adapter = adapter_label(model)
    PROMPT_TOKENS.labels(adapter).inc(prompt_tokens)
    COMPLETION_TOKENS.labels(adapter).inc(completion_tokens)
    _sample_memory()


def first_token(model: str, seconds: float, transport: str = "any") -> None:
    FIRST_TOKEN.labels(adapter_label(model), transport).observe(seconds)


def inter_token(model: str, seconds: float, transport: str = "any") -> None:
    INTER_TOKEN.labels(adapter_label(model), transport).observe(seconds)


def cache_lookup(model: str, hit: bool, cache: str = "response") -> None:
    CACHE_REQUESTS.labels(cache, "hit" if hit else "miss").inc()


def prefix_cache_lookup(model: str, reused_tokens: int) -> None:
    """One prompt's prefix cache lookup (a hit reused `reused_tokens` > 0), per adapter and in the cache totals."""
    hit = reused_tokens > 0
    CACHE_REQUESTS.labels("prefix", "hit" if hit else "miss").inc()
    label = adapter_label(model)
    PREFIX_LOOKUPS.labels(label, "hit" if hit else "miss").inc()
    if hit:
        PREFIX_TOKENS.labels(label).inc(reused_tokens)


def prefix_cache_size(nbytes: int) -> None:
    PREFIX_BYTES.set(nbytes)


def batch_admitted(new_rows: int, running_rows: int) -> None:
    BATCH_SIZE.observe(new_rows + running_rows)


def queue_waited(model: str, seconds: float) -> None:
    QUEUE_WAIT.labels(adapter_label(model)).observe(seconds)


def prefill_done(model: str, seconds: float) -> None:
    PREFILL.labels(adapter_label(model)).observe(seconds)


def decode_finished(model: str, seconds: float) -> None:
    DECODE.labels(adapter_label(model)).observe(seconds)


def queue_state(depth: int, capacity: int) -> None:
    QUEUE_DEPTH.set(depth)
    QUEUE_CAPACITY.set(capacity)


def adapter_event(adapter: str, event: str, seconds: float | None = None) -> None:
    """event: "loaded" (seconds = load time), "load_failed", "unloaded" or "evicted"."""
    name = adapter_label(adapter)
    if event == "loaded":
        ADAPTER_LOADS.labels(name, "ok").inc()
        if seconds is not None:
            MODEL_LOAD.labels(name).set(seconds)
    elif event == "load_failed":
        ADAPTER_LOADS.labels(name, "error").inc()
    elif event == "evicted":
        ADAPTER_EVICTIONS.labels(name).inc()


def poll(callback, interval_s: float = 5.0) -> threading.Event:
    """Run `callback()` every `interval_s` in a daemon thread (state gauges: queue, adapters);
    set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                callback()
            except Exception:
                log.exception("metrics poll failed")

    callback_thread = threading.Thread(target=loop, name="tuneserve-metrics-poll", daemon=True)
    callback_thread.start()
    return stop


def adapters_loaded(count: int) -> None:
    ADAPTERS_LOADED.set(count)


def model_loaded(model: str, seconds: float) -> None:
    MODEL_LOAD.labels(adapter_label(model)).set(seconds)


def parity_measured(model: str, mean_kl: float, agreement: float) -> None:
    """The golden-set replay of a model or adapter that loaded (refused loads are not recorded)."""
    name = adapter_label(model)
    PARITY_KL.labels(name).set(mean_kl)
    PARITY_AGREEMENT.labels(name).set(agreement)


def classified(model: str, n_inputs: int, seconds: float) -> None:
    CLASSIFIED.labels(adapter_label(model)).inc(n_inputs)


def embedded(model: str, n_inputs: int, tokens: int) -> None:
    adapter = adapter_label(model)
    EMBEDDED.labels(adapter).inc(n_inputs)
    PROMPT_TOKENS.labels(adapter).inc(tokens)


def auth_failed(reason: str, transport: str) -> None:
    """reason: missing / invalid / expired / revoked / forbidden / blocked."""
    AUTH_FAILURES.labels(reason, transport).inc()


def rate_limited(key_id: str, kind: str) -> None:
    """kind: requests / tokens."""
    RATE_LIMITED.labels(key_id, kind).inc()


def prompt_injection_suspected(model: str | None) -> None:
    PROMPT_INJECTION_SUSPECTED.labels(adapter_label(model)).inc()


def feedback_recorded(model: str, kind: str) -> None:
    """kind: label / correct_answer / rating (the feedback's)."""
    FEEDBACK.labels(adapter_label(model), kind).inc()


def feedback_records_dropped() -> None:
    FEEDBACK_DROPPED.labels("served").inc()


def online_quality(model: str, kind: str, value: float, samples: int) -> None:
    """kind: accuracy / rating (what `value` measures)."""
    label = adapter_label(model)
    with _lock:
        _quality_series[model] = kind
    ONLINE_QUALITY.labels(label, kind).set(value)
    ONLINE_QUALITY_SAMPLES.labels(label, kind).set(samples)


def online_quality_expired(current: set[str]) -> None:
    """Models no longer in any quality window keep their last value with 0 samples (alerts need samples)."""
    with _lock:
        gone = {m: k for m, k in _quality_series.items() if m not in current}
        for model in gone:
            del _quality_series[model]
    for model, kind in gone.items():
        ONLINE_QUALITY_SAMPLES.labels(adapter_label(model), kind).set(0)


# ---- exposition ---------------------------------------------------------------------------
def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare_metrics_dir(path: str | Path) -> Path:
    """Empty `path` (files of dead processes would be summed in) and export it for Ray's workers.
    Call before Ray starts; every process started afterwards inherits it. This process keeps its
    in-memory values: it only launches (a launcher that switched here would break every metric it
    records once `stop()` takes the variable back, as the in-process test servers do)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def mark_process_dead(pid: int | None = None) -> None:
    """Drop a stopped process's live gauges (call on replica shutdown)."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def render() -> tuple[bytes, str]:
    """(body, content type) of the node's metrics: every process's files in multiprocess mode."""
    _sample_memory(0.0)
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    ProcessCollector(registry=registry)  # process_* of the answering replica
    return generate_latest(registry), CONTENT_TYPE_LATEST
