"""ONNX Runtime causal LM: one InferenceSession over a decoder exported with its KV cache.

`training.artifact.quantized` loads `onnx-*` causal-LM artifacts as `OnnxCausalLM`. It
answers the calls the rest of tuneserve makes on a transformers model:
- `model(input_ids=, attention_mask=, position_ids=, cache=DynamicCache(), logits_to_keep=)`
  returns `.logits` and fills the cache in place, so the service's continuous batching
  (`service.engine.decode`) runs on it unchanged;
- `model.generate(...)`, greedy or sampled (temperature, top-k, top-p), is a lean loop over
  numpy arrays: on small models the per-step overhead of transformers' generate (logits
  processors, stopping criteria, cache objects, torch<->numpy copies) costs more than the
  int8 forward pass itself.

    lm = OnnxCausalLM(Path("artifacts/tiny-onnx-int8"))
    out = lm.generate(**tokenizer(["Hello"], return_tensors="pt"), max_new_tokens=8)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.artifact.errors import ArtifactInvalid

ONNX_FILE = "model.onnx"
GENERATE_OPTIONS = {"input_ids", "attention_mask", "max_new_tokens", "min_new_tokens", "max_length", "do_sample",
                    "temperature", "top_k", "top_p", "pad_token_id", "eos_token_id", "seed", "use_cache", "num_beams"}
NUMPY_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def _numpy(tensor: Any, dtype: str | None = None):
    import numpy as np

    array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    return np.ascontiguousarray(array if dtype is None else array.astype(dtype, copy=False))


def ort_session(path: Path, threads: int | None = None):
    """A CPU InferenceSession with all graph optimizations, `threads` (default torch's) and no spinning."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()  # respects Ray's per-replica limit
    options.inter_op_num_threads = 1
    # ORT's pool busy-waits after each run; on a small box that spin takes the CPU from the
    # replica's event loop and from the next model (a torch generate right after ORT runs
    # measured 1.7-2x its time), while turning it off cost ~10% of an int8 decode step.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxCausalLM:
    """A decoder-only LM in ONNX Runtime with the call shape of a transformers causal LM."""

    main_input_name = "input_ids"

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        from transformers import AutoConfig, GenerationConfig

        self.config = AutoConfig.from_pretrained(str(model_dir))
        self.generation_config = GenerationConfig.from_model_config(self.config)
        self.session = ort_session(Path(model_dir) / ONNX_FILE, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
        self.past_names = [(f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in range(self.layers)]
        outputs = {o.name for o in self.session.get_outputs()}
        self.output_names = ["logits"] + [f"present.{i}.{part}" for i in range(self.layers) for part in ("key", "value")]
        missing = [n for n in ["input_ids", "attention_mask", *(n for pair in self.past_names for n in pair)]
                   if n not in inputs] + [n for n in self.output_names if n not in outputs]
        if not self.layers or missing:
            raise ArtifactInvalid(f"{model_dir / ONNX_FILE} is not a decoder exported with its KV cache "
                                  f"(missing {missing[:3] or ['past_key_values.*']})",
                                  "re-export it with `tuneserve export` (task text-generation-with-past)")
        spec = inputs[self.past_names[0][0]]
        self.kv_shape = [d if isinstance(d, int) else None for d in spec.shape]  # [batch, heads, seq, head_dim]
        self.kv_dtype = NUMPY_DTYPES.get(spec.type, "float32")
        self.takes_positions = "position_ids" in inputs

    def _empty_past(self, batch: int):
        import numpy as np

        heads, head_dim = self.kv_shape[1], self.kv_shape[3]
        if heads is None or head_dim is None:
            heads = getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads
            head_dim = getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads
        empty = np.zeros((batch, heads, 0, head_dim), dtype=self.kv_dtype)
        return [(empty, empty)] * self.layers

    def run(self, ids, mask, past, positions=None) -> tuple[Any, list]:
        """One forward pass on numpy arrays: (logits [b, t, vocab], [(key, value)] per layer incl. `past`)."""
        import numpy as np

        feed = {"input_ids": ids, "attention_mask": mask}
        if self.takes_positions:
            if positions is None:
                positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)[:, -ids.shape[1]:]
            feed["position_ids"] = positions
        for (key_name, value_name), (key, value) in zip(self.past_names, past):
            feed[key_name], feed[value_name] = key, value
        logits, *presents = self.session.run(self.output_names, feed)
        return logits, list(zip(presents[0::2], presents[1::2]))

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                 use_cache: bool = True, logits_to_keep: int = 0, **_: Any):
        import numpy as np
        import torch
        from transformers import DynamicCache
        from transformers.modeling_outputs import CausalLMOutputWithPast

        past_key_values = cache if cache is not None else past_key_values  # transformers < 5.25 named it so
        if past_key_values is not None and not isinstance(past_key_values, DynamicCache):
            raise TypeError("OnnxCausalLM takes its cache as a transformers DynamicCache")
        ids = _numpy(input_ids, "int64")
        cached = past_key_values is not None and past_key_values.get_seq_length() > 0
        past = ([(_numpy(layer.keys, self.kv_dtype), _numpy(layer.values, self.kv_dtype))
                 for layer in past_key_values.layers] if cached else self._empty_past(ids.shape[0]))
        past_len = past[0][0].shape[2]
        mask = (np.ones((ids.shape[0], past_len + ids.shape[1]), dtype=np.int64) if attention_mask is None
                else _numpy(attention_mask, "int64"))
        positions = None if position_ids is None else _numpy(position_ids, "int64")
        logits, presents = self.run(ids, mask, past, positions)
        cache = past_key_values if past_key_values is not None else (DynamicCache() if use_cache else None)
        if cache is not None:
            for index, (key, value) in enumerate(presents):
                key, value = torch.from_numpy(key), torch.from_numpy(value)
                if index < len(cache.layers) and getattr(cache.layers[index], "is_initialized", False):
                    cache.layers[index].keys, cache.layers[index].values = key, value
                else:
                    cache.update(key, value, index)
        logits = torch.from_numpy(logits)
        return CausalLMOutputWithPast(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits, cache=cache)

    forward = __call__

    def generate(self, input_ids=None, attention_mask=None, **options: Any):
        """Greedy (default) or sampled decoding; returns prompt + new tokens like transformers."""
        import numpy as np
        import torch

        unknown = sorted(set(options) - GENERATE_OPTIONS)
        if unknown or options.get("num_beams", 1) != 1:
            raise ValueError(f"OnnxCausalLM.generate does not support {unknown}; "
                             f"it takes {sorted(GENERATE_OPTIONS - {'input_ids', 'attention_mask'})} (num_beams=1 only)")
        ids = _numpy(input_ids, "int64")
        mask = np.ones_like(ids) if attention_mask is None else _numpy(attention_mask, "int64")
        new_tokens = options.get("max_new_tokens") or (
            (options.get("max_length") or self.generation_config.max_length or 20) - ids.shape[1])
        min_new = options.get("min_new_tokens") or 0
        pad_id = options.get("pad_token_id")
        eos = options.get("eos_token_id", self.generation_config.eos_token_id)
        eos_ids = np.array([e for e in (eos if isinstance(eos, list) else [eos]) if e is not None], dtype=np.int64)
        pad_id = pad_id if pad_id is not None else (int(eos_ids[0]) if len(eos_ids) else 0)
        pick = self._sampler(options)
        produced, done = [], np.zeros(ids.shape[0], dtype=bool)
        step_ids, past = ids, self._empty_past(ids.shape[0])
        for step in range(max(0, new_tokens)):
            logits, past = self.run(step_ids, mask, past)
            scores = logits[:, -1, :].astype(np.float32)
            if step < min_new and len(eos_ids):
                scores[:, eos_ids] = -np.inf
            token = np.where(done, pad_id, pick(scores))
            produced.append(token)
            done |= np.isin(token, eos_ids)
            if done.all():
                break
            step_ids = token[:, None]
            mask = np.concatenate([mask, np.ones((ids.shape[0], 1), dtype=np.int64)], axis=1)
        out = np.concatenate([ids, np.stack(produced, axis=1)], axis=1) if produced else ids
        return torch.from_numpy(out)

    @staticmethod
    def _sampler(options: dict[str, Any]):
        import numpy as np

        if not options.get("do_sample"):
            return lambda scores: scores.argmax(axis=-1)
        temperature = float(options.get("temperature") or 1.0)
        top_k, top_p = options.get("top_k") or 0, float(options.get("top_p") or 1.0)
        rng = np.random.default_rng(options.get("seed"))

        def sample(scores):
            scores = scores / max(temperature, 1e-6)
            if top_k and top_k < scores.shape[-1]:
                cutoff = np.partition(scores, -top_k, axis=-1)[:, -top_k][:, None]
                scores = np.where(scores < cutoff, -np.inf, scores)
            probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            if top_p < 1.0:
                order = np.argsort(-probs, axis=-1)
                sorted_probs = np.take_along_axis(probs, order, axis=-1)
                keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
                keep = np.zeros_like(keep_sorted)
                np.put_along_axis(keep, order, keep_sorted, axis=-1)
                probs = np.where(keep, probs, 0.0)
                probs /= probs.sum(axis=-1, keepdims=True)
            return np.array([rng.choice(len(p), p=p) for p in probs], dtype=np.int64)

        return sample
