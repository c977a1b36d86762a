"""Read what `loadtests/run.sh` wrote (locust's `<prefix>_stats.csv`): requests, failures and the
designed refusals (429, counted as successes under a name ending in " [429]").

    python -m loadtests.summary results/load/load     # prints the summary as JSON
    summarize(Path("results/load/load"))              # {"requests": ..., "failures": ..., "rate_limited": ..., ...}
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

RATE_LIMITED_SUFFIX = " [429]"


def summarize(prefix: Path) -> dict:
    """Totals over every entry but the "Aggregated" row; TTFT entries are timings, not requests."""
    rows = list(csv.DictReader(Path(f"{prefix}_stats.csv").open()))
    entries = [r for r in rows if r["Name"] != "Aggregated" and r["Type"] != "SSE"]
    requests = sum(int(r["Request Count"]) for r in entries)
    failures = sum(int(r["Failure Count"]) for r in entries)
    limited = sum(int(r["Request Count"]) for r in entries if r["Name"].endswith(RATE_LIMITED_SUFFIX))
    by_name = {f"{r['Type']} {r['Name']}": {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                                           "median_ms": float(r["Median Response Time"] or 0),
                                           "p95_ms": float(r["95%"] or 0) if r["95%"] != "N/A" else None,
                                           "rps": float(r["Requests/s"] or 0)}
               for r in rows if r["Name"] != "Aggregated"}
    failure_kinds = []
    failures_csv = Path(f"{prefix}_failures.csv")
    if failures_csv.is_file():
        failure_kinds = [{"name": f"{r['Method']} {r['Name']}", "error": r["Error"][:300], "count": int(r["Occurrences"])}
                         for r in csv.DictReader(failures_csv.open())]
    return {"requests": requests, "failures": failures, "rate_limited": limited,
            "failed_pct": round(100.0 * failures / requests, 3) if requests else None,
            "entries": by_name, "failure_kinds": failure_kinds}


if __name__ == "__main__":
    print(json.dumps(summarize(Path(sys.argv[1])), indent=2))
