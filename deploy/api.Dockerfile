# Slim image for the API, the CPU (export/control) worker, migrations, beat and Flower: no torch.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY shared ./shared
COPY worker ./worker
COPY migrations ./migrations
COPY deploy ./deploy
# Editable, so that alembic finds migrations/ and gunicorn deploy/ beside the code.
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 10001 tmde \
    && mkdir -p /srv/data \
    && chown tmde /srv/data
USER 10001
EXPOSE 8000 5555
HEALTHCHECK --interval=30s --timeout=6s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=5)"]
CMD ["gunicorn", "--config", "deploy/gunicorn.conf.py", "app:create_app()"]
