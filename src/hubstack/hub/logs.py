"""What the hub's log lines say: no secrets, and no error for hubstack's normal answers.

Secrets are kept out wherever a request's URL or headers are logged.

JupyterHub scrubs ``token=`` from its own request log, but tornado logs the full URL of
every request that ends in an HTTP error (``403 GET /hub/api/users?token=...``), and
JupyterHub logs a redirect's target, which carries the original URL %-escaped in
``?next=``. One filter on the log handlers of the hub and of the binder service redacts
query values whose name says they are secret, also when escaped once or twice, and the
value of an ``Authorization`` header, in every line.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[secret]"
# A query's "?" or "&", as is or %-escaped once or twice (a URL inside ?next=...).
_SEPARATOR = r"(?:[?&;]|%3F|%26|%253F|%2526)"
_EQUALS = r"(?:=|%3D|%253D)"
# The names JupyterHub scrubs (token, auth, key, code, state, _xsrf), and passwords.
_NAME = r"[\w.-]*?(?:token|auth|key|code|state|xsrf|password|secret)[\w.-]*?"
_QUERY_SECRET = re.compile(
    rf"({_SEPARATOR}{_NAME}{_EQUALS})(?:(?!%26|%2526)[^&\s;\"'<>,])+", re.IGNORECASE
)
_AUTHORIZATION = re.compile(r"(authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with secret query values and Authorization header values replaced."""
    text = _QUERY_SECRET.sub(rf"\g<1>{REDACTED}", text)
    return _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """A log handler filter: each record's message, formatted, then redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: the handler reports it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class QuietExpected(logging.Filter):
    """JupyterHub logs every exception of a spawn request as an error with its traceback;
    one that hubstack raises as its normal answer (marked ``log_quietly``, e.g. a link to
    the spawn page, which fills in the form instead of starting) becomes one info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if getattr(error, "log_quietly", False):
            record.msg, record.args = f"{record.getMessage()}: {error}", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def redact_handlers(logger: logging.Logger) -> None:
    """Add the filter to each of ``logger``'s handlers (records of child loggers that
    propagate to them pass through handler filters, not through logger filters)."""
    for handler in logger.handlers:
        handler.addFilter(RedactSecrets())


# JupyterHub's ``logging_config``, merged into traitlets' default: its one console handler.
JUPYTERHUB_LOGGING = {
    "filters": {
        "secrets": {"()": f"{__name__}.RedactSecrets"},
        "expected": {"()": f"{__name__}.QuietExpected"},
    },
    "handlers": {"console": {"filters": ["expected", "secrets"]}},
}
