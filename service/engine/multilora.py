"""Batched multi-LoRA for mixed-adapter decode batches (the Punica / S-LoRA idea).

PEFT's `adapter_names=[...]` splits every LoRA layer's input by adapter and runs one small
matmul pair per adapter group, which costs ~2x on mixed batches. Here each LoRA layer gets one
forward hook instead: the weights of all loaded adapters are stacked per layer
(`A: [slots+1, r_max, in]`, `B*scaling: [slots+1, out, r_max]`, slot 0 = zeros = bare base,
smaller ranks zero-padded), each row gathers its adapter's pair, and two batched matmuls
add every row's delta at once:

    ml = MultiLora(peft_model); ml.add("a1"); ml.add("a2")
    with ml.rows(["a1", None, "a2"]):          # PEFT's own LoRA path is switched off inside
        logits = peft_model(input_ids=...).logits

Only plain LoRA adapters on Linear layers qualify (`supports(slot)`); others (DoRA, IA3,
LoHa, ...) keep using PEFT's `adapter_names` path.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class _LayerStack:
    def __init__(self) -> None:
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # slot -> (A [r, in], B*scale [out, r])
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self.index: dict[str, int] = {}

    def rebuild(self, order: list[str]) -> None:
        present = [s for s in order if s in self.pairs]
        if not present:
            self.a = self.b = None
            self.index = {}
            return
        rank = max(self.pairs[s][0].shape[0] for s in present)
        a0, b0 = self.pairs[present[0]]
        a = torch.zeros((len(present) + 1, rank, a0.shape[1]), dtype=a0.dtype)
        b = torch.zeros((len(present) + 1, b0.shape[0], rank), dtype=b0.dtype)
        for i, slot in enumerate(present, start=1):
            sa, sb = self.pairs[slot]
            a[i, : sa.shape[0]] = sa
            b[i, :, : sb.shape[1]] = sb
        self.a, self.b = a, b
        self.index = {s: i for i, s in enumerate(present, start=1)}


class MultiLora:
    def __init__(self, model) -> None:
        self.model = model
        self.layers: dict[int, tuple[object, _LayerStack]] = {}
        self.slots: list[str] = []
        self._rows: list[str | None] | None = None
        self._cache: dict[int, torch.Tensor] = {}
        self._tuner_layers: list = []

    @staticmethod
    def _lora_layers(model):
        from peft.tuners.lora.layer import Linear as LoraLinear

        return [m for m in model.modules() if isinstance(m, LoraLinear)]

    def supports(self, slot: str) -> bool:
        layers = [m for m in self._lora_layers(self.model) if slot in m.lora_A]
        return bool(layers) and all(slot not in getattr(m, "lora_variant", {}) for m in layers)

    def add(self, slot: str) -> None:
        for module in self._lora_layers(self.model):
            if slot not in module.lora_A:
                continue
            key = id(module)
            if key not in self.layers:
                self.layers[key] = (module, _LayerStack())
                module.register_forward_hook(self._hook)
            a = module.lora_A[slot].weight.detach().clone()
            b = (module.lora_B[slot].weight.detach() * module.scaling[slot]).clone()
            self.layers[key][1].pairs[slot] = (a, b)
        self.slots.append(slot)
        self.refresh()

    def remove(self, slot: str) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
            for _, stack in self.layers.values():
                stack.pairs.pop(slot, None)
            self.refresh()

    def refresh(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._tuner_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for _, stack in self.layers.values():
            stack.rebuild(self.slots)

    @contextmanager
    def rows(self, slots: list[str | None]):
        """Run the wrapped model with row i using adapter slots[i] (None = bare base)."""
        self._rows, self._cache = slots, {}
        modules = self._tuner_layers
        # PEFT's disable_adapter() re-enables through set_adapter, O(adapters) per layer; the flag alone is O(1)
        for module in modules:
            module._disable_adapters = True
        try:
            yield
        finally:
            for module in modules:
                module._disable_adapters = False
            self._rows, self._cache = None, {}

    def _row_index(self, stack: _LayerStack) -> torch.Tensor:
        key = id(stack)
        index = self._cache.get(key)
        if index is None:
            index = torch.tensor([stack.index.get(s, 0) if s else 0 for s in self._rows], dtype=torch.long)
            self._cache[key] = index
        return index

    def _hook(self, module, args, output):
        if self._rows is None:
            return output
        stack = self.layers[id(module)][1]
        if stack.a is None:
            return output
        index = self._row_index(stack)
        if not bool(index.any()):
            return output
        x = args[0].to(stack.a.dtype)
        down = torch.bmm(x, stack.a[index].transpose(1, 2))  # [B, S, r]
        return output + torch.bmm(down, stack.b[index].transpose(1, 2)).to(output.dtype)
