#!/usr/bin/env bash
# The lab image's entry point: the dashboard and its worker pool as one process tree
# (`python -m asymviz serve`), listening on every interface. CI runs it outside Docker too.
#   PORT=8501 ASYMVIZ_HOME=/data bash scripts/entrypoint.sh [more `serve` flags]
# `python` is the lab's virtual environment's (the image puts /opt/venv/bin first on PATH).
# exec: the server is this process, so `docker stop`'s SIGTERM reaches it; it stops the
# dashboard, then the workers, and running runs end `interrupted`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ASYMVIZ_HOME:-}" ]; then
    mkdir -p "$ASYMVIZ_HOME"
fi
exec python -m asymviz serve --address 0.0.0.0 --port "${PORT:-8501}" "$@"
