"""Benchmark R9: adapters stay consistent across Engine replicas (real Ray Serve app, two replicas).

One run starts the app with two Engine replicas (0.5 CPU each), an artifacts dir holding adapter
a1 and an adapter `fresh` outside it, then (tests/fleet_support.py): loads `fresh` through the
admin API and times until a round of 16 concurrent completions all answer 200; unloads a1 and
times until a round all answer 404; kills one Engine replica and times until its replacement
follows the admin-set state, then checks that a1 stays unloaded (the directory still holds it)
and `fresh` still serves. Goal R9: load and unload reach every replica within 5 s.

    python benchmarks/fleet.py
Writes benchmarks/results/fleet.{json,md}.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import (  # noqa: E402
    RAY_TMPDIR, command, goals_table, load_average, machine, provenance, versions, write_results)

os.environ.setdefault("RAY_TMPDIR", RAY_TMPDIR)
GOAL_S = 5.0


def main() -> None:
    from service import launcher
    from service.keys import add_key, create_key
    from service.ports import free_port
    from tests.fleet_support import r9_scenario, start_two_replicas
    from tests.service_fixtures import make_adapter, service_args
    from training.base.build import BaseBuildConfig, build_base

    base = build_base(BaseBuildConfig(steps=60), force=False, progress=False)
    with tempfile.TemporaryDirectory(prefix="ts-fleet-bench-") as tmp:
        work = Path(tmp)
        make_adapter(base, work / "artifacts" / "a1", "a1", seed=1)
        fresh = make_adapter(base, work / "outside" / "fresh", "fresh", seed=11)
        keys = {}
        for label, scopes in (("infer", ["infer"]), ("admin", ["infer", "admin"])):
            keys[label], record = create_key(label, scopes, ["*"])
            add_key(work / "keys.json", record)
        args = service_args(base, work / "artifacts", work / "keys.json", port=free_port(), grpc_port=None)
        server = start_two_replicas(work, args)
        try:
            out = r9_scenario(server.url, keys, fresh)
        finally:
            launcher.stop()
    write_report(out)


def write_report(out: dict) -> None:
    worst = round(max(out["load_s"], out["unload_s"]), 3)
    met = worst < GOAL_S and out["after_restart"] == {"a1": [404], "fresh": [200]}
    goals = [{"id": "R9", "measure": "seconds from an admin load / unload until every probe of two Engine replicas "
                                     "answers for it / refuses it (the worse of both); restart keeps the admin state",
              "value": worst, "goal": f"< {GOAL_S:g} s, and a restarted replica serves the admin-set state", "met": met}]
    report = {"benchmark": "fleet", "goals": goals,
              "results": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()},
              "setup": "real Ray Serve app, 2 Engine replicas (0.5 CPU each), cache off, auth on; probes: 16 concurrent "
                       "1-token completions per round",
              "command": command(), "machine": machine(load_average_at_end=load_average()),
              "versions": versions("ray", "torch", "fastapi", "httpx")}
    r = report["results"]
    lines = ["# Adapters across Engine replicas (R9)", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             *provenance(report), "", "| step | seconds | admin reply |", "| --- | ---: | --- |",
             f"| load `fresh` until every probe answers 200 | {r['load_s']} | {r['load_reply']['status']}, applied by "
             f"{len(r['load_reply']['fleet']['applied'])} replicas |",
             f"| unload `a1` until every probe answers 404 | {r['unload_s']} | {r['unload_reply']['status']}, applied by "
             f"{len(r['unload_reply']['fleet']['applied'])} replicas |",
             f"| kill one replica until its replacement follows the state | {r['restart_s']} | after: {r['after_restart']} |",
             "", *goals_table(goals)]
    path = write_results("fleet", report, "\n".join(lines))
    print(f"R9 = {worst} s (goal < {GOAL_S:g} s), met: {met} -> {path}")


if __name__ == "__main__":
    main()
