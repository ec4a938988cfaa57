#!/usr/bin/env bash
# The lab image's install recipe, used by the Dockerfile and exercised by CI outside Docker.
#   bash scripts/install.sh VENV_DIR
# TORCH_INDEX: the package index torch comes from (the Dockerfile passes PyTorch's CPU index,
# or a CUDA one for a GPU image); empty means the default index.
# EXTRA_PACKAGES: more pip requirements, space-separated, e.g. "Authlib>=1.3.2" for st.login (OIDC).
set -euo pipefail
venv=${1:?usage: install.sh VENV_DIR}
here="$(cd "$(dirname "$0")/.." && pwd)"
python=${PYTHON:-python3}
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir)
torch_pin=$(grep -E '^torch==' "$here/requirements.txt")
if [ -n "${TORCH_INDEX:-}" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX" "$torch_pin"
fi
"${pip[@]}" -r "$here/requirements.txt"
if [ -n "${EXTRA_PACKAGES:-}" ]; then
    read -r -a extra <<< "$EXTRA_PACKAGES"
    "${pip[@]}" "${extra[@]}"
fi
"$venv/bin/python" -c "import torch, streamlit, sklearn, mnist1d; print('installed torch', torch.__version__)"
