"""Helpers shared by the deploy asset generators (`deploy/prometheus/generate_slo.py`,
`deploy/grafana/generate.py`, `k8s/generate.py`): repository paths, YAML rendering with
readable block strings, and "write, or with --check compare" for generated files.

Not a package module: each generator puts `deploy/` on `sys.path` and imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
RULES_DIR = DEPLOY_DIR / "prometheus" / "rules"
DASHBOARDS_DIR = DEPLOY_DIR / "grafana" / "dashboards"
K8S_DIR = REPO_ROOT / "k8s"

# Shared by the SLO rules and the dashboards: which requests count, which codes are server errors.
SLI_FILTER = 'route!~".*(health|ready|live|metrics).*"'
SERVER_ERROR_CODES = "(?i)5..|internal|unavailable|unknown|data_loss|deadline_exceeded"


class _BlockDumper(yaml.SafeDumper):
    """Safe dumper that writes multi-line strings (PromQL, embedded YAML) as `|` blocks and
    repeats shared objects instead of writing YAML anchors."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_representer)


def dump_yaml(data: object, header: str = "") -> str:
    """YAML text of `data` (keys in insertion order), after `header` comment lines."""
    body = yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, width=120, allow_unicode=True)
    lines = "".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines()) if header else ""
    return lines + body


def stale_files(outputs: dict[Path, str]) -> list[Path]:
    """The paths whose committed content differs from the generated text."""
    return [path for path, text in outputs.items() if not path.is_file() or path.read_text() != text]


def write_outputs(outputs: dict[Path, str]) -> None:
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def generator_main(description: str, render: Callable[[], dict[Path, str]]) -> int:
    """CLI of a generator: write the files, or with --check exit 1 when any is stale."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="do not write; fail if the committed files are stale")
    args = parser.parse_args()
    outputs = render()
    if args.check:
        stale = stale_files(outputs)
        for path in stale:
            print(f"stale: {path.relative_to(REPO_ROOT)} (run {Path(sys.argv[0]).name} to regenerate)", file=sys.stderr)
        return 1 if stale else 0
    write_outputs(outputs)
    for path in outputs:
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0
