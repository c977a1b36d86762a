"""Learning-curve report on disk: `learning_curve.json`, `learning_curve.md` and `learning_curve.png`.

    paths = write_curve_report(report, Path("artifacts/curve"))   # report from learning_curve.run_curve
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NAME = "learning_curve"
COLORS = {"plain": "#4c72b0", "augmented": "#dd8452"}


def plot_curve(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, points in report["curves"].items():
        if not points:
            continue
        x = [p["train_rows"] for p in points]
        ax.plot(x, [p["mean"] for p in points], marker="o", color=COLORS.get(arm), label=arm)
        ax.fill_between(x, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2, color=COLORS.get(arm))
        for p in points:
            ax.scatter([p["train_rows"]] * len(p["values"]), p["values"], s=8, color=COLORS.get(arm), alpha=0.5)
    hit = report.get("smallest_fraction_reaching_target")
    if hit:
        ax.axhline(hit["threshold"], ls="--", color="grey", lw=1,
                   label=f"{report['target']:.0%} of full data (reached at {hit['fraction']:.0%})")
    ax.set_xscale("log")
    ax.set_xlabel("training rows (log scale)")
    ax.set_ylabel(report["metric"] or "metric")
    ax.set_title(f"learning curve ({report['confidence']:.0%} t interval over seeds)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Learning curve", "", f"Metric: `{report['metric']}`; interval: {report['confidence']:.0%} Student-t over seeds.", "",
             "| arm | fraction | train rows | seeds | mean | CI low | CI high |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arm, points in report["curves"].items():
        lines += [f"| {arm} | {p['fraction']:g} | {p['train_rows']} | {p['n_seeds']} | {p['mean']:.4f} | "
                  f"{p['low']:.4f} | {p['high']:.4f} |" for p in points]
    hit = report.get("smallest_fraction_reaching_target")
    lines += ["", (f"Smallest fraction reaching {report['target']:.0%} of the full-data mean "
                   f"({hit['threshold']:.4f}): **{hit['fraction']:g}** (mean {hit['mean']:.4f})." if hit
                   else f"Not determined: no fraction reaches {report['target']:.0%} of the full-data mean, the metric is "
                   "a loss, or the largest fraction was not measured.")]
    if report.get("missing_fractions"):
        lines += ["", f"Not measured (run interrupted): fractions {report['missing_fractions']}."]
    if report.get("augmentation"):
        lines += ["", "## Augmentation (augmented minus plain, paired by seed)", "",
                  "| fraction | seeds | mean diff | CI low | CI high | relative |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for e in report["augmentation"]:
            rel = f"{e['relative_mean']:+.1%}" if e["relative_mean"] is not None else "n/a"
            lines.append(f"| {e['fraction']:g} | {e['n_seeds']} | {e['mean']:+.4f} | {e['low']:+.4f} | "
                         f"{e['high']:+.4f} | {rel} |")
    lines += ["", f"![learning curve]({NAME}.png)"]
    return "\n".join(lines) + "\n"


def write_curve_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{NAME}.json", "md": out / f"{NAME}.md", "png": out / f"{NAME}.png"}
    plot_curve(report, paths["png"])
    paths["json"].write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    return paths
