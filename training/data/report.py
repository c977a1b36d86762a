"""The data report: `data_report.json`, `data_report.md` and PNG histograms (matplotlib, Agg).

    write_report(out_dir, report, splits, spec, plots=True)
    print(summary_lines(json.load(open("data_report.json"))))   # used by `tuneserve data inspect`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.data.tasks import Row, TaskSpec


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    s = sorted(lengths)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {"min": s[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1],
            "mean": round(sum(s) / len(s), 2)}


def plot_histograms(out: Path, splits: dict[str, list[Row]], spec: TaskSpec, labels: dict[str, int]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in splits.items():
        if rows:
            ax.hist([len(spec.text(r.data)) for r in rows], bins=40, alpha=0.5, label=f"{name} ({len(rows)})")
    ax.set_xlabel("characters per row")
    ax.set_ylabel("rows")
    ax.set_title("Length histogram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "length_histogram.png", dpi=90)
    plt.close(fig)
    files.append("length_histogram.png")
    if labels:
        names = list(labels)
        fig, ax = plt.subplots(figsize=(7, max(3.0, 0.16 * len(names) + 1)))
        ax.barh(names[::-1], [labels[n] for n in names[::-1]])
        ax.tick_params(axis="y", labelsize=6 if len(names) > 30 else 9)
        ax.set_xlabel("rows")
        ax.set_title("Label distribution")
        fig.tight_layout()
        fig.savefig(out / "label_histogram.png", dpi=90)
        plt.close(fig)
        files.append("label_histogram.png")
    return files


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _rule_line(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if k not in ("rows_in", "changed", "dropped", "examples"))


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Data report: {report['name']} ({report['task']})", "",
             f"fingerprint `{report['fingerprint']}`, prepared in {report['seconds']} s", "", "## Steps", ""]
    lines += _table(["step", "rows in", "rows out"], [[s["step"], s["rows_in"], s["rows_out"]] for s in report["steps"]])
    lines += ["", "## Cleaning rules", ""]
    lines += _table(["rule", "rows in", "changed", "dropped", "details"],
                    [[n, r["rows_in"], r["changed"], r["dropped"], _rule_line(r)] for n, r in report["rules"].items()])
    bad = report["bad_rows"]
    lines += ["", f"## Bad rows: {bad['skipped']} skipped", ""]
    lines += [f"- {e}" for e in bad["examples"][:10]]
    lines += ["", "## Splits", ""]
    lines += _table(["split", "rows"], [[k, v] for k, v in report["rows"].items()])
    leak = report.get("leakage") or {}
    if leak:
        lines += ["", "## Leakage", "", f"before fix: {json.dumps(leak.get('before', {}).get('rows'))}",
                  f"after: {json.dumps((leak.get('after') or {}).get('rows'))}", f"fix: {json.dumps(leak.get('fix'))}"]
    bias = report.get("bias") or {}
    if bias.get("labels"):
        lines += ["", "## Labels", "", (f"{bias['num_labels']} labels, imbalance ratio {bias['imbalance_ratio']}, "
                  f"max label-share gap between a split and the whole {bias['max_label_share_gap_pts']} pts"), ""]
        lines += _table(["label", "rows"], [[k, v] for k, v in list(bias["labels"].items())[:100]])
    for name, per_split in (bias.get("slices") or {}).items():
        lines += ["", f"### Slice {name}", "", "```", json.dumps(per_split, indent=1)[:2000], "```"]
    for key in ("mitigation", "augmentation", "agreement"):
        if report.get(key):
            lines += ["", f"## {key.capitalize()}", "", "```", json.dumps(report[key], indent=1)[:3000], "```"]
    lines += ["", "## Lengths (characters)", ""]
    lines += _table(["split", "min", "p50", "p90", "p99", "max", "mean"],
                    [[k, *v.values()] for k, v in report["lengths"].items() if v])
    lines += ["", *[f"![{p}]({p})" for p in report.get("plots", [])], ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict[str, Any], splits: dict[str, list[Row]], spec: TaskSpec,
                 plots: bool) -> None:
    report["lengths"] = {k: length_stats([len(spec.text(r.data)) for r in v]) for k, v in splits.items()}
    report["plots"] = plot_histograms(out, splits, spec, (report.get("bias") or {}).get("labels") or {}) if plots else []
    (out / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "data_report.md").write_text(render_markdown(report), encoding="utf-8")


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"{report['name']} ({report['task']}) fingerprint {report['fingerprint'][:16]}… in {report['seconds']} s",
             "steps: " + " → ".join(f"{s['step']} {s['rows_out']}" for s in report["steps"]),
             "rows: " + ", ".join(f"{k}={v}" for k, v in report["rows"].items()),
             "rules: " + "; ".join(f"{n} changed {r['changed']} dropped {r['dropped']}" for n, r in report["rules"].items()),
             f"bad rows skipped: {report['bad_rows']['skipped']}"]
    leak = report.get("leakage") or {}
    if leak:
        lines.append(f"leakage before: {leak['before']['rows']} after: {(leak.get('after') or {}).get('rows')}")
    bias = report.get("bias") or {}
    if bias.get("labels"):
        lines.append(f"labels: {bias['num_labels']}, imbalance ratio {bias['imbalance_ratio']}, "
                     f"max share gap {bias['max_label_share_gap_pts']} pts")
    return lines
