# syntax=docker/dockerfile:1
# One multi-stage build, two images, the same dependencies and code in both (and in `make venv`):
#   docker build --target torchserve -t bert-serving/torchserve .   # TorchServe + Java 17: `python -m stack torchserve`
#   docker build --target gateway    -t bert-serving/gateway .      # the FastAPI gateway: `python -m gateway`
# docker compose builds both (docker-compose.yml). Python is 3.11 (pyproject.toml: requires-python >=3.11,<3.12).
# Pin the base image by digest as well once resolved on a machine with a registry:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm   ->   FROM python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MODEL_STORE=/app/model_store \
    RUN_DIR=/run/ts/{ip}
WORKDIR /app
# The same requirement files, in the same order, as `make venv`: torch alone first (the CPU wheel: from PyPI an
# unpinned resolution pulls a multi-GB CUDA build), then the pinned runtime lock.
COPY requirements/torch.txt requirements/runtime.txt requirements/
RUN pip install -r requirements/torch.txt --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements/runtime.txt \
 && pip check
# RUN_DIR: {ip} is replaced by the container's address (stack/__main__.py), so the replicas of a scaled torchserve
# service keep their pid files, key files and logs apart on the one shared volume.
# One unprivileged user (same uid in both images: the gateway reads TorchServe's mode-600 key file).
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /app/model_store /app/artifacts /run/ts \
 && chown app:app /app/model_store /app/artifacts /run/ts
COPY --chown=root:root pyproject.toml config.properties ./
COPY --chown=root:root stack/ stack/
COPY --chown=root:root handlers/ handlers/
COPY --chown=root:root training/ training/
COPY --chown=root:root gateway/ gateway/
COPY --chown=root:root docker/ready.py docker/ready.py

FROM base AS torchserve
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
# Inside the compose network TorchServe listens on every interface of its container; no port is published.
ENV TS_HOST=0.0.0.0
USER app
EXPOSE 8080 8081 8082
# Readiness, not liveness: every model in the store has a READY worker (GET /models/<name>/all with the
# management key). /ping answers "Healthy" seconds before any worker can serve.
HEALTHCHECK --interval=10s --timeout=8s --start-period=180s --retries=3 CMD ["python", "docker/ready.py"]
CMD ["python", "-m", "stack", "torchserve"]

FROM base AS gateway
ENV GATEWAY_INFERENCE_URL=http://torchserve:8080 \
    GATEWAY_MANAGEMENT_URL=http://torchserve:8081 \
    GATEWAY_DISCOVER_REPLICAS=true \
    GATEWAY_KEY_FILE=/run/ts/{host}/torchserve/key_file.json
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status != 200)"]
CMD ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8000"]
