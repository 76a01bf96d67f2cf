# Shared helpers for the project's scripts (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FRAUDMODEL_VENV:-$ROOT/.venv}"
export FRAUDMODEL_CACHE="${FRAUDMODEL_CACHE:-$HOME/.cache/fraudmodel-operator}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_uv() {
  if ! command -v uv >/dev/null 2>&1; then
    log "installing uv (Python package manager)"
    python3 -m pip install --quiet --disable-pip-version-check uv >&2
  fi
}

# The operator's virtualenv: the package in editable mode plus its dev tools (no torch).
ensure_venv() {
  ensure_uv
  local stamp="$VENV/.installed"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    uv venv --quiet --python python3.11 "$VENV" >&2
  fi
  if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
    log "installing fraudmodel-operator and its dev tools into $VENV"
    VIRTUAL_ENV="$VENV" uv pip install --quiet -e "$ROOT[dev]" >&2
    touch "$stamp"
  fi
}

ensure_prometheus() {
  if ! command -v prometheus >/dev/null 2>&1; then
    log "installing Prometheus (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
  fi
}
