"""JSON log lines carrying the request id of the request that wrote them."""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
ACCESS_LOGGER = "modelport.access"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(
            # orjson: every request writes an access line, and the stdlib encoder costs it more.
            OrjsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt=_DATE_FORMAT,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    # No line shows the thread or process: skip looking them up for every record (the
    # access log writes one per request).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    access_log.use(handler if fmt == "json" else None)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The request middleware writes the access log (with request ids); uvicorn's would repeat it.
    logging.getLogger("uvicorn.access").disabled = True


class AccessLog:
    """The access log: one line per request, written by the request middleware.

    With JSON logs and this module's handler the only one, a line is encoded here, in the same
    shape the handler's formatter gives every other line, and written to its stream: building
    a LogRecord and formatting it costs a request about 17 microseconds, this about 3.
    Otherwise (text logs, or handlers someone else configured) it goes through logging.
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._handler: logging.StreamHandler[Any] | None = None
        self._second = -1
        self._stamp = ""

    def use(self, handler: logging.StreamHandler[Any] | None) -> None:
        self._handler = handler

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, request_id: str, fields: dict[str, Any]) -> None:
        handler = self._handler
        root = logging.getLogger()
        if handler is None or root.handlers != [handler] or self._logger.handlers:
            self._logger.info("request", extra=fields)
            return
        now = int(time.time())
        if now != self._second:  # the time is formatted once a second
            self._second, self._stamp = now, time.strftime(_DATE_FORMAT, time.localtime(now))
        line = {
            "time": self._stamp,
            "level": "INFO",
            "logger": ACCESS_LOGGER,
            "message": "request",
            "request_id": request_id,
            **fields,
        }
        handler.acquire()  # as logging does: no line interleaved with another thread's
        try:
            handler.stream.write(orjson.dumps(line).decode() + "\n")
            handler.flush()
        finally:
            handler.release()


access_log = AccessLog()
