#!/usr/bin/env bash
# Run the locust users (loadtests/locustfile.py) headless against a running tuneserve server.
#
#   loadtests/run.sh URL USERS DURATION [SHAPE]
#   TUNESERVE_GRPC=127.0.0.1:9000 TUNESERVE_MODELS=a1,a2 TUNESERVE_API_KEY=tsk_... \
#       loadtests/run.sh http://127.0.0.1:8000 16 5m soak
#
# DURATION is locust's run time (30s, 5m, 1h). SHAPE: none (default: all users at once for
# DURATION), soak or burst (loadtests/shapes.py). Without TUNESERVE_GRPC only REST users run.
# Writes <RESULTS>/load_stats.csv, load_stats_history.csv, load_failures.csv, load_exceptions.csv
# and load.html (RESULTS: env, default loadtests/results/<UTC time>), prints the summary
# (loadtests/summary.py) and exits non-zero when any request failed (designed 429s don't count).
# PYTHON: the interpreter with locust installed (default: python3).
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
  echo "usage: $0 URL USERS DURATION [soak|burst]" >&2
  exit 2
fi
url=$1 users=$2 duration=$3 shape=${4:-}
root=$(cd "$(dirname "$0")/.." && pwd)
results=${RESULTS:-$root/loadtests/results/$(date -u +%Y%m%dT%H%M%SZ)}
python=${PYTHON:-python3}
mkdir -p "$results"

seconds=$("$python" -c "import sys; from locust.util.timespan import parse_timespan; print(parse_timespan(sys.argv[1]))" "$duration")
classes=()
[[ -z "${TUNESERVE_GRPC:-}" ]] && classes=(RestUser)
if [[ -n "$shape" ]]; then
  export TUNESERVE_SHAPE=$shape TUNESERVE_USERS=$users TUNESERVE_DURATION_S=$seconds
fi

status=0
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m locust -f "$root/loadtests/locustfile.py" \
  --headless --host "$url" -u "$users" -r "$users" -t "$duration" --stop-timeout 30 \
  --csv "$results/load" --csv-full-history --html "$results/load.html" --only-summary --loglevel WARNING \
  "${classes[@]}" || status=$?
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m loadtests.summary "$results/load"
echo "results in $results" >&2
exit "$status"
