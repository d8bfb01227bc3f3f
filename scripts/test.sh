#!/usr/bin/env bash
# Set everything up and run the whole test suite (extra arguments go to pytest).
# Database: DATABASE_URL if set, else the embedded PostgreSQL (started on demand).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
echo "==> pytest against ${DATABASE_URL:-the embedded PostgreSQL}"
exec "$VENV/bin/python" -m pytest "$@"
