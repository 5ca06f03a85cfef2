# Sourced by scripts/dashboard and scripts/test: a project-local virtual environment with requirements.txt and
# the project itself (core, ui) installed in editable mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Reinstall only when requirements.txt or pyproject.toml changed since the last successful install.
stamp=.venv/.requirements.sha
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps --editable .
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
