# GPU worker: CUDA torch, the training stack and the Unsloth backend in /opt/venv; Axolotl in its
# own environment (/opt/axolotl, run as a subprocess through PYTHON_PATH) because its pins
# differ (Axolotl's pinned set first, then this project without dependencies: resolving both
# at once makes pip backtrack for many minutes). Runs the `train` queue: one service per GPU in compose.yaml.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG WITH_AXOLOTL=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev git build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY shared ./shared
COPY worker ./worker
COPY migrations ./migrations
COPY deploy ./deploy
# The default Linux x86_64 torch wheel is a CUDA build; the constraint keeps it. Unsloth pins its
# own transformers/TRL/datasets (datasets<5), so this environment takes `.[unsloth]` instead of
# `.[train]`: both the unsloth and the trl backends run from it on a GPU. gguf: Ollama export.
RUN python3.11 -m venv /opt/venv \
    && pip install --no-cache-dir "torch>=2.4,<3" \
    && pip freeze | grep -i '^torch==' > /tmp/torch.txt \
    && pip install --no-cache-dir -c /tmp/torch.txt -e ".[unsloth]" "gguf>=0.17" "sentencepiece>=0.2"
RUN if [ "$WITH_AXOLOTL" = "1" ]; then \
        python3.11 -m venv /opt/axolotl \
        && /opt/axolotl/bin/pip install --no-cache-dir -c /tmp/torch.txt "axolotl==0.19.0" \
        && /opt/axolotl/bin/pip install --no-cache-dir --no-deps -e .; \
    fi
ENV PYTHON_PATH=/opt/axolotl/bin/python
RUN useradd --create-home --uid 10001 tmde && mkdir -p /srv/data && chown tmde /srv/data
USER 10001
CMD ["tmde-finetune", "worker", "--queues", "train", "--concurrency", "1"]
