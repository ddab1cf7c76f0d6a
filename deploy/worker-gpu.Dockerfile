# GPU worker: CUDA torch plus the training stack; runs the `train` queue.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip git \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/app
# The default Linux x86_64 torch wheel is a CUDA build.
RUN pip install "torch>=2.4"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY shared ./shared
COPY worker ./worker
COPY migrations ./migrations
RUN pip install -e ".[train]"
RUN useradd --create-home tmde && mkdir -p /srv/data && chown tmde /srv/data
USER tmde
CMD ["tmde-finetune", "worker", "--queues", "train", "--concurrency", "1"]
