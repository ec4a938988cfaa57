#!/usr/bin/env bash
# Set up asymviz in ./.venv from nothing (Python 3.11 with pip is all it needs).
#   bash scripts/setup.sh          runtime: the dashboard, the library, the CLI
#   bash scripts/setup.sh --dev    also the test tools and Debian's Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
requirements=requirements.txt
if [ "${1:-}" = "--dev" ]; then
    requirements=requirements-dev.txt
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
# The compiled CPU kernels (asymviz/kernels.py): built now if a C compiler is there; without one
# asymviz says so and uses PyTorch ops instead.
.venv/bin/python -m asymviz kernels || true
if [ "${1:-}" = "--dev" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: the browser tests need Debian's Chromium: sudo apt-get install -y chromium" >&2
    fi
fi
