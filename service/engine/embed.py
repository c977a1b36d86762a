"""`EncoderEngine`: an encoder base (e.g. all-MiniLM-L6-v2) and its adapters, served for embeddings
beside the replica's causal-LM engine, with a registry and a batching thread of its own.

    encoder = EncoderEngine(settings)              # settings.embedding_model names the encoder
    encoder.start()
    lease = encoder.registry.acquire("minilm-intents")
    vectors = await encoder.embed(lease, [[101, 7592, 102], ...])   # float32 (n, hidden), L2-normalised
    encoder.stop()

The registry is a `ModelRegistry` on the encoder (task "embedding": the bare `AutoModel`, as
sentence-transformers loads it) over the same artifacts_dir: it finds the adapters built on the
encoder by their base fingerprint (the causal-LM registry skips them for the same reason), and
serves their encoder layers (training/artifact/encoder.py). Requests wait in a bounded queue (more
than `capacity`: Overloaded) for one thread that coalesces them as the decoder's scheduler does: an
idle thread keeps collecting while requests arrive less than batching.batch_wait_timeout_s apart, for
at most batching.batch_max_wait_s, then runs their inputs through one forward per max_batch_size
rows, each row on its own adapter (PEFT's adapter_names). Rows are right-padded with an attention
mask; pooling is sentence-transformers' for all-MiniLM-L6-v2 (mean of the last hidden states over
the real tokens, then L2 normalisation). A failed batch is rerun request by request, so a bad request
fails only itself. The engine releases each request's lease when it is done with it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from training.artifact.errors import Overloaded, Unavailable

from service import metrics
from service.engine.registry import Lease, ModelRegistry
from service.engine.scheduler import collect_burst, drained
from service.engine.settings import EngineSettings

log = logging.getLogger("tuneserve.service.embed")
IDLE_POLL_S = 0.5  # how often an idle thread notices stop()


@dataclass
class EmbedJob:
    """One request's inputs (token ids) on one lease; its future gets the (n, hidden) vectors."""

    lease: Lease
    inputs: list[list[int]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float

    def settle(self, vectors: np.ndarray | None = None, error: BaseException | None = None) -> None:
        def apply() -> None:
            if self.future.done():  # the caller left
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(vectors)
        try:
            self.loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the caller's loop is closed
            pass


class EncoderEngine:
    def __init__(self, settings: EngineSettings, capacity: int = 64) -> None:
        config = settings.model_copy(update={"base_model": settings.embedding_model, "base_task": "embedding",
                                             "models": [], "adapters": {}, "batched_lora": False,
                                             "embedding_model": None})
        self.registry = ModelRegistry(config)
        batching = settings.batching
        self.max_batch_size = batching.max_batch_size
        self.wait_gap_s = batching.batch_wait_timeout_s
        self.max_wait_s = max(batching.batch_max_wait_s, batching.batch_wait_timeout_s)
        self.capacity = capacity
        self.inbox: queue.Queue[EmbedJob | None] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._running = False

    def start(self, desired=None) -> None:
        self.registry.start(desired)
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="tuneserve-embed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; requests still waiting fail with Unavailable (none waits forever)."""
        self._running = False
        try:
            self.inbox.put_nowait(None)
        except queue.Full:  # the thread sees _running within IDLE_POLL_S of finishing its batch
            pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        for job in drained(self.inbox):
            job.settle(error=Unavailable("the embedding engine stopped", "retry: another replica answers"))
            job.lease.release()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def queue_depth(self) -> int:
        return self.inbox.qsize()

    async def embed(self, lease: Lease, inputs: list[list[int]]) -> np.ndarray:
        """The inputs' embeddings, float32 (len(inputs), hidden), L2-normalised; the lease is the engine's now."""
        if not self._running:
            lease.release()
            raise Unavailable("the embedding engine is not running", "retry: another replica answers")
        loop = asyncio.get_running_loop()
        job = EmbedJob(lease, inputs, loop.create_future(), loop, time.monotonic())
        try:
            self.inbox.put_nowait(job)
        except queue.Full:
            lease.release()
            raise Overloaded(f"{self.capacity} embedding requests are already waiting in this replica",
                             "retry in a moment, or add Engine replicas") from None
        return await job.future

    # ---- the thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while self._running:
            jobs = self._collect()
            if jobs:
                self._run(jobs)

    def _collect(self) -> list[EmbedJob]:
        try:
            first = self.inbox.get(timeout=IDLE_POLL_S)
        except queue.Empty:
            return []
        if first is None:
            return []
        jobs = [first]
        collect_burst(self.inbox, jobs, lambda js: sum(len(j.inputs) for j in js), self.max_batch_size,
                      self.wait_gap_s, self.max_wait_s)
        return jobs

    def _run(self, jobs: list[EmbedJob]) -> None:
        live = []
        for job in jobs:
            if job.future.done():  # cancelled while it waited
                job.lease.release()
            else:
                live.append(job)
        if not live:
            return
        now = time.monotonic()
        for job in live:
            metrics.queue_waited(job.lease.model_id, now - job.queued_at)
        try:
            vectors = self._forward(live[0].lease.target, [(j.lease.slot, ids) for j in live for ids in j.inputs])
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the thread
            if len(live) > 1:
                for job in live:  # alone, each request fails or succeeds on its own
                    self._run([job])
                return
            log.exception("embedding forward failed")
            live[0].settle(error=exc)
            live[0].lease.release()
            return
        start = 0
        for job in live:
            job.settle(vectors[start:start + len(job.inputs)])
            start += len(job.inputs)
            job.lease.release()

    def _forward(self, target, rows: list[tuple[str | None, list[int]]]) -> np.ndarray:
        pad = target.loaded.tokenizer.pad_token_id or 0
        out = []
        for i in range(0, len(rows), self.max_batch_size):
            chunk = rows[i:i + self.max_batch_size]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for _, ids in chunk])
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for _, ids in chunk])
            with self.registry.model_lock, torch.inference_mode():
                hidden = target.forward([slot for slot, _ in chunk], batched_lora=False,
                                        input_ids=input_ids, attention_mask=mask)[0]
            out.append(mean_pooled(hidden.float(), mask.to(hidden.device)).cpu())
        return torch.cat(out).numpy()


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling + L2 normalisation: (batch, seq, hidden) → (batch, hidden)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
