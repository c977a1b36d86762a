"""Benchmark: load and faults (issue 17, goals R1, R2, R10) against a tiny-base server with
several adapters, driven by `loadtests/run.sh` (locust in its own process, REST + gRPC users).

  R1  16 users for --r1-duration over HTTP and gRPC, four adapters, one of the four keys limited
      to 30 requests/min: 0 failed requests besides the designed 429s
  R2  two Engine replicas; `ray.kill` one replica actor mid-load: <= 1 % failed requests and both
      replicas RUNNING again within 30 s. Then (reported, no goal) the rate-limit actor is killed,
      and the Ingress replica's Ray worker process gets SIGKILL: what users saw, and when the public
      port answered again
  R10 Engine autoscaling 2 -> 1 under a light load while streamed completions run back to back:
      0 failed requests, every stream ends with [DONE], a stream was in flight when a replica left

    PYTHONPATH=$PWD python benchmarks/load_faults.py [--r1-duration 5m] [--phase-s 60] [--only R1,R2,R10]
    PYTHONPATH=$PWD python benchmarks/load_faults.py --only R2 --r2-faults ingress --out load_faults_ingress
Writes benchmarks/results/load_faults.{json,md} (locust CSV/HTML under benchmarks/results/load_faults/).
R2 and R10 start the server in this process (they need its Ray driver to kill actors and read
Serve's status); R1 spawns it. About 12 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import (  # noqa: E402
    RESULTS, ROOT, arguments, command, goals_table, load_average, machine, provenance, versions, write_results)

MODELS = ["a0", "a1", "a2", "a3"]
R2_FAULTS = ("engine", "ratelimit", "ingress")
OUT = "load_faults"  # results name under benchmarks/results (--out)
PROMPT = "Tell me a short story about a fox"


def run_load(name: str, url: str, grpc: str, users: int, duration: str, keys: list[str], shape: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable, "RESULTS": str(RESULTS / OUT / name),
           "TUNESERVE_GRPC": grpc, "TUNESERVE_MODELS": ",".join(MODELS), "TUNESERVE_API_KEYS": ",".join(keys),
           "TUNESERVE_MAX_TOKENS": "16", "PYTHONPATH": str(ROOT)}
    log = open(RESULTS / OUT / f"{name}.log", "w")
    return subprocess.Popen([str(ROOT / "loadtests" / "run.sh"), url, str(users), duration, *([shape] if shape else [])],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def finish_load(name: str, proc: subprocess.Popen, started: float) -> dict:
    from loadtests.summary import summarize

    proc.wait()
    summary = summarize(RESULTS / OUT / name / "load")
    summary.update(exit_code=proc.returncode, measured_s=round(time.monotonic() - started, 1))
    return summary


def serve_config(work: Path, engine: dict) -> str:
    from service.launcher import default_config_path
    from training.artifact.config import read_yaml

    config = read_yaml(default_config_path())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Engine":
            deployment.pop("autoscaling_config", None)
            deployment.update(engine, ray_actor_options={"num_cpus": 1})
    path = work / f"serve-{len(list(work.glob('serve-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def running(app: str, deployment: str = "Engine") -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return sum(n for state, n in states.items() if str(state).endswith("RUNNING"))


def actors(kind: str) -> list[dict]:
    """Alive Serve replica actors of one deployment (name, pid) from the GCS."""
    from ray._private import state

    return [info for info in state.actors().values()
            if info["State"] == "ALIVE" and info["Name"].startswith("SERVE_REPLICA") and f"#{kind}#" in info["Name"]]


def wait_for(check, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.25)
    return None


class Streams(threading.Thread):
    """Streamed completions back to back over HTTP; records (start, end, ok) of each."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.stop, self.done = url, key, threading.Event(), []

    def run(self) -> None:
        import httpx

        body = {"model": MODELS[0], "prompt": PROMPT, "max_tokens": 200, "temperature": 0.8, "stream": True}
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120) as http:
            while not self.stop.is_set():
                started, ok = time.monotonic(), False
                try:
                    with http.stream("POST", "/v1/completions", json=body) as reply:
                        ok = reply.status_code == 200 and any(line == "data: [DONE]" for line in reply.iter_lines())
                except httpx.HTTPError:
                    pass
                self.done.append((started, time.monotonic(), ok))


def server_overrides(base_dir: Path, artifacts: Path, keys_file: Path, grpc_port: int) -> list[str]:
    from service.ports import free_port

    return [f"base_model={base_dir}", f"artifacts_dir={artifacts}", f"keys_file={keys_file}", "api_keys_env=null",
            f"port={free_port()}", f"grpc_port={grpc_port}", "cache.enabled=false"]


def start_server(work: Path, engine: dict, keys_file: Path, base_dir: Path, artifacts: Path):
    from service.launcher import start
    from service.ports import free_port

    os.environ["RAY_TMPDIR"] = "/tmp/ts-ray-loadfaults"
    grpc_port = free_port()
    server = start(serve_config(work, engine), server_overrides(base_dir, artifacts, keys_file, grpc_port), num_cpus=2)
    return server, f"127.0.0.1:{grpc_port}"


def r1(work: Path, base_dir: Path, artifacts: Path, keys_file: Path, keys: list[str], duration: str) -> dict:
    from service.server_process import spawn, terminate
    from service.ports import free_port

    grpc_port = free_port()
    proc, url = spawn(server_overrides(base_dir, artifacts, keys_file, grpc_port), work / "r1-server.log",
                      env={"RAY_TMPDIR": "/tmp/ts-ray-loadfaults"})
    try:
        started = time.monotonic()
        summary = finish_load("R1", run_load("R1", url, f"127.0.0.1:{grpc_port}", 16, duration, keys, "soak"), started)
    finally:
        terminate(proc)
    full = summary["measured_s"] >= 300
    met = False if summary["failures"] else (True if full else None)  # a shorter clean run proves nothing
    return {"id": "R1", "measure": f"failed requests besides designed 429s, 16 users HTTP+gRPC for {duration}",
            "value": summary["failures"], "goal": "0 over 5 min", "met": met, "load": summary,
            **({} if full else {"note": f"ran {summary['measured_s']} s, not the 5 min the goal asks"})}


def r2(work: Path, base_dir: Path, artifacts: Path, keys_file: Path, key: str, phase_s: int,
       faults: tuple[str, ...] = R2_FAULTS) -> dict:
    import ray

    from service.launcher import stop
    from service.security.ratelimit import ACTOR_NAME, ACTOR_NAMESPACE

    server, grpc = start_server(work, {"num_replicas": 2}, keys_file, base_dir, artifacts)
    phases = {}
    try:
        if "engine" in faults:  # ray.kill one Engine replica actor (no restart: Serve's controller must replace it)
            started = time.monotonic()
            load = run_load("R2-engine-kill", server.url, grpc, 8, f"{phase_s}s", [key])
            time.sleep(phase_s / 3)
            victim = actors("Engine")[0]
            ray.kill(ray.get_actor(victim["Name"], namespace="serve"), no_restart=True)
            killed = time.monotonic()
            wait_for(lambda: running(server.app_name) < 2, 10)
            back = wait_for(lambda: running(server.app_name) == 2 and len(actors("Engine")) == 2, 120)
            recovered_s = None if back is None else round(time.monotonic() - killed, 1)
            phases["engine_replica_kill"] = {"load": finish_load("R2-engine-kill", load, started),
                                             "killed_after_s": round(killed - started, 1), "replicas_back_after_s": recovered_s}
        if "ratelimit" in faults:  # Ray restarts the rate-limit actor; replicas re-fetch the handle, err open meanwhile
            started = time.monotonic()
            load = run_load("R2-ratelimit-kill", server.url, grpc, 8, f"{phase_s}s", [key])
            time.sleep(phase_s / 3)
            ray.kill(ray.get_actor(ACTOR_NAME, namespace=ACTOR_NAMESPACE), no_restart=False)
            phases["ratelimit_actor_kill"] = {"load": finish_load("R2-ratelimit-kill", load, started)}
        if "ingress" in faults:  # SIGKILL the Ingress replica's worker process (HTTP and gRPC servers live there)
            started = time.monotonic()
            load = run_load("R2-ingress-process-kill", server.url, grpc, 8, f"{phase_s}s", [key])
            time.sleep(phase_s / 3)
            os.kill(actors("Ingress")[0]["Pid"], signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: not answers(server.url), 10)
            back = wait_for(lambda: answers(server.url), 120)
            back_s = None if back is None else round(time.monotonic() - killed, 1)
            serving = wait_for(lambda: running(server.app_name, "Ingress") == 1, 120)
            phases["ingress_process_kill"] = {
                "load": finish_load("R2-ingress-process-kill", load, started), "killed_after_s": round(killed - started, 1),
                "port_answers_after_s": back_s,
                "ingress_running_after_s": None if serving is None else round(time.monotonic() - killed, 1)}
    finally:
        stop()
    if "engine" not in faults:
        return {"id": "R2", "measure": f"only {', '.join(faults)}: failed %, s until the port answered again",
                "value": {name: {"failed_pct": p["load"]["failed_pct"], **{k: v for k, v in p.items() if k.endswith("_after_s")}}
                          for name, p in phases.items()},
                "goal": "<= 1 % failed and back within 30 s (judged on the Engine kill)", "met": None, "phases": phases}
    engine = phases["engine_replica_kill"]
    failed_pct = engine["load"]["failed_pct"]
    recovered = engine["replicas_back_after_s"]
    met = failed_pct is not None and failed_pct <= 1.0 and recovered is not None and recovered <= 30
    return {"id": "R2", "measure": "Engine replica actor killed mid-load (2 replicas, 8 users): failed %, s until 2 RUNNING",
            "value": {"failed_pct": failed_pct, "replicas_back_after_s": recovered},
            "goal": "<= 1 % failed and back within 30 s", "met": bool(met), "phases": phases}


def answers(url: str) -> bool:
    """Whether the public port answers /ready (any HTTP answer: a connection refused is what users saw)."""
    import httpx

    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def r10(work: Path, base_dir: Path, artifacts: Path, keys_file: Path, key: str, phase_s: int) -> dict:
    from service.launcher import stop

    scaling = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 2, "target_ongoing_requests": 4,
               "metrics_interval_s": 0.5, "look_back_period_s": 2, "upscale_delay_s": 1, "downscale_delay_s": 10}
    server, grpc = start_server(work, {"autoscaling_config": scaling}, keys_file, base_dir, artifacts)
    timeline: list[tuple[float, int]] = []
    try:
        replicas_at_start = running(server.app_name)
        streams = Streams(server.url, key)
        started = time.monotonic()
        load = run_load("R10-downscale", server.url, grpc, 3, f"{phase_s}s", [key])
        streams.start()
        while load.poll() is None:
            timeline.append((round(time.monotonic() - started, 1), running(server.app_name)))
            time.sleep(0.5)
        streams.stop.set()
        streams.join(timeout=120)
        summary = finish_load("R10-downscale", load, started)
    finally:
        stop()
    dropped = next((t for t, n in timeline if n < replicas_at_start), None)
    in_flight = dropped is not None and any(s - started <= dropped <= e - started for s, e, _ in streams.done)
    failed_streams = sum(1 for *_, ok in streams.done if not ok)
    met = replicas_at_start == 2 and dropped is not None and summary["failures"] == 0 and failed_streams == 0 and in_flight
    return {"id": "R10", "measure": "failed requests while the Engine scales 2 -> 1 under load (3 users + back-to-back streams)",
            "value": summary["failures"] + failed_streams, "goal": "0, a stream in flight at the scale-down completes",
            "met": bool(met), "replicas_at_start": replicas_at_start, "first_below_start_after_s": dropped,
            "stream_in_flight_at_scale_down": in_flight, "streams": len(streams.done), "failed_streams": failed_streams,
            "final_replicas": timeline[-1][1] if timeline else None, "load": summary}


def r1_duration(args: argparse.Namespace) -> str:
    if args.end_by is None:
        return args.r1_duration
    left = int(args.end_by - time.time() - 90)  # server start and stop
    return f"{max(30, min(seconds(args.r1_duration), left))}s"


def seconds(timespan: str) -> int:
    """'300', '90s', '5m', '1h' in seconds (locust must not be imported here: it gevent-patches this process)."""
    units = {"s": 1, "m": 60, "h": 3600}
    return int(float(timespan[:-1]) * units[timespan[-1]]) if timespan[-1] in units else int(timespan)


def main() -> None:
    global OUT
    parser = arguments(__doc__)
    parser.add_argument("--r1-duration", default="5m")
    parser.add_argument("--phase-s", type=int, default=60, help="seconds of load per fault phase (R2, R10)")
    parser.add_argument("--only", default="R1,R2,R10")
    parser.add_argument("--r2-faults", default=",".join(R2_FAULTS), help="R2 phases to run, of " + ",".join(R2_FAULTS))
    parser.add_argument("--out", default=OUT, help="results name: benchmarks/results/<out>.{json,md} and <out>/")
    parser.add_argument("--end-by", type=float, default=None,
                        help="Unix time to be done by: R1 (run last) is shortened to fit, and says so")
    args = parser.parse_args()
    OUT = args.out
    from service.launcher import prepare_ray_env

    prepare_ray_env()  # token auth before anything below imports Ray (it reads RAY_AUTH_MODE once)

    from service.keys import add_key, create_key
    from tests.service_fixtures import make_adapter
    from training.artifact import resolve_base_dir

    base_dir = resolve_base_dir(args.base)
    work = Path(tempfile.mkdtemp(prefix="ts-loadfaults-"))
    artifacts = work / "artifacts"
    for i, name in enumerate(MODELS):
        make_adapter(base_dir, artifacts / name, name, seed=i)
    key, record = create_key("load", ["infer"])
    add_key(work / "keys.json", record)
    limited, record = create_key("limited", ["infer"], requests_per_min=30)
    add_key(work / "keys.json", record)
    (RESULTS / OUT).mkdir(parents=True, exist_ok=True)
    # versions from package metadata: importing Ray here, before the launcher sets its auth mode, would break its
    # start, and importing locust gevent-patches this process
    results: dict = {"load_average_before": load_average(), "goals": [], "machine": machine(),
                     "versions": versions("torch", "transformers", "ray", "locust"), "command": command()}
    keys_file = work / "keys.json"
    runs = {"R10": lambda: r10(work, base_dir, artifacts, keys_file, key, args.phase_s),  # faults first: most likely to break
            "R2": lambda: r2(work, base_dir, artifacts, keys_file, key, args.phase_s, tuple(args.r2_faults.split(","))),
            "R1": lambda: r1(work, base_dir, artifacts, keys_file, [key, key, key, limited], r1_duration(args))}
    for gid, measure in runs.items():
        if gid not in args.only.split(","):
            continue
        try:
            results["goals"].append(measure())
        except Exception as exc:  # noqa: BLE001 - the other goals still run; the error is the result
            results["goals"].append({"id": gid, "measure": "did not complete", "value": None, "goal": "",
                                     "met": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        results["load_average_after"] = load_average()
        write(results)


def write(results: dict) -> None:
    lines = ["# Load and faults", "", *provenance(results),
             f"Load average (1/5/15 min) before {results['load_average_before']}, after {results['load_average_after']}",
             "", "The 2 cores are shared with whatever else runs on the host (load averages above): latencies and",
             "request counts are noisy; failure counts and recovery times are what the goals judge.", "",
             *goals_table(results["goals"])]
    for g in results["goals"]:
        if "error" in g:
            lines.append(f"\n{g['id']} failed: {g['error']}")
        loads = [("", g["load"])] if "load" in g else [(name, p["load"]) for name, p in g.get("phases", {}).items()]
        for name, load in loads:
            extra = {k: v for k, v in (g["phases"][name] if name else {}).items() if k != "load"}
            lines.append(f"\n{g['id']} {name}: {load['requests']} requests, {load['failures']} failed "
                         f"({load['failed_pct']} %), {load['rate_limited']} designed 429s, {load['measured_s']} s {extra or ''}")
            lines += [f"- {k['count']} x {k['name']}: {k['error']}" for k in load["failure_kinds"]]
    if results.get("notes"):  # what a person read in the results, added to the JSON after the run
        lines += ["", "## What users saw", "", *[f"- {note}" for note in results["notes"]]]
    write_results(OUT, results, "\n".join(lines))


if __name__ == "__main__":
    main()
