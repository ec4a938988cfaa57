#!/usr/bin/env bash
# Set up asymviz in ./.venv from nothing (Python 3.11 with pip is all it needs).
#   bash scripts/setup.sh          runtime: the dashboard, the library, the CLI
#   bash scripts/setup.sh --dev    also the test tools, Ray and Debian's Chromium for the browser tests
#   bash scripts/setup.sh --ray    runtime and Ray (requirements-ray.txt): a server or node of a Ray cluster
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
requirements=(-r requirements.txt)
case "${1:-}" in
    --dev) requirements=(-r requirements-dev.txt -r requirements-ray.txt) ;;
    --ray) requirements=(-r requirements.txt -r requirements-ray.txt) ;;
esac
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
# The compiled CPU kernels (asymviz/fast/kernels.py): built now if a C compiler is there; without one
# asymviz says so and uses PyTorch ops instead.
.venv/bin/python -m asymviz kernels || true
if [ "${1:-}" = "--dev" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: the browser tests need Debian's Chromium: sudo apt-get install -y chromium" >&2
    fi
fi
