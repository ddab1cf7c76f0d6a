"""gunicorn settings for the API image.

    gunicorn --config deploy/gunicorn.conf.py 'app:create_app()'


gthread workers: every live progress client (SSE or websocket) holds a thread for as long as it
watches, so threads are many and cheap; `timeout = 0` because a feed is a long response.
"""

import os

bind = f"{os.environ.get('API_HOST', '0.0.0.0')}:{os.environ.get('API_PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("API_WORKERS", "2"))
threads = int(os.environ.get("API_THREADS", "64"))
timeout = 0
graceful_timeout = 30
keepalive = 5
accesslog = "-"
limit_request_line = 8190


def post_worker_init(worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    """The same LOG_FORMAT (text or JSON with run ids) as the workers."""
    from shared.logs import configure

    configure(os.environ.get("LOG_FORMAT", "text"))
