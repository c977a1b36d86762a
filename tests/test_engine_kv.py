"""service/engine/kv.py: KV layers that append in place give the decode the same logits as transformers'
concatenating cache, across rows leaving, padding trimmed and a failed step cut back."""

import pytest


@pytest.fixture(scope="module")
def model(tiny_base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)).eval()


def _prefill(model, ids, attn):
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=attn, past_key_values=DynamicCache(), use_cache=True)
    return out.past_key_values, out.logits[:, -1].argmax(-1)


def _step(model, cache, attn, tokens):
    import torch

    attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=torch.long)], dim=1)
    with torch.inference_mode():
        logits = model(input_ids=tokens[:, None], attention_mask=attn, past_key_values=cache, use_cache=True).logits
    return attn, logits[:, -1]


def test_growing_layers_decode_like_concatenating_ones_through_leaves_trims_and_cut_backs(model, monkeypatch):
    import torch

    from service.engine import kv
    from service.engine.decode import truncate_cache
    from service.engine.kv import HEADROOM, GrowingLayer, growable

    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 9))
    attn = torch.ones_like(ids)
    attn[0, :4] = attn[2, :2] = 0  # left-padded shorter prompts
    plain, tokens = _prefill(model, ids, attn)
    grown, _ = _prefill(model, ids, attn)
    growable(grown)
    assert all(type(layer) is GrowingLayer for layer in grown.layers)
    rooms = []
    monkeypatch.setattr(kv, "_room_for", lambda t, n, real=kv._room_for: rooms.append(n) or real(t, n))
    for step in range(2 * HEADROOM + 10):
        _, want = _step(model, plain, attn, tokens)
        attn, got = _step(model, grown, attn, tokens)
        assert torch.allclose(got, want, atol=1e-5), step
        tokens = want.argmax(-1)
        if step == 10:  # a failed step's column cut back, then decoded again
            for cache in (plain, grown):
                truncate_cache(cache, attn.shape[1] - 1)
            attn = attn[:, :-1]
        if step == 20:  # the full-length row leaves
            keep = torch.tensor([0, 2])
            for cache in (plain, grown):
                cache.batch_select_indices(keep)
            attn, tokens = attn[keep], tokens[keep]
        if step == 30:  # the left padding no row needs any more is trimmed (as DecodeBatch._select does)
            for cache in (plain, grown):
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[..., 2:, :], layer.values[..., 2:, :]
            assert not attn[:, :2].any()
            attn = attn[:, 2:]
    assert grown.layers[0].keys.shape == plain.layers[0].keys.shape
    # new rooms (keys and values of each layer) at the first step, rows leaving, the trim and the room running out
    assert len(rooms) == 4 * 2 * len(grown.layers)
