#!/bin/sh
# Container entrypoint of the tuneserve image (deploy/Dockerfile): start a single-node Ray
# head with its metrics export port fixed (Prometheus scrapes it), then run the Serve config
# in the foreground. Extra arguments are passed to `serve run` (e.g. a different config path).
#   env: SERVE_CONFIG (default /etc/tuneserve/serve_config.yaml), RAY_METRICS_PORT (8080),
#        RAY_NUM_CPUS (default: all of the container's CPUs)
set -eu
SERVE_CONFIG="${SERVE_CONFIG:-/etc/tuneserve/serve_config.yaml}"
NUM_CPUS_FLAG=""
if [ -n "${RAY_NUM_CPUS:-}" ]; then
    NUM_CPUS_FLAG="--num-cpus=${RAY_NUM_CPUS}"
fi
# shellcheck disable=SC2086
ray start --head --disable-usage-stats --dashboard-host=0.0.0.0 \
    --metrics-export-port="${RAY_METRICS_PORT:-8080}" ${NUM_CPUS_FLAG}
trap 'ray stop --force' INT TERM
serve run --address=auto "$@" "${SERVE_CONFIG}" &
wait $!
