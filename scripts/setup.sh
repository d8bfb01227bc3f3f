#!/usr/bin/env bash
# Create .venv and install requirements.txt. Needs only Python 3 (3.10+) and access to PyPI.
# Sourced by demo.sh and test.sh; safe to run again (re-installs only when requirements change).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> Creating $VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian/Ubuntu without python3-venv: no ensurepip. Make a venv without pip and
    # bootstrap pip from its wheel on PyPI (pip can run from its own wheel).
    rm -rf "$VENV"
    "$PY" -m venv --without-pip "$VENV"
    "$VENV/bin/python" - <<'PYEOF'
import json, os, subprocess, sys, tempfile, urllib.parse, urllib.request
index = "https://pypi.org/pypi/pip/json"
meta = json.load(urllib.request.urlopen(index, timeout=60))
wheel = next(u for u in meta["urls"] if u["filename"].endswith(".whl"))
path = os.path.join(tempfile.mkdtemp(), wheel["filename"])
urllib.request.urlretrieve(urllib.parse.urljoin(index, wheel["url"]), path)
subprocess.check_call([sys.executable, os.path.join(path, "pip"), "install", "--quiet", path])
PYEOF
  fi
fi

STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "==> Installing requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
  echo "$WANT" > "$STAMP"
fi
