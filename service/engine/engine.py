"""`Engine`: the registry, the engine thread and the response cache of one replica. No Ray here.

    engine = Engine(EngineSettings(base_model="tiny-llama", batching=BatchingSettings(max_batch_size=8)))
    engine.start()
    lease = engine.registry.acquire("my-adapter")
    stream = engine.generate(lease, prompt_ids, SamplingParams(max_tokens=32), n=1)   # inside an event loop
    async for event in stream: ...
    engine.classify(lease, ["text"])   # -> [[(label, prob), ...] best first]
    engine.prefix_cache                # the PrefixCache shared by the decode batches (None: disabled)
    engine.encoder                     # the EncoderEngine for /v1/embeddings (settings.embedding_model), or None
"""

from __future__ import annotations

import torch

from service.engine.cache import ResponseCache
from service.engine.embed import EncoderEngine
from service.engine.prefix_cache import PrefixCache
from service.engine.registry import Lease, ModelRegistry
from service.engine.scheduler import Scheduler
from service.engine.settings import EngineSettings
from service.engine.types import GenRow, RequestStream, SamplingParams


class Engine:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(settings)
        prefix = settings.prefix_cache
        self.prefix_cache = PrefixCache(prefix.max_bytes, prefix.block_tokens) if prefix.enabled else None
        self.scheduler = Scheduler(self.registry, settings.batching, self.prefix_cache)
        cache = settings.cache
        self.cache = ResponseCache(cache.size if cache.enabled else 0, cache.ttl_s, max_bytes=cache.max_bytes)
        self.num_threads = settings.num_threads
        self.encoder = EncoderEngine(settings) if settings.embedding_model else None
        self.started = False

    def start(self, desired=None) -> None:
        """`desired`: the fleet's admin-set adapter state (see ModelRegistry.start)."""
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self.registry.start(desired)
        self.scheduler.start()
        if self.encoder is not None:
            self.encoder.start()
        self.started = True

    def stop(self) -> None:
        self.scheduler.stop()
        if self.encoder is not None:
            self.encoder.stop()
        self.started = False

    def generate(self, lease: Lease, prompt_ids: list[int], params: SamplingParams, n: int = 1,
                 grammar=None, scope: str | None = None) -> RequestStream:
        """Queue `n` choices of one prompt; the lease is released when the last choice ends. `grammar`:
        params.constraint compiled for the lease's tokenizer (service/structured.py), each row matches it;
        `scope`: the API key id, whose own prefix cache entries the rows reuse."""
        stream = RequestStream(n)
        remaining = [n]

        def release_one() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                lease.release()

        rows = [GenRow(prompt_ids, params, lease.target, lease.slot, i, stream, lease.model_id, release_one,
                       grammar=grammar, scope=scope) for i in range(n)]
        self.scheduler.submit(rows)
        return stream

    def classify(self, lease: Lease, texts: list[str], max_length: int = 512) -> list[list[tuple[str, float]]]:
        loaded = lease.target.loaded
        tokenizer = loaded.tokenizer
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with self.registry.model_lock, torch.inference_mode():  # PEFT path: it also swaps classifier heads
            model = lease.target.model
            logits = lease.target.forward([lease.slot] * len(texts), batched_lora=False, **enc).logits.float().cpu()
        probs = torch.softmax(logits, dim=-1)
        labels = loaded.labels or [model.config.id2label[i] for i in range(probs.shape[-1])]
        out = []
        for row in probs:
            order = torch.argsort(row, descending=True)
            out.append([(labels[int(i)], float(row[i])) for i in order])
        return out
