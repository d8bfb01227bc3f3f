#!/usr/bin/env bash
# Set everything up, start the embedded PostgreSQL, apply migrations_sql/ and print the status.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
PY="$VENV/bin/python"
if [ -z "${DATABASE_URL:-}" ]; then
  echo "==> Starting the embedded PostgreSQL (data in .data/pg)"
  "$PY" -m project.embedded start
fi
echo "==> python manage.py sqlmigrate_up"
"$PY" manage.py sqlmigrate_up
echo "==> python manage.py sqlmigrate_status"
"$PY" manage.py sqlmigrate_status
