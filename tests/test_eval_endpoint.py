"""EndpointPredictor: request/response translation (httpx.MockTransport) and, in integration, a real server."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from training.artifact.errors import NotFound, Unauthenticated, Unavailable
from training.evaluation.endpoint import EndpointPredictor
from training.evaluation.predictions import ScoringUnsupported
from training.evaluation.predictor import split_endpoint
from training.evaluation.runner import EvalConfig, evaluate
from training.tracking import TrackingConfig



class FakeOpenAI:
    """Records requests and answers in the OpenAI wire format (the contract under test, not a model)."""

    def __init__(self, echo: bool = True) -> None:
        self.requests: list[tuple[str, str, dict, dict]] = []
        self.echo = echo

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, request.url.path, body, dict(request.headers)))
        if request.headers.get("authorization") != "Bearer sk-test":
            return httpx.Response(401, json={"error": {"message": "invalid API key", "type": "authentication_error"}})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}, {"id": "other"}]})
        if request.url.path == "/v1/classify":
            data = [{"index": i, "label": "pos" if "good" in t else "neg", "score": 0.8,
                     "scores": [{"label": "pos", "score": 0.8}, {"label": "neg", "score": 0.2}] if "good" in t
                     else {"pos": 0.3, "neg": 0.7}}  # the list form (tuneserve) and the mapping form
                    for i, t in enumerate(body["input"])]
            return httpx.Response(200, json={"object": "list", "data": list(reversed(data))})
        if body.get("echo"):
            if not self.echo:
                return httpx.Response(400, json={"error": {"message": "echo is not supported"}})
            prompt = body["prompt"]
            tokens = prompt.split(" ")
            offsets = [sum(len(t) + 1 for t in tokens[:i]) for i in range(len(tokens))]
            return httpx.Response(200, json={"choices": [{"text": prompt, "logprobs": {
                "tokens": tokens, "token_logprobs": [None] + [-1.0] * (len(tokens) - 1), "text_offset": offsets}}]})
        chat = request.url.path == "/v1/chat/completions"
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        answer = "Denver Broncos\nmore text" if "Who won" in prompt else "ok"
        choice = {"message": {"role": "assistant", "content": answer}} if chat else {"text": answer}
        return httpx.Response(200, json={"choices": [{**choice, "index": 0}],
                                         "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})


def client(handler) -> httpx.Client:
    return httpx.Client(base_url="http://server", transport=httpx.MockTransport(handler))


def test_translation_of_each_route():
    server = FakeOpenAI()
    p = EndpointPredictor("http://server", api_key="sk-test", client=client(server), route="completions")
    assert p.model == "tiny", "the first served model is used when none is named"
    preds = p.classify(["good film", "bad film"])
    assert [x.label for x in preds] == ["pos", "neg"] and preds[1].confidence == pytest.approx(0.7)
    assert preds[0].scores == {"pos": 0.8, "neg": 0.2}
    gens = p.generate(["Who won?", "hi"], max_new_tokens=5)
    assert gens[0].text.startswith("Denver Broncos") and gens[0].tokens == 3 and gens[0].latency_s > 0
    # "the prompt next words" splits at offsets 0,4,11,16; the continuation starts at 10 -> 2 tokens of -1.0
    nll = p.score(["the prompt"], [" next words"])
    assert nll == [(2.0, 2)]
    sent = {path: body for _, path, body, _ in server.requests}
    assert sent["/v1/classify"] == {"model": "tiny", "input": ["good film", "bad film"]}
    assert sent["/v1/completions"]["echo"] is True and sent["/v1/completions"]["max_tokens"] == 0
    completions = [b for _, path, b, _ in server.requests if path == "/v1/completions" and not b.get("echo")]
    assert completions[0] == {"model": "tiny", "prompt": "Who won?", "max_tokens": 5, "temperature": 0.0}
    assert all(h["authorization"] == "Bearer sk-test" for *_, h in server.requests)


def test_chat_route_sends_the_user_message():
    server = FakeOpenAI()
    p = EndpointPredictor("http://server", model="tiny", api_key="sk-test", client=client(server))
    prompt = p.render_instruction("Who won the game?", "Context: Denver won.")
    assert prompt == "Who won the game?\n\nContext: Denver won.", "no template client-side; the server applies it"
    [gen] = p.generate([prompt], max_new_tokens=4)
    assert gen.text.startswith("Denver Broncos") and gen.tokens == 3
    _, path, body, _ = server.requests[-1]
    assert path == "/v1/chat/completions"
    assert body == {"model": "tiny", "max_tokens": 4, "temperature": 0.0,
                    "messages": [{"role": "user", "content": prompt}]}
    with pytest.raises(ScoringUnsupported, match="route=completions"):
        p.score(["a"], ["b"])


def test_errors_are_translated():
    with pytest.raises(Unauthenticated, match="HTTP 401: invalid API key") as info:
        EndpointPredictor("http://server", api_key="wrong", client=client(FakeOpenAI()))
    assert "--api-key" in info.value.hint
    p = EndpointPredictor("http://server", model="tiny", api_key="sk-test", client=client(FakeOpenAI(echo=False)),
                          route="completions")
    with pytest.raises(ScoringUnsupported, match="echo is not supported"):
        p.score(["a"], [" b"])
    missing = EndpointPredictor("http://server", model="x", client=client(lambda r: httpx.Response(
        404, json={"error": {"message": "model 'x' not found"}})))
    with pytest.raises(NotFound, match="not found"):
        missing.generate(["hi"], 4)

    def refuse(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(Unavailable, match="cannot reach"):
        EndpointPredictor("http://server", model="m", client=client(refuse)).classify(["x"])
    assert split_endpoint("http://h:8000/v1/#adapter") == ("http://h:8000", "adapter")


def test_qa_run_through_endpoint(tmp_path):
    rows = tmp_path / "qa.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        {"context": "Denver won.", "question": "Who won the game?", "answers": ["Denver Broncos"]},
        {"context": "It rained.", "question": "What happened?", "answers": ["rain"]}]))
    server = FakeOpenAI()
    p = EndpointPredictor("http://server", model="tiny", api_key="sk-test", client=client(server))
    cfg = EvalConfig(data=str(rows), task="qa", tracking=TrackingConfig(enabled=False))
    result, out = evaluate(cfg, predictor=p, progress=False, out=tmp_path / "eval")
    assert result.per_sample["exact_match"] == [1.0, 0.0] and result.metrics["exact_match"] == 50.0
    assert result.metrics["tokens_per_s"] > 0 and result.model["transport"] == "http"
    assert (out / "eval_report.json").is_file()


@pytest.mark.integration
def test_evaluate_against_running_server(served_app, shared_data, tmp_path):  # noqa: F811
    """The served model evaluated exactly as users hit it: the real Ray Serve app over HTTP, chat and classify."""
    key = served_app["keys"]["infer"]
    base = dict(api_key=key, max_new_tokens=8, tracking=TrackingConfig(enabled=False), limit=6)
    qa = EvalConfig(model=f"{served_app['url']}#a1", data=str(shared_data / "squad_v1.1_dev/squad_v1.1_dev_subset2k.jsonl"),
                    task="qa", out=str(tmp_path / "qa"), **base)
    result, out = evaluate(qa, progress=False)
    assert result.model == {"transport": "http", "url": served_app["url"], "model": "a1", "route": "chat", "name": "a1"}
    assert result.data["rows"] == 6 and all(math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["latency_mean_s"] > 0 and result.metrics["tokens_per_s"] > 0
    assert (out / "eval_report.html").is_file()

    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps(r) + "\n" for r in json.loads(
        (shared_data / "alpaca_en_demo/alpaca_en_demo.json").read_text())[:3]))
    gen = EvalConfig(model=f"{served_app['url']}#a1", data=str(alpaca), task="instruction", out=str(tmp_path / "gen"),
                     endpoint_route="completions", **base)
    result, _ = evaluate(gen, progress=False)
    assert math.isfinite(result.metrics["bleu"]) and math.isfinite(result.metrics["rougeL"])
    assert "perplexity" in result.metrics or any("perplexity not computed" in n for n in result.notes)

    rows = tmp_path / "cls.jsonl"
    rows.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in
                            [("great stuff", "pos"), ("awful", "neg"), ("fine day", "pos"), ("bad news", "neg")]))
    cls = EvalConfig(model=f"{served_app['url']}#clf", data=str(rows), task="classification", out=str(tmp_path / "cls"),
                     **base)
    result, out = evaluate(cls, progress=False)
    assert set(result.details["labels"]) == {"neg", "pos"} and 0 <= result.metrics["ece"] <= 1
    assert (out / "confusion_matrix.png").is_file() and (out / "reliability.png").is_file()
