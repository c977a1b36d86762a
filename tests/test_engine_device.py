"""The engine's `device` setting: resolution, clear errors for a GPU torch cannot see, the GPU overlay
asking for one, and the in-process device benchmark's smoke run on the CPU (benchmarks/engine_device.py).

    pytest tests/test_engine_device.py
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from service.engine.device import CPU, model_device, on_device, resolve_device
from service.engine.settings import EngineSettings
from training.artifact.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


def test_cpu_and_auto_resolve_to_the_cpu_without_a_gpu():
    assert resolve_device("cpu") == CPU
    if NO_CUDA:
        assert resolve_device("auto") == CPU


@pytest.mark.skipif(not NO_CUDA, reason="asserts the error a box without CUDA gives")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_gpu_torch_cannot_see_is_a_config_error_with_what_to_do(name):
    with pytest.raises(ConfigError) as info:
        resolve_device(name)
    assert name in info.value.message and "device=cpu" in info.value.hint


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "CUDA", ""])
def test_unknown_device_names_fail_validation(name):
    with pytest.raises(ValidationError) as info:
        EngineSettings(device=name)
    assert "device" in str(info.value)


def test_cpu_inputs_pass_through_and_a_module_reports_its_device():
    inputs = {"input_ids": torch.ones(1, 2, dtype=torch.long), "use_cache": True}
    assert on_device(inputs, CPU) is inputs
    assert model_device(torch.nn.Linear(2, 2)) == CPU
    assert model_device(object()) == CPU  # an ONNX session or any non-torch model stays on the CPU


def test_the_gpu_overlay_runs_the_engine_on_its_gpu_in_bfloat16():
    overlay = yaml.safe_load((ROOT / "k8s/overlays/gpu/rayservice-gpu.yaml").read_text())
    serve = yaml.safe_load(overlay[0]["value"])
    application = serve["applications"][0]
    assert application["args"]["device"] == "cuda" and application["args"]["dtype"] == "bfloat16"
    engine = next(d for d in application["deployments"] if d["name"] == "Engine")
    assert engine["ray_actor_options"]["num_gpus"] == 1
    EngineSettings(**{k: v for k, v in application["args"].items() if k in EngineSettings.model_fields})


def test_the_device_benchmark_runs_on_the_cpu_and_records_its_goals(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/engine_device.py", "--device", "cpu", "--shapes", "tiny",
                           "--reps", "1", "--requests", "1", "--max-tokens", "4", "--tokenizer",
                           str(_tokenizer_dir()), "--results-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "engine_device.json").read_text())
    (row,) = report["shapes"]
    assert row["shape"] == "tiny" and min(row["engine_tokens_per_s"]) > 0 and min(row["raw_tokens_per_s"]) > 0
    assert {g["id"] for g in report["goals"]} == {"P1", "P11a", "P11b", "P14"}
    assert 0 < row["engine_over_bound"] < 1  # a roofline bound is never beaten


def _tokenizer_dir() -> Path:
    from training.artifact import resolve_base_dir

    return resolve_base_dir("tiny-llama")


@pytest.mark.parametrize("device, gpus", [("cuda", 1), ("cuda:1", 1), ("cpu", None)])
def test_an_engine_on_cuda_asks_ray_for_a_gpu(device, gpus):
    from service.app import app_builder

    app = app_builder({"device": device})
    engine = app._bound_deployment.init_args[0]._bound_deployment
    assert engine.name == "Engine" and engine.ray_actor_options.get("num_gpus") == gpus
    assert engine.ray_actor_options["num_cpus"] == 2


@pytest.mark.gpu
def test_the_engine_on_cuda_answers_as_on_the_cpu(tiny_base_dir, tmp_path):
    """Mixed-adapter batches, greedy and logprob rows, in fp32: the same tokens on the GPU as on the CPU."""
    if NO_CUDA:
        pytest.skip("needs a CUDA device")
    from service.engine.engine import Engine
    from tests.service_fixtures import make_adapter

    for name in ("a1", "a2"):
        make_adapter(tiny_base_dir, tmp_path / name, name, seed=int(name[1]))
    answers = {}
    for device in ("cpu", "cuda"):
        engine = Engine(EngineSettings(base_model=str(tiny_base_dir), device=device, artifacts_dir=tmp_path,
                                       cache={"enabled": False}))
        engine.start()
        try:
            assert engine.registry.base.device.type == device
            answers[device] = _batch_answers(engine)
        finally:
            engine.stop()
    assert answers["cuda"] == answers["cpu"]


def _batch_answers(engine) -> list[str]:
    import asyncio

    from service.engine.types import SamplingParams

    tokenizer = engine.registry.base.loaded.tokenizer
    texts = ["The quick brown fox", "Once upon a time", "In the beginning", "To be or not to be"]
    work = [(text, model, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True,
                                         logprobs=2 if i % 2 else None))
            for i, (text, model) in enumerate((t, m) for t in texts for m in ("base", "a1", "a2"))]

    async def one(text, model, params) -> str:
        pieces = []
        async for event in engine.generate(engine.registry.acquire(model), tokenizer(text)["input_ids"], params):
            pieces.append(event.text)
        return "".join(pieces)

    async def all_rows():
        return await asyncio.gather(*(one(*row) for row in work))

    return asyncio.run(all_rows())
