"""oneDNN-packed Linear layers (service/engine/prepack.py): same outputs, repacked when weights change,
training untouched, and the engine's greedy tokens unchanged with packing on."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from service.engine import prepack
from service.engine.prepack import PackedLinear, prepack_linears


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8, bias=False),
                               torch.nn.LayerNorm(8))


def test_oneDNN_is_available_on_this_build():
    assert prepack.available(), "the CPU torch wheel ships oneDNN: packing must not silently fall back here"


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_packed_outputs_match_plain_linear_for_any_row_count(dtype, tolerance):
    """float32 always packs with oneDNN; bfloat16 only where the CPU has the instructions for it, and
    elsewhere stays a plain Linear with the same outputs."""
    model = small_model().to(dtype)
    reference = copy.deepcopy(model)
    packed = dtype == torch.float32 or prepack.packs(dtype)
    assert prepack.packs(torch.float32)
    assert prepack_linears(model) == (2 if packed else 0)
    assert type(model[0]) is (PackedLinear if packed else torch.nn.Linear) and type(model[3]) is torch.nn.LayerNorm
    with torch.inference_mode():
        for shape in [(1, 24), (16, 24), (3, 7, 24), (64, 1, 24)]:
            x = torch.randn(shape, dtype=dtype)
            torch.testing.assert_close(model(x), reference(x), atol=tolerance, rtol=tolerance)
        strided = torch.randn(24, 5, dtype=dtype).t()  # not contiguous
        torch.testing.assert_close(model(strided), reference(strided), atol=tolerance, rtol=tolerance)


def test_a_weight_changed_in_place_or_replaced_is_repacked():
    model = small_model()
    prepack_linears(model)
    x = torch.randn(4, 24)
    with torch.inference_mode():
        model(x)
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # load_state_dict and copy_ change weights like this
    with torch.inference_mode():
        expected = F.linear(x, model[0].weight, model[0].bias)
        torch.testing.assert_close(model[0](x), expected, atol=1e-5, rtol=1e-5)
    model[0].weight.data = torch.randn(40, 24)
    with torch.inference_mode():
        torch.testing.assert_close(model[0](x), F.linear(x, model[0].weight, model[0].bias), atol=1e-5, rtol=1e-5)


def test_weights_made_in_inference_mode_are_packed_too():
    with torch.inference_mode():
        model = small_model()
        reference = copy.deepcopy(model)
        prepack_linears(model)
        x = torch.randn(3, 24)
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_a_deep_copy_packs_its_own_weights():
    model = small_model()
    prepack_linears(model)
    x = torch.randn(2, 24)
    with torch.inference_mode():
        model(x)  # the original's pack is made
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[0].weight.zero_()
        twin[0].bias.zero_()
    with torch.inference_mode():
        assert torch.count_nonzero(twin[0](x)) == 0
        assert torch.count_nonzero(model[0](x)) > 0


def test_training_through_a_packed_layer_still_gets_gradients():
    model = small_model()
    prepack_linears(model)
    loss = model(torch.randn(5, 24)).square().sum()
    loss.backward()
    assert model[0].weight.grad is not None and torch.count_nonzero(model[0].weight.grad) > 0


def test_nothing_is_packed_without_oneDNN_or_for_other_layer_types(monkeypatch):
    model = small_model()
    monkeypatch.setattr(prepack, "available", lambda: False)
    assert prepack_linears(model) == 0
    monkeypatch.undo()

    class Custom(torch.nn.Linear):
        pass

    half = torch.nn.Sequential(Custom(4, 4), torch.nn.Linear(4, 4).half())
    assert prepack_linears(half) == 0


def test_a_dtype_this_cpu_cannot_pack_stays_plain(monkeypatch):
    """oneDNN refuses bfloat16 on CPUs without AVX-512 BW/VL/DQ or AVX-NE-CONVERT: those layers keep F.linear
    instead of failing at their first call."""
    def refuse(weight, batch):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert")

    monkeypatch.setattr(prepack, "_PACKS", {})
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    model = small_model()
    reference = copy.deepcopy(model)
    assert prepack_linears(model) == 0 and type(model[0]) is torch.nn.Linear
    x = torch.randn(3, 24)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x))


def test_engine_greedy_tokens_are_the_same_with_packing_on_and_off(tiny_base_dir):
    from service.engine.registry import ModelRegistry
    from service.engine.settings import ModelSettings

    outputs = {}
    for packed in (False, True):
        registry = ModelRegistry(ModelSettings(base_model=str(tiny_base_dir), prepack=packed))
        registry.start()
        model, tok = registry.base.model, registry.base.loaded.tokenizer
        assert any(type(m) is PackedLinear for m in model.modules()) is packed
        batch = tok(["the quick brown fox", "a b c d e f"], return_tensors="pt", padding=True)
        with torch.inference_mode():
            outputs[packed] = model.generate(**batch, max_new_tokens=12, do_sample=False,
                                             pad_token_id=tok.pad_token_id).tolist()
    assert outputs[True] == outputs[False]
