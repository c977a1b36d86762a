#!/bin/sh
# Container entrypoint of the tuneserve image (deploy/Dockerfile): start a single-node Ray
# head with token authentication, its dashboard on 127.0.0.1 only and its metrics export port
# fixed (Prometheus scrapes it), then run the Serve config in the foreground. Extra arguments
# are passed to `serve run` (e.g. a different config path).
#   env: SERVE_CONFIG (default /etc/tuneserve/serve_config.yaml), RAY_METRICS_PORT (8080),
#        RAY_NUM_CPUS (default: all of the container's CPUs),
#        RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (default: a token generated once into
#        $TUNESERVE_CACHE/ray/auth_token, mode 0600, as `tuneserve serve` does)
set -eu
SERVE_CONFIG="${SERVE_CONFIG:-/etc/tuneserve/serve_config.yaml}"
if [ "${RAY_AUTH_MODE:-}" != "token" ]; then
    echo "tuneserve-entrypoint: RAY_AUTH_MODE must be 'token' (got '${RAY_AUTH_MODE:-}'): without it anyone" \
         "who reaches Ray's ports can run jobs in this container" >&2
    exit 2
fi
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    RAY_AUTH_TOKEN_PATH="$(python -c 'from training.artifact.local_ray import ray_auth_token_path; print(ray_auth_token_path())')"
    export RAY_AUTH_TOKEN_PATH
fi
NUM_CPUS_FLAG=""
if [ -n "${RAY_NUM_CPUS:-}" ]; then
    NUM_CPUS_FLAG="--num-cpus=${RAY_NUM_CPUS}"
fi
# shellcheck disable=SC2086
ray start --head --disable-usage-stats --dashboard-host=127.0.0.1 \
    --metrics-export-port="${RAY_METRICS_PORT:-8080}" ${NUM_CPUS_FLAG}
trap 'ray stop --force' INT TERM
serve run --address=auto "$@" "${SERVE_CONFIG}" &
wait $!
