"""Log lines that cost nothing unless someone listens.

wasmig logs what it decides and how long things take through Python's :mod:`logging` (logger
``wasmig`` and its children: the engine chosen and why, cache hits and misses, checkpoint and
restore times), but does not import :mod:`logging` for it: ``wasmig -v`` / ``WASMIG_LOG``
(:func:`configure`) or a program embedding wasmig that set up logging has imported it;
otherwise nothing would show these levels anyway, and a line costs one dictionary lookup
instead of the milliseconds the import adds to every start.
"""

from __future__ import annotations

import sys
from typing import Any

DEBUG, INFO, WARNING = 10, 20, 30
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": 40}


def debug(name: str, msg: str, *args: Any) -> None:
    _emit(name, DEBUG, msg, args)


def info(name: str, msg: str, *args: Any) -> None:
    _emit(name, INFO, msg, args)


def warning(name: str, msg: str, *args: Any) -> None:
    _emit(name, WARNING, msg, args)


def _emit(name: str, level: int, msg: str, args: tuple[Any, ...]) -> None:
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(name).log(level, msg, *args)


def configure(verbose: int, setting: str | None) -> str | None:
    """The command line's logging: the ``wasmig`` logger to stderr, one ``wasmig: LEVEL: message``
    line per record, at the more verbose of ``-v`` (info; ``-vv``: debug) and ``WASMIG_LOG``
    (a level name). Returns what is wrong with ``setting`` when it is not a level name."""
    level, problem = WARNING, None
    if setting:
        key = setting.strip().lower()
        if key in LEVELS:
            level = LEVELS[key]
        else:
            problem = f"WASMIG_LOG={setting!r} is not a level ({', '.join(LEVELS)}); ignored"
    if verbose:
        level = min(level, INFO if verbose == 1 else DEBUG)
    if level >= WARNING:  # the default: warnings are printed as they are, nothing to set up
        return problem
    import logging

    class Concise(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"wasmig: {record.levelname.lower()}: {record.getMessage()}"

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Concise())
    logger = logging.getLogger("wasmig")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return problem
