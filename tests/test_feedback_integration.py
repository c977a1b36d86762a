"""The issue's check on the real Ray Serve app (`served_app`, once per session): requests are served,
feedback that contradicts them (REST and gRPC, through the Ingress → Engine handle) drops the online
accuracy, the node's /metrics (multiprocess mode) shows the gauge move, and promtool, fed the scraped
values, fires TuneserveOnlineQualityDegraded.  Run: pytest -m integration tests/test_feedback_integration.py
"""

from __future__ import annotations

import grpc
import httpx
import pytest
import yaml
from deploy_support import DEPLOY, run_tool
from prometheus_client.parser import text_string_to_metric_families

from service.grpc.gen.tuneserve.v1 import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.integration
TEXTS = [f"please help with request number {i}" for i in range(10)]


def scraped(http, served_app) -> dict[tuple[str, str], float]:
    text = http.get("/metrics", headers={"Authorization": f"Bearer {served_app['keys']['metrics']}"}).text
    return {(family.name, sample.labels.get("kind")): sample.value for family in text_string_to_metric_families(text)
            if family.name.startswith("tuneserve_online_quality") for sample in family.samples
            if sample.labels.get("adapter") == "clf"}


def test_feedback_drops_online_accuracy_moves_the_gauge_and_fires_the_alert(served_app, tmp_path):
    headers = {"Authorization": f"Bearer {served_app['keys']['infer']}"}
    flip = {"neg": "pos", "pos": "neg"}
    with httpx.Client(base_url=served_app["url"], timeout=60) as http:
        served = http.post("/v1/classify", headers=headers, json={"model": "clf", "input": TEXTS}).json()
        for i, item in enumerate(served["data"]):  # REST: every served label confirmed
            reply = http.post("/v1/feedback", headers=headers, json={"id": served["id"], "index": i, "label": item["label"]})
            assert reply.status_code == 200 and reply.json()["model"] == "clf", reply.text
        before = scraped(http, served_app)
        assert before[("tuneserve_online_quality", "accuracy")] == 1.0

        with grpc.insecure_channel(served_app["grpc"]) as channel:  # gRPC: every served label corrected
            stub, metadata = inference_pb2_grpc.InferenceStub(channel), (("x-api-key", served_app["keys"]["infer"]),)
            again = stub.Classify(inference_pb2.ClassifyRequest(model="clf", inputs=TEXTS), metadata=metadata)
            for result in again.results:
                stub.Feedback(inference_pb2.FeedbackRequest(id=again.id, index=result.index, label=flip[result.label]),
                              metadata=metadata)
            with pytest.raises(grpc.RpcError) as err:
                stub.Feedback(inference_pb2.FeedbackRequest(id=served["id"], label="pos"),
                              metadata=(("x-api-key", served_app["keys"]["admin"]),))  # another tenant
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        after = scraped(http, served_app)
    assert after[("tuneserve_online_quality", "accuracy")] == pytest.approx(0.5)
    assert after[("tuneserve_online_quality_samples", "accuracy")] == 20

    # the scraped values, held for 30 minutes, fire the shipped alert rule
    labels = 'job="tuneserve", instance="node:8000", adapter="clf", kind="accuracy"'
    value = f"{after[('tuneserve_online_quality', 'accuracy')]:.2f}"
    annotations = {"summary": f"Online accuracy of clf fell to {value}",
                   "description": f"User feedback puts the accuracy of clf at {value} (accuracy 0..1, alerting under "
                                  "0.7; mean rating 1..5, alerting under 3) for 15 minutes.",
                   "runbook_url": "docs/runbooks.md#tuneserveonlinequalitydegraded"}
    spec = {"rule_files": [str(DEPLOY / "prometheus" / "rules" / "feedback.yml")], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": [
                {"series": f"tuneserve_online_quality{{{labels}}}", "values": f"{before[('tuneserve_online_quality', 'accuracy')]}x5 "
                                                                            f"{after[('tuneserve_online_quality', 'accuracy')]}x30"},
                {"series": f"tuneserve_online_quality_samples{{{labels}}}",
                 "values": f"{after[('tuneserve_online_quality_samples', 'accuracy')]:g}x35"}],
                "alert_rule_test": [{"eval_time": "10m", "alertname": "TuneserveOnlineQualityDegraded", "exp_alerts": []},
                                    {"eval_time": "30m", "alertname": "TuneserveOnlineQualityDegraded", "exp_alerts": [
                                        {"exp_labels": {"severity": "warning", "adapter": "clf", "kind": "accuracy"},
                                         "exp_annotations": annotations}]}]}]}
    path = tmp_path / "scraped_test.yml"
    path.write_text(yaml.safe_dump(spec))
    result = run_tool("promtool", "test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
