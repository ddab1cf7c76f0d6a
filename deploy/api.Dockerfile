# Slim image for the API, the CPU (export) worker, migrations and Flower: no torch.
FROM python:3.11-slim
WORKDIR /srv/app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY shared ./shared
COPY worker ./worker
COPY migrations ./migrations
RUN pip install -e . flower
RUN useradd --create-home tmde && mkdir -p /srv/data && chown tmde /srv/data
USER tmde
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--threads", "32", "app:create_app()"]
