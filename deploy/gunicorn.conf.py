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
# The path without its query string (%(U)s, not the request line %(r)s) and no referer: the
# feeds accept ?access_token=, which must not reach the logs.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)s "%(a)s"'
limit_request_line = 8190

# Every line in LOG_FORMAT (text, or JSON with run ids) from the first: gunicorn's own loggers
# (boot, access) as well as the app's. Merged into gunicorn's CONFIG_DEFAULTS.
_FORMAT = {"()": "shared.logs.formatter", "log_format": os.environ.get("LOG_FORMAT", "text")}
_HANDLER = {"class": "logging.StreamHandler", "formatter": "line", "filters": ["run_id"]}
logconfig_dict = {
    "formatters": {"line": _FORMAT},
    "filters": {"run_id": {"()": "shared.logs.RunIdFilter"}},
    "handlers": {
        "console": {**_HANDLER, "stream": "ext://sys.stdout"},
        "error_console": {**_HANDLER, "stream": "ext://sys.stderr"},
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}
