# asymviz lab image: the dashboard and its worker pool in one container, for a classroom.
#   docker build -t asymviz .
#   docker run --init -p 8501:8501 -v asymviz-data:/data -e ASYMVIZ_PASSWORD=letmein asymviz
#   (or: docker compose up -d, with compose.yaml; the README's "Host it for a class" has the variables)
# GPU variant: torch from a CUDA index instead of the CPU one (pick the CUDA version your driver runs):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t asymviz:gpu .
#   docker run --init --gpus all -p 8501:8501 -v asymviz-data:/data asymviz:gpu
# The install steps and the entry point live in scripts/ so CI runs the same recipe outside Docker
# (tests/test_lab.py: scripts/install.sh into a fresh venv, then scripts/entrypoint.sh).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# More pip requirements, e.g. --build-arg EXTRA_PACKAGES="Authlib>=1.3.2" for ASYMVIZ_AUTH=oidc (st.login).
ARG EXTRA_PACKAGES=""
ENV PYTHONUNBUFFERED=1 \
    ASYMVIZ_HOME=/data \
    ASYMVIZ_KERNEL_DIR=/opt/asymviz-kernels \
    PORT=8501 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements.txt /app/requirements.txt
COPY scripts/install.sh /app/scripts/install.sh
RUN TORCH_INDEX="$TORCH_INDEX" EXTRA_PACKAGES="$EXTRA_PACKAGES" bash scripts/install.sh /opt/venv

# The code stays root-owned and read-only; the lab runs as an unprivileged user who owns /data.
COPY . /app
# The compiled CPU kernels (asymviz/fast/kernels.py), built with a compiler that leaves the image again.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m asymviz kernels \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN python -m compileall -q /app/asymviz /app/app.py /app/ui_common.py /app/pages \
    && useradd --create-home --uid 10001 asymviz \
    && mkdir -p /data && chown asymviz:asymviz /data
USER asymviz
VOLUME /data
EXPOSE 8501
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ.get('PORT', '8501'), timeout=4)" || exit 1
ENTRYPOINT ["bash", "scripts/entrypoint.sh"]
