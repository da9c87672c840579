#!/usr/bin/env bash
# Start the services the tests need on 127.0.0.1 (a Prefect server, a moto S3 server), run pytest, stop them.
#   bash .ci/test.sh [pytest args...]      (make test; .ci/run adds CI_STRICT=1)
# FLOR_TEST_SERVICES=0 runs pytest without starting services (tests needing one then skip).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || { echo "test.sh: $PY missing: run make install first" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flor-ci-XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do      # each service runs in its own process group (setsid)
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_http() {  # url seconds log name
  local url=$1 secs=$2 log=$3 name=$4 pid=$5 i
  for i in $(seq 1 $((secs * 5))); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "test.sh: $name did not answer $url; its log:" >&2
  tail -n 40 "$log" >&2
  exit 1
}

if [ "${FLOR_TEST_SERVICES:-1}" != "0" ]; then
  t0=$(date +%s)
  # --- Prefect server, its own PREFECT_HOME, no analytics ---------------------------------------
  PREFECT_PORT=$(free_port)
  mkdir -p "$WORK/prefect-home"
  env -u PREFECT_API_URL PREFECT_HOME="$WORK/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
    setsid "$ROOT/.venv/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" \
    --no-ui >"$WORK/prefect.log" 2>&1 </dev/null &
  PIDS+=($!)
  PREFECT_PID=$!

  # --- moto S3 server, in its own venv (not the project's) -----------------------------------------
  S3VENV=$ROOT/.ci/s3venv
  if [ ! -f "$S3VENV/.installed-5.2.5" ]; then
    rm -rf "$S3VENV"
    python3 -m venv "$S3VENV"
    "$S3VENV/bin/pip" install -q "moto[s3]==5.2.5" flask flask-cors >"$WORK/s3venv.log" 2>&1 ||
      { tail -n 30 "$WORK/s3venv.log" >&2; echo "test.sh: installing moto failed" >&2; exit 1; }
    touch "$S3VENV/.installed-5.2.5"
  fi
  S3_PORT=$(free_port)
  setsid "$S3VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 </dev/null &
  PIDS+=($!)
  S3_PID=$!

  wait_http "http://127.0.0.1:$S3_PORT/moto-api/" 60 "$WORK/moto.log" "moto" "$S3_PID"
  wait_http "http://127.0.0.1:$PREFECT_PORT/api/health" 180 "$WORK/prefect.log" "prefect server" "$PREFECT_PID"
  export FLOR_TEST_PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
  export FLOR_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
  echo "test.sh: prefect server $FLOR_TEST_PREFECT_API_URL, moto $FLOR_TEST_S3_ENDPOINT (up in $(( $(date +%s) - t0 )) s)"
fi

export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
set +e
# two workers, whole files each (module fixtures run once; the tests are subprocess-bound)
"$PY" -m pytest -p no:cacheprovider -q -ra --durations=15 -n "${FLOR_TEST_WORKERS:-2}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  rc=1
fi
exit "$rc"
