"""Structured logs: one JSON object per line on stderr.

Each finished call logs one `request` line (id, method, status, tokens, time to first token,
duration); prompt text appears only when `server.log_prompts` is on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

LOGGER_NAME = "backend"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.processName != "MainProcess":
            entry["process"] = record.processName  # vLLM's engine core and workers
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return logger


def configure_engine_logging(level: str) -> None:
    """Makes vLLM log the same JSON lines on stderr, in this process and the engine's.

    vLLM reads VLLM_LOGGING_CONFIG_PATH when it is first imported (here and in the engine core
    process it spawns), so this runs before anything imports vllm. An operator's own
    VLLM_LOGGING_CONFIG_PATH is left alone.
    """
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return
    level = os.environ.get("VLLM_LOGGING_LEVEL", level).upper()
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"vllm": {"handlers": ["stderr"], "level": level, "propagate": False}},
    }
    # Under /tmp, the one writable place in the container.
    with tempfile.NamedTemporaryFile(
        "w", prefix="vllm-logging-", suffix=".json", delete=False
    ) as f:
        json.dump(config, f)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = f.name


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def log_event(
    logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any
) -> None:
    """Logs `message` with structured fields merged into the JSON line."""
    logger.log(level, message, extra={"fields": fields})
