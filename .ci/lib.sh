# Shared by .ci/run and .ci/lock.sh: the pinned uv, the cache root, and the legs table.
# shellcheck shell=bash

CACHE_ROOT="${S3SFTP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-s3sftp-ci}"
UV_VERSION="0.13.9"
export UV_PYTHON_DOWNLOADS=never  # use the machine's interpreters, never fetch one
export UV_NO_PROGRESS=1

log() { printf '\n==> %s\n' "$*"; }

# ensure_uv: install the pinned uv into its own venv under the cache (once), set $UV.
ensure_uv() {
  local venv="$CACHE_ROOT/uv-$UV_VERSION"
  if [ ! -x "$venv/bin/uv" ]; then
    log "installing uv $UV_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q "uv==$UV_VERSION"
  fi
  UV="$venv/bin/uv"
}

# python_for VERSION: the path of a working Python VERSION interpreter on this machine (PATH, then pyenv).
python_for() {
  local exe
  for exe in "$(command -v "python$1" || true)" /usr/bin/python"$1" /usr/local/bin/python"$1" \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python"$1"; do
    if [ -n "$exe" ] && [ -x "$exe" ] && "$exe" -c 'import sys' >/dev/null 2>&1; then
      "$exe" -c 'import sys; print(sys.executable)'
      return 0
    fi
  done
  echo "no working python$1 on this machine: CI needs Pythons 3.11, 3.12 and 3.13 (see .ci/legs.txt)" >&2
  return 1
}

# legs: print the legs table without comments.
legs() { grep -v '^\s*#' "$(dirname "${BASH_SOURCE[0]}")/legs.txt" | grep -v '^\s*$'; }
