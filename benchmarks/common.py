"""What every benchmark script shares: paths, environment, provenance (machine, versions, command), results.

Not a benchmark itself (`make bench` skips it). A script `benchmarks/NAME.py` starts with

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
    from benchmarks.common import arguments, command, machine, versions, write_results  # noqa: E402

which works both when run as a script and when imported as `benchmarks.NAME` (tests, subprocesses).
Importing this module sets the offline/quiet environment (`prepare_env`), puts the repo root on
`sys.path` and records the load average at start. Then:

    args = arguments(__doc__, threads=True, note="2-core box shared with other jobs").parse_args()
    ...  # measure
    report = {"benchmark": "NAME", "goals": [...], ..., "machine": machine(torch_threads=args.threads, note=args.note),
              "versions": versions("torch", "transformers"), "command": command()}
    lines = ["# Title", "", *provenance(report), "", *goals_table(report["goals"])]
    write_results("NAME", report, "\n".join(lines))  # benchmarks/results/NAME.json + NAME.md

Only the standard library is imported here (a benchmark that must not import Ray or locust early,
like load_faults.py, can use it), so reading versions never imports the packages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"  # the real data sets (../shared/data), never copied into the repo
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
RAY_TMPDIR = "/tmp/ts-ray-bench"  # for benchmarks that start Ray: short, Ray's socket paths must stay under 107 bytes


def prepare_env() -> None:
    """Offline Hugging Face hub, quiet tokenizers, no Ray usage stats (unless set already); the repo root on sys.path"""
    for name, value in ENV.items():
        os.environ.setdefault(name, value)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): the host is shared, so results record it."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


prepare_env()
LOAD_AT_START = load_average()  # when the benchmark's process imported this module


def arguments(doc: str, *, base: bool = True, threads: bool = False, note: str | None = None
              ) -> argparse.ArgumentParser:
    """A benchmark's argument parser, described by the first line of its docstring `doc`, with the options several
    share: --base (the base model, default tiny-llama), --threads (torch threads, default 2) and --note (a word on
    the host, recorded with the machine), each where asked for."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if base:
        parser.add_argument("--base", default="tiny-llama", help="base model id or directory")
    if threads:
        parser.add_argument("--threads", type=int, default=2, help="torch threads")
    if note is not None:
        parser.add_argument("--note", default=note, help="a word on the host, recorded with the results")
    return parser


def versions(*packages: str) -> dict[str, str]:
    """Python's version and each installed distribution's, read from package metadata (imports nothing)."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine(**extra: object) -> dict[str, object]:
    """The host: platform, processor, CPU count, Python, the load average at start, plus `extra`
    (e.g. torch_threads=2, note="2-core box shared with other jobs", load_average_at_end=load_average())."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": LOAD_AT_START,
            **extra}


def command() -> str:
    """The command line as run, the script named relative to the repo root: `python benchmarks/NAME.py --x 1`."""
    script = Path(sys.argv[0]).resolve()
    name = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join(["python", name, *sys.argv[1:]])


def provenance(report: dict) -> list[str]:
    """Markdown lines naming the command, machine and versions of a report (those it has)."""
    labels = {"command": "Command: `{}`  ", "machine": "Machine: {}  ", "versions": "Versions: {}  "}
    return [label.format(report[key]) for key, label in labels.items() if key in report]


def goals_table(goals: list[dict], value=str) -> list[str]:
    """A markdown table of a report's goals ({"id", "measure", "value", "goal", "met"}); `value` formats the values."""
    def met(goal: dict) -> str:
        return "unknown" if goal["met"] is None else "yes" if goal["met"] else "no"

    return ["| id | measure | value | goal | met |", "| --- | --- | --- | --- | --- |",
            *[f"| {g['id']} | {g['measure']} | {value(g['value'])} | {g['goal']} | {met(g)} |" for g in goals]]


def write_results(name: str, report: dict, markdown: str, directory: Path | None = None) -> Path:
    """Write benchmarks/results/NAME.json (the report) and NAME.md (the markdown), or into `directory` (a smoke
    run's scratch place, so committed results stay); returns the JSON's path."""
    directory = Path(directory) if directory is not None else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (directory / f"{name}.md").write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    return path
