"""Capture what third-party libraries log during a call, so it lands in pass notes instead of the terminal."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def captured_library_output() -> Iterator[list[str]]:
    """Collect warnings logged (by any logger) and swallow stdout prints during the block.

    Libraries such as onnxruntime's tools attach their own handlers and print progress; the caller
    records the returned lines as notes, where the report shows them.
    """
    collector = _Collector()
    root = logging.getLogger()
    saved = {name: (lg.handlers[:], lg.propagate) for name, lg in logging.root.manager.loggerDict.items()
             if isinstance(lg, logging.Logger)}
    saved_root = root.handlers[:]
    for logger in (logging.getLogger(name) for name in saved):
        logger.handlers = []
        logger.propagate = True
    root.handlers = [collector]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield collector.lines
    finally:
        root.handlers = saved_root
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
