#!/usr/bin/env bash
# Second leg of the CI matrix: run the test suite on the OLDEST versions we support.
#
# .ci/run tests the newest versions pip resolves in .venv; this script builds .venv-oldest from
# .ci/constraints-oldest.txt (the oldest Airflow and providers that pyproject.toml allows, with the
# rest of the environment frozen so that later releases of Airflow's dependencies cannot break the
# old Airflow under us) and runs the same test command as the README: `python -m pytest`, with the
# repo's pytest configuration. Extra arguments go to pytest.
#
# Idempotent: the venv is reinstalled only when the constraints or pyproject.toml change, so a
# re-run goes straight to the tests. See docs/versions.md for the matrix.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-oldest
CONSTRAINTS=.ci/constraints-oldest.txt
PYTHON="${PYTHON:-python3}"

log() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
  # Keep the venv out of git and out of linters, whatever the repo's .gitignore says.
  printf '*\n' >"$VENV/.gitignore"
fi

stamp="$VENV/.installed-from"
want="$(cat "$CONSTRAINTS" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  log "installing airflow-s3sftp[test] under $CONSTRAINTS (oldest supported versions)"
  start=$SECONDS
  rm -f "$stamp"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e '.[test]'
  "$VENV/bin/python" -m pip check
  echo "$want" >"$stamp"
  log "installed in $((SECONDS - start)) s"
else
  log "$VENV is up to date with $CONSTRAINTS"
fi

"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version

names = ["apache-airflow", "apache-airflow-providers-amazon", "apache-airflow-providers-sftp",
         "apache-airflow-providers-ssh", "paramiko", "asyncssh", "boto3"]
print("oldest matrix leg:", ", ".join(f"{n.removeprefix('apache-airflow-providers-')} {version(n)}" for n in names))
EOF

log "pytest on the oldest supported versions"
"$VENV/bin/python" -m pytest "$@"
