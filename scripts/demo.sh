#!/usr/bin/env bash
# One-command demo (`make demo`): stream an S3 object to SFTP through the example delivery DAG, on an
# embedded S3 endpoint (moto) and an embedded SFTP server (asyncssh), both on 127.0.0.1.
# Needs only Python 3.11+: creates .venv when missing and installs the package with its test extras.
# Arguments go to `python -m demo`, e.g. `bash scripts/demo.sh --size-mib 256` or `--help`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! command -v "$PYTHON" >/dev/null; then
    echo "error: $PYTHON not found; install Python 3.11 or newer (or set PYTHON=/path/to/python3)" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: airflow-s3sftp needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)" >&2
    exit 1
  fi
  log "creating .venv with $("$PYTHON" -V 2>&1)"
  if ! "$PYTHON" -m venv .venv; then
    rm -rf .venv
    echo "error: could not create a virtualenv; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi

# Reinstall only when pyproject.toml changed since the last install (a rerun starts in seconds).
stamp=.venv/.s3sftp-installed
want="$(cksum pyproject.toml)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
  || ! .venv/bin/python -c 'import airflow_s3sftp, asyncssh, moto.server' 2>/dev/null; then
  log "installing airflow-s3sftp and its test extras into .venv (the first time takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  printf '%s' "$want" > "$stamp"
fi

exec .venv/bin/python -m demo "$@"
