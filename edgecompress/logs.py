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
    saved = {
        name: (lg.handlers[:], lg.propagate)
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
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


# Progress of long work inside a pass (training steps, with loss and time left) goes to this logger; the
# CLI shows it on stderr without --verbose, because minutes of silence look like a hang.
PROGRESS_LOGGER = "edgecompress.progress"


def progress_log() -> logging.Logger:
    return logging.getLogger(PROGRESS_LOGGER)


def show_progress_on_stderr() -> None:
    """Print progress lines on stderr, indented under the stage lines, whatever the log level."""
    logger = progress_log()
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("        %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Printed once, by the handler above: the plain stream handler `logging.basicConfig` gave the root
    # logger skips progress records. Other root handlers (a test runner's capture) keep seeing them.
    for root_handler in logging.getLogger().handlers:
        if type(root_handler) is logging.StreamHandler and not any(
            isinstance(f, _NotProgress) for f in root_handler.filters
        ):
            root_handler.addFilter(_NotProgress())


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (a test runner swaps it between commands)."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        sys.stderr.write(self.format(record) + "\n")


class _NotProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(PROGRESS_LOGGER)
