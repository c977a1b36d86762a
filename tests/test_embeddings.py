"""Embeddings (issue 18) through the official `openai` client (its httpx client is the TestClient over
the REST app and a real ServingCore serving the tiny causal base and the bundled MiniLM encoder) and
through gRPC stubs over the same core: texts, token ids, base64, dimensions, limits, auth, /v1/models,
agreement with sentence-transformers, a classification-trained LoRA adapter's encoder, batching,
metrics and drift.

    pytest tests/test_embeddings.py
"""

from __future__ import annotations

import asyncio
import base64

import grpc
import numpy as np
import pytest

from service.embedding_schemas import EmbeddingRequest
from service.grpc.gen.tuneserve.v1 import inference_pb2 as pb
from service.settings import load_settings
from tests.service_fixtures import (  # noqa: F401
    grpc_inference_stub, in_process_server, make_adapter, openai_client, service_args,
)
from tests.train_support import classification_rows, make_config, train_args, write_jsonl
from training.artifact import MINILM, ArtifactWriter, fingerprint_model_dir, resolve_base_dir

openai = pytest.importorskip("openai")

TEXTS = ["The cat sits on the mat.", "A quarterly report on revenue", "¿Dónde está la biblioteca?"]
MAX_INPUTS = 6


def make_encoder_adapter(dest, name: str, seed: int = 0):
    """A LoRA classification adapter on MiniLM, saved as the trainer saves one (PEFT SEQ_CLS with the
    head in modules_to_save), with random non-zero LoRA weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    base_dir = resolve_base_dir(MINILM)
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=3)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"],
                                             init_lora_weights=False, modules_to_save=["classifier"]))
    manifest = {"name": name, "kind": "adapter", "task": "classification", "method": "lora",
                "labels": ["a", "b", "c"], "base": {"id": MINILM, "sha256": fingerprint_model_dir(base_dir)}}
    with ArtifactWriter(dest, manifest, overwrite=True) as writer:
        model.save_pretrained(str(writer.path), safe_serialization=True)
        (writer.path / "README.md").unlink(missing_ok=True)
    return dest


@pytest.fixture(scope="module")
def artifacts(tiny_base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed-artifacts")
    make_adapter(tiny_base_dir, root / "a1", "a1", seed=1)
    make_encoder_adapter(root / "enc1", "enc1", seed=3)
    from training.train import train  # and one the trainer made: `task: classification` LoRA on MiniLM

    data = write_jsonl(tmp_path_factory.mktemp("embed-data") / "train.jsonl", classification_rows(24))
    train(make_config(*train_args(MINILM, data, root / "intents", "task=classification", "max_steps=2",
                                  "profile.enabled=false")))
    return root


@pytest.fixture(scope="module")
def served(tiny_base_dir, artifacts, serve_keys):
    args = service_args(tiny_base_dir, artifacts, serve_keys[0], embedding_model=MINILM)
    settings = load_settings(args, [f"limits.max_embedding_inputs={MAX_INPUTS}", "batching.batch_wait_timeout_s=0.2",
                                    "batching.batch_max_wait_s=0.5"])
    with in_process_server(settings, serve_keys[1]) as http:
        yield http


@pytest.fixture(scope="module")
def oc(served):
    return openai_client(served)


@pytest.fixture(scope="module")
def tokenizer(served):
    return served.core.engine.encoder.registry.base.loaded.tokenizer


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers' own all-MiniLM-L6-v2 (Transformer, mean Pooling, Normalize)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_base_dir(MINILM)), device="cpu")


def vectors(reply) -> np.ndarray:
    return np.array([d.embedding for d in sorted(reply.data, key=lambda d: d.index)], dtype=np.float32)


def status_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value.status_code, caught.value.body


# ---- REST through the openai client --------------------------------------------------------
def test_texts_agree_with_sentence_transformers(oc, reference, tokenizer):
    reply = oc.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert reply.object == "list" and reply.model == MINILM
    assert [d.index for d in reply.data] == [0, 1, 2] and all(d.object == "embedding" for d in reply.data)
    got = vectors(reply)
    want = reference.encode(TEXTS, normalize_embeddings=True)
    assert got.shape == want.shape == (3, 384)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.999, cosine
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens


def test_one_string_and_batched_inputs_give_the_same_vectors(oc):
    alone = vectors(oc.embeddings.create(model=MINILM, input=TEXTS[1], encoding_format="float"))
    together = vectors(oc.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float"))
    assert alone.shape == (1, 384)
    assert np.allclose(alone[0], together[1], atol=1e-5)  # padding in a batch changes nothing


def test_base64_decodes_to_the_float_vectors(oc, served):
    floats = vectors(oc.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float"))
    decoded = vectors(oc.embeddings.create(model=MINILM, input=TEXTS))  # the client asks base64, decodes it
    assert np.array_equal(decoded, floats)
    raw = served.post("/v1/embeddings", json={"model": MINILM, "input": TEXTS, "encoding_format": "base64"},
                      headers={"Authorization": f"Bearer {served.keys['infer']}"}).json()
    assert all(isinstance(d["embedding"], str) for d in raw["data"])
    little_endian = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    assert np.array_equal(little_endian, floats)


def test_token_ids_embed_like_their_text(oc, tokenizer):
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    texts = vectors(oc.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float"))
    one = vectors(oc.embeddings.create(model=MINILM, input=ids[0], encoding_format="float"))
    several = vectors(oc.embeddings.create(model=MINILM, input=ids, encoding_format="float"))
    assert np.allclose(one[0], texts[0], atol=1e-5) and np.allclose(several, texts, atol=1e-5)


def test_dimensions_truncate_and_renormalise(oc):
    full = vectors(oc.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float"))
    short = vectors(oc.embeddings.create(model=MINILM, input=TEXTS, dimensions=64, encoding_format="float"))
    assert short.shape == (3, 64)
    want = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    assert np.allclose(short, want, atol=1e-5)
    code, body = status_of(lambda: oc.embeddings.create(model=MINILM, input="x", dimensions=385))
    assert code == 400 and body["param"] == "dimensions" and "384" in body["message"]


@pytest.mark.parametrize("case, payload, param", [
    ("no inputs", {"input": []}, "input"),
    ("empty text", {"input": ["fine", ""]}, "input"),
    ("too many inputs", {"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
    ("longer than the encoder's context", {"input": "word " * 600}, "input"),
    ("token id outside the vocabulary", {"input": [101, 10**6, 102]}, "input"),
    ("unknown encoding", {"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ("zero dimensions", {"input": "x", "dimensions": 0}, "dimensions"),
])
def test_bad_requests_are_400_naming_the_field(served, case, payload, param):
    reply = served.post("/v1/embeddings", json={"model": MINILM, **payload},
                        headers={"Authorization": f"Bearer {served.keys['infer']}"})
    assert reply.status_code == 400, (case, reply.text)
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and param in (error["param"] or error["message"]), (case, error)


def test_models_of_another_kind_are_400_naming_their_endpoint(oc, served):
    base = served.core.registry.base_name
    code, body = status_of(lambda: oc.embeddings.create(model=base, input="x"))
    assert code == 400 and body["param"] == "model" and "/v1/completions" in body["message"]
    code, body = status_of(lambda: oc.completions.create(model=MINILM, prompt="x", max_tokens=1))
    assert code == 400 and "/v1/embeddings" in body["message"]
    code, body = status_of(lambda: oc.embeddings.create(model="no-such-model", input="x"))
    assert code == 404 and MINILM in body["message"]


def test_keys_and_scopes_apply(served):
    url = "/v1/embeddings"
    body = {"model": MINILM, "input": "x"}
    assert served.post(url, json=body).status_code == 401
    for label in ("only-a1", "metrics"):  # a key for other models, a key without the infer scope
        reply = served.post(url, json=body, headers={"Authorization": f"Bearer {served.keys[label]}"})
        assert reply.status_code == 403, label
    only_a1 = openai_client(served, "only-a1")
    assert MINILM not in [m.id for m in only_a1.models.list().data]


def test_models_list_the_encoder_and_its_adapter(oc):
    cards = {m.id: m for m in oc.models.list().data}
    assert cards[MINILM].task == "embedding" and cards[MINILM].kind == "base"
    assert cards[MINILM].max_model_len == 512 and cards[MINILM].root == MINILM
    assert cards["enc1"].task == "embedding" and cards["enc1"].parent == MINILM
    assert "a1" in cards and cards["a1"].task == "causal-lm"


# ---- adapters, batching, metrics, drift -----------------------------------------------------
def classifier_encoder_embeddings(adapter_dir, texts: list[str]) -> np.ndarray:
    """The reference: the adapter loaded by PEFT on its classifier, its encoder's last hidden states
    mean-pooled and normalised."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.artifact import read_manifest

    base_dir = resolve_base_dir(MINILM)
    labels = read_manifest(adapter_dir).labels
    classifier = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=len(labels))
    classifier = PeftModel.from_pretrained(classifier, str(adapter_dir)).eval()
    enc = AutoTokenizer.from_pretrained(str(base_dir))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = classifier(**enc, output_hidden_states=True).hidden_states[-1]
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


@pytest.mark.parametrize("adapter", ["enc1", "intents"])
def test_adapter_serves_its_fine_tuned_encoder(oc, artifacts, adapter):
    got = vectors(oc.embeddings.create(model=adapter, input=TEXTS, encoding_format="float"))
    assert np.allclose(got, classifier_encoder_embeddings(artifacts / adapter, TEXTS), atol=1e-4)
    base = vectors(oc.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float"))
    assert not np.allclose(got, base, atol=1e-5)  # the adapter changed the encoder
    if adapter == "enc1":  # strong random LoRA weights
        assert (got * base).sum(1).max() < 0.99


def test_requests_on_different_adapters_share_one_forward(served, monkeypatch):
    core = served.core
    encoder = core.engine.encoder
    batches: list[int] = []
    forward = encoder._forward
    monkeypatch.setattr(encoder, "_forward", lambda target, rows: batches.append(len(rows)) or forward(target, rows))

    async def all_at_once():
        requests = [EmbeddingRequest(model=m, input=TEXTS[:2], encoding_format="float") for m in (MINILM, "enc1")] * 2
        return await asyncio.gather(*(core.embed(r, None) for r in requests))

    together = asyncio.run(all_at_once())
    assert max(batches) > 2, batches  # several requests' rows in one forward (the window is 0.2 s here)
    batches.clear()
    alone = [asyncio.run(core.embed(EmbeddingRequest(model=m, input=TEXTS[:2], encoding_format="float"), None))
             for m in (MINILM, "enc1")]
    for mixed, single in zip(together[:2], alone):
        assert mixed.model == single.model
        assert np.allclose([d.embedding for d in mixed.data], [d.embedding for d in single.data], atol=1e-5)


def test_metrics_and_drift_observe_the_resolved_model(oc, served):
    from service import metrics

    def embedded(model: str) -> float:
        return metrics.EMBEDDED.labels(model)._value.get()

    before = embedded("enc1")
    oc.embeddings.create(model="enc1", input=TEXTS)
    assert embedded("enc1") == before + len(TEXTS)
    assert "enc1" in served.core.drift.windows and MINILM in served.core.drift.windows


def test_a_full_queue_refuses_and_a_stop_fails_the_waiting_requests(served):
    from service.engine.embed import EncoderEngine
    from training.artifact.errors import Overloaded, Unavailable

    encoder = EncoderEngine(served.core.settings, capacity=1)
    encoder._running = True  # accepting requests, but no thread takes them from the queue
    released = []

    class Lease:
        def release(self):
            released.append(True)

    async def three():
        first = asyncio.ensure_future(encoder.embed(Lease(), [[101, 102]]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await encoder.embed(Lease(), [[101, 102]])
        assert released == [True]  # the refused request's lease
        encoder.stop()
        with pytest.raises(Unavailable):
            await first
        with pytest.raises(Unavailable):
            await encoder.embed(Lease(), [[101, 102]])

    asyncio.run(three())
    assert released == [True] * 3


def test_remote_core_embeds_through_the_engine_deployment(served):
    """The Ray path without Ray: RemoteCore → (pickled, as over a handle) EngineDeployment.call → the core."""
    import pickle

    from service.app import EngineDeployment, RemoteCore
    from training.artifact.errors import InvalidRequest

    class Deployment(EngineDeployment.func_or_class):
        def __init__(self) -> None:  # over the module's core, which it must not stop when collected
            self.core, self.ingress_secret = served.core, "secret"

        def __del__(self) -> None:
            pass

    deployment = Deployment()

    class Handle:
        class call:  # noqa: N801 - mirrors DeploymentHandle.call
            @staticmethod
            async def remote(*args):
                return pickle.loads(pickle.dumps(await deployment.call(*pickle.loads(pickle.dumps(args)))))

    remote = RemoteCore(Handle(), "secret")
    request = EmbeddingRequest(model="enc1", input=TEXTS[:2], encoding_format="float")
    reply = asyncio.run(remote.embed(request, None))
    local = asyncio.run(served.core.embed(request, None))
    assert reply.model == "enc1" and np.allclose([d.embedding for d in reply.data], [d.embedding for d in local.data])
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(remote.embed(EmbeddingRequest(model=MINILM, input="x", dimensions=999), None))
    assert caught.value.param == "dimensions"


# ---- gRPC ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stub(served):
    with grpc_inference_stub(served.core, served.keys["infer"]) as made:
        yield made


def test_grpc_embed_matches_rest(stub, oc, tokenizer):
    call, key = stub
    rest = vectors(oc.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float"))
    reply = call.Embed(pb.EmbedRequest(model=MINILM, inputs=TEXTS), metadata=key)
    assert reply.model == MINILM and [e.index for e in reply.data] == [0, 1, 2]
    assert np.allclose([list(e.values) for e in reply.data], rest, atol=1e-6)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0
    ids = [pb.TokenIds(ids=tokenizer(t)["input_ids"]) for t in TEXTS]
    packed = call.Embed(pb.EmbedRequest(model=MINILM, token_inputs=ids, encoding_format="base64", dimensions=32),
                        metadata=key)
    got = np.stack([np.frombuffer(e.packed, dtype="<f4") for e in packed.data])
    want = rest[:, :32] / np.linalg.norm(rest[:, :32], axis=1, keepdims=True)
    assert got.shape == (3, 32) and np.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("request_, code", [
    (pb.EmbedRequest(model=MINILM, inputs=["x"], dimensions=1000), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.EmbedRequest(model=MINILM), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.EmbedRequest(model="a1", inputs=["x"]), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.EmbedRequest(model="nope", inputs=["x"]), grpc.StatusCode.NOT_FOUND),
])
def test_grpc_embed_errors_use_the_error_table(stub, request_, code):
    call, key = stub
    with pytest.raises(grpc.RpcError) as caught:
        call.Embed(request_, metadata=key)
    assert caught.value.code() == code


def test_grpc_embed_needs_a_key(stub):
    call, _ = stub
    with pytest.raises(grpc.RpcError) as caught:
        call.Embed(pb.EmbedRequest(model=MINILM, inputs=["x"]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_one_model_cannot_be_both_the_base_and_the_embedding_model():
    from training.artifact.errors import ConfigError

    with pytest.raises(ConfigError, match="embedding_model"):
        load_settings({"base_model": MINILM, "embedding_model": MINILM})
    assert load_settings({"embedding_model": MINILM}).embedding_model == MINILM
