"""R9 on a real Ray Serve app with two Engine replicas: an admin load reaches every replica, an unload
stops every replica, a restarted replica comes back with the admin-set state. Shared by
tests/test_fleet_integration.py and benchmarks/fleet.py (which records the seconds).

    server = start_two_replicas(tmp_path, base_dir, artifacts, keys_file)    # launcher.start, in process
    seconds = r9_scenario(server.url, keys, fresh_adapter_dir)               # {"load_s": ..., ...}
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

PROBES = 16  # concurrent completions per check: both replicas get some (Serve routes to the less busy of two)
ENGINE = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}


def two_replica_config(tmp_path: Path) -> str:
    from service.launcher import default_config_path
    from training.artifact.config import read_yaml

    config = read_yaml(default_config_path())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Engine":
            deployment.pop("autoscaling_config", None)
            deployment.update(ENGINE)
    path = tmp_path / "serve-two-engines.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def start_two_replicas(tmp_path: Path, args: dict):
    """launcher.start on a copy of serve.yaml with two Engine replicas; returns once both follow the state."""
    from service.launcher import start

    overrides = [f"{k}={'null' if v is None else v}" for k, v in args.items()] + ["cache.enabled=false"]
    return start(two_replica_config(tmp_path), overrides, num_cpus=2)


def fleet_view(http: httpx.Client) -> dict:
    reply = http.get("/v1/admin/adapters")
    assert reply.status_code == 200, reply.text
    return reply.json()["fleet"]


def wait_for(what: str, check, timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def probe(url: str, key: str, model: str) -> list[int]:
    """Status codes of PROBES concurrent one-token completions for `model`."""
    def one(i: int) -> int:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            return http.post("/v1/completions", json={"model": model, "prompt": f"probe {i}", "max_tokens": 1}).status_code

    with ThreadPoolExecutor(PROBES) as pool:
        return list(pool.map(one, range(PROBES)))


def until_every_probe(url: str, key: str, model: str, status: int, started: float, timeout_s: float) -> float:
    """Seconds from `started` until a whole round of probes answers `status`."""
    while True:
        codes = probe(url, key, model)
        if set(codes) == {status}:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{model}: still {sorted(codes)} after {timeout_s:.0f} s, wanted all {status}")
        time.sleep(0.1)


def kill_one_engine_replica() -> str:
    """Kill one Engine replica's actor (Serve starts a replacement); its replica id."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and "#Engine#" in a["name"]]
    victim = sorted(a["name"] for a in names)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    return victim.rsplit("#", 1)[-1]


def r9_scenario(url: str, keys: dict[str, str], fresh: Path, limit_s: float = 60.0) -> dict:
    """Load `fresh` (outside the artifacts dir), unload the directory adapter a1, restart one replica."""
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=120)
    wait_for("two Engine replicas in the fleet", lambda: len(fleet_view(admin)["replicas"]) == 2, 120)
    out: dict = {}
    started = time.monotonic()
    loaded = admin.post("/v1/admin/adapters", json={"name": "fresh", "path": str(fresh)})
    out["load_reply"] = {"status": loaded.status_code, "fleet": loaded.json().get("fleet")}
    out["load_s"] = until_every_probe(url, keys["infer"], "fresh", 200, started, limit_s)

    started = time.monotonic()
    unloaded = admin.delete("/v1/admin/adapters/a1")
    out["unload_reply"] = {"status": unloaded.status_code, "fleet": unloaded.json().get("fleet")}
    out["unload_s"] = until_every_probe(url, keys["infer"], "a1", 404, started, limit_s)

    generation = fleet_view(admin)["generation"]
    before = {r["replica"] for r in fleet_view(admin)["replicas"]}
    started = time.monotonic()
    out["killed"] = kill_one_engine_replica()

    def replaced() -> bool:
        replicas = fleet_view(admin)["replicas"]
        return (len(replicas) == 2 and {r["replica"] for r in replicas} != before
                and all(r["applied"] == generation for r in replicas))

    wait_for("a replacement replica following the state", replaced, 240)
    out["restart_s"] = time.monotonic() - started
    out["after_restart"] = {"a1": sorted(set(probe(url, keys["infer"], "a1"))),
                            "fresh": sorted(set(probe(url, keys["infer"], "fresh")))}
    out["replicas"] = fleet_view(admin)["replicas"]
    admin.close()
    return out


def rollout_feedback_scenario(url: str, keys: dict[str, str], stable: str, candidate: str,
                              alias: str = "team-bot", rounds: int = 4) -> dict:
    """Through an alias with a 50/50 sticky canary on two replicas: each caller's version in every round (both
    replicas answer each round), feedback on every answer (about half reach the replica that did not serve it:
    rating 5 for the stable's answers, 1 for the candidate's), the fleet-wide request counts in the status, then
    an unforced promotion, refused on quality."""
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=120)
    out: dict = {}
    reply = admin.put(f"/v1/admin/rollouts/{alias}", json={"stable": stable, "candidate": candidate, "weight": 0.5,
                                                           "sticky": "user"})
    out["set"] = {"status": reply.status_code, "applied": len(reply.json().get("fleet", {}).get("applied", []))}

    def ask(i: int) -> tuple[int, str | None, str | None]:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['infer']}",
                                                 "X-Tuneserve-Sticky": f"user-{i % PROBES}"}, timeout=60) as http:
            r = http.post("/v1/completions", json={"model": alias, "prompt": f"order {i}", "max_tokens": 1})
            body = r.json() if r.status_code == 200 else {}
            return r.status_code, body.get("model"), body.get("id")

    def rate(answer: tuple[int, str | None, str | None]) -> int:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['infer']}"}, timeout=60) as http:
            return http.post("/v1/feedback", json={"id": answer[2], "rating": 5 if answer[1] == stable else 1}
                             ).status_code

    answers: list = []
    with ThreadPoolExecutor(PROBES) as pool:
        for _ in range(rounds):
            answers += list(pool.map(ask, range(PROBES)))
        out["feedback"] = sorted(set(pool.map(rate, answers)))
    out["answers"] = [a[:2] for a in answers]

    def counted() -> bool:  # whichever replica answers the status, it sums both replicas' requests
        versions = admin.get(f"/v1/admin/rollouts/{alias}").json()["aliases"][0]["versions"]
        return sum(v["requests"] for v in versions) == len(answers)

    out["counted_s"] = wait_for("both replicas' requests in the alias status", counted, 30)
    promoted = admin.post(f"/v1/admin/rollouts/{alias}/promote")
    out["promote"] = {"status": promoted.status_code, "message": promoted.json().get("error", {}).get("message", "")}
    out["after"] = admin.get(f"/v1/admin/rollouts/{alias}").json()["aliases"][0]["stable"]
    admin.close()
    return out
