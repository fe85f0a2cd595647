# syntax=docker/dockerfile:1
# loradock images. Default target: GPU (official vLLM build). CPU: `docker build --target cpu -t loradock:cpu .`
#   docker build -t loradock:gpu .
#   docker run --gpus all -p 8000:8000 -p 7860:7860 -e LORADOCK_API_KEY=... -e LORADOCK_ADMIN_KEY=... \
#     -e LORADOCK_UI_AUTH=user:password -v loradock-adapters:/app/adapters -v loradock-var:/app/var loradock:gpu
# No open-to-the-world defaults: on 0.0.0.0 the server refuses to start without both keys and the UI without a
# login (LORADOCK_INSECURE=1 overrides, on purpose only); /metrics, /docs and /openapi.json need the admin key
# (or LORADOCK_METRICS_KEY).
# Dependencies are installed by scripts/install_deps.sh, the same script `make setup` runs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv \
    && python -m pip install pip==26.3 setuptools==84.2.1 wheel==0.48.0 \
    && useradd --create-home --uid 10001 loradock
WORKDIR /app
COPY requirements/ requirements/
COPY scripts/install_deps.sh scripts/install_deps.sh

# ---- dependencies -------------------------------------------------------------------------------------
FROM base AS deps-cpu
# The lock pins torch==2.13.0+cpu, served by PyTorch's CPU index.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN scripts/install_deps.sh cpu python

FROM base AS deps-gpu
RUN scripts/install_deps.sh gpu python

# ---- application source (copied once, installed on top of each dependency stage) ----------------------
FROM base AS src
# Every room (core/, serve/, rag/, ...), adapters/ and data/; .dockerignore leaves out tests, docs and build output.
COPY . .

FROM deps-cpu AS app-cpu
COPY --from=src /app /app
RUN python -m pip install --no-deps --no-build-isolation -e . \
    && loradock model materialize --out models/SmolLM2-135M-Instruct \
    && mkdir -p var && chown -R loradock:loradock /app/adapters /app/var /app/models

FROM deps-gpu AS app-gpu
COPY --from=src /app /app
RUN python -m pip install --no-deps --no-build-isolation -e . \
    && loradock model materialize --out models/SmolLM2-135M-Instruct \
    && mkdir -p var && chown -R loradock:loradock /app/adapters /app/var /app/models

# ---- runtime targets -----------------------------------------------------------------------------------
FROM app-cpu AS cpu
# vLLM's CPU compilation (on by default, LORADOCK_COMPILE) builds the model's kernels with a C++ compiler
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
ENV LORADOCK_HOST=0.0.0.0 \
    LORADOCK_METRICS_OPEN=false \
    LORADOCK_DTYPE=float32 \
    VLLM_CPU_KVCACHE_SPACE=1
USER 10001
EXPOSE 8000 7860
VOLUME ["/app/adapters", "/app/var"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
CMD ["loradock", "demo", "--host", "0.0.0.0"]

FROM app-gpu AS gpu
ENV LORADOCK_HOST=0.0.0.0 \
    LORADOCK_METRICS_OPEN=false \
    LORADOCK_DTYPE=bfloat16 \
    LORADOCK_GPU_MEMORY_UTILIZATION=0.9
USER 10001
EXPOSE 8000 7860
VOLUME ["/app/adapters", "/app/var"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
CMD ["loradock", "demo", "--host", "0.0.0.0"]
