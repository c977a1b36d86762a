"""The parity gate at load: replay an artifact's golden set through the form the registry serves it in.

The registry calls `check_parity` after an adapter is attached (and stacked for batched
multi-LoRA) under its slot but before any request can reach it, and after a full model
(merged, int8, ONNX, ...) is loaded; a refusal undoes the load. Forward passes take the
registry's model lock one prompt at a time, so running requests interleave with the replay;
the loads themselves run in worker threads, never on the event loop. Artifacts without a
golden set (written before it existed) load as before, with no numbers.

    forward = served_forward(registry.base, slot, batched_lora=True, lock=registry.model_lock)
    numbers = check_parity(settings.parity, "adapter 'support'", artifact, forward)   # dict | None
"""

from __future__ import annotations

import logging
import time
from typing import Any

from training.artifact.errors import ArtifactInvalid
from training.artifact.golden import Forward, read_golden
from training.artifact.replay import ParityGate, headline, replay

from service import metrics

log = logging.getLogger("tuneserve.service.parity")


def served_forward(target, slot: str | None, batched_lora: bool, lock) -> Forward:
    """A `Forward` through `target.forward` for rows on adapter `slot` (None: the target itself), as requests run."""
    import torch

    def forward(input_ids, attention_mask):
        with lock, torch.inference_mode():
            out = target.forward([slot], batched_lora=batched_lora, input_ids=input_ids, attention_mask=attention_mask)
        return out.logits.float().cpu()

    return forward


def check_parity(gate: ParityGate, what: str, artifact, forward: Forward) -> dict[str, Any] | None:
    """The replay's headline numbers (and its seconds); None when gating is off or the artifact has no golden set.
    Raises ArtifactInvalid naming the worst prompt when the served form drifted past `gate`."""
    if not gate.enabled:
        return None
    golden = read_golden(artifact)
    if golden is None:
        return None
    started = time.perf_counter()
    report = replay(golden, forward)
    refusal = gate.refusal(what, report)
    if refusal is not None:
        log.warning("refusing %s: %s", what, refusal)
        raise ArtifactInvalid(refusal, "rebuild the artifact from the trained model (e.g. quantize again), or "
                                       "loosen parity.max_kl / parity.min_token_agreement in the service settings "
                                       "if this drift is expected")
    numbers = {**headline(report), "seconds": round(time.perf_counter() - started, 4)}
    log.info("%s matches its golden set: %s", what, numbers)
    return numbers


def record_parity(name: str, numbers: dict[str, Any] | None) -> None:
    """Export the numbers of a model or adapter that now serves (its name is a resolved, bounded label)."""
    if numbers is not None:
        agreement = numbers.get("token_agreement", numbers.get("label_agreement", 0.0))
        metrics.parity_measured(name, numbers["mean_kl"], agreement)
