"""Progress bars for the steps of the command line that take more than a few seconds
(the figures' attribution methods, the digit-flip test): on stderr, drawn with tqdm when
it is installed (the ``plot`` and ``experiments`` extras), else as one plain line redrawn
in place; off unless stderr is a terminal (or drawing is forced), and off with
``--quiet``."""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, TextIO


class Progress:
    """A progress bar on ``stream`` (default stderr) with a growing total: ``add`` announces
    steps, ``update`` completes them, ``close`` ends the line. Drawn only if ``enabled``
    (default: when the stream is a terminal); with tqdm unless ``plain``."""

    def __init__(self, label: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None, width: int = 30, plain: bool = False) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = isatty(self.stream) if enabled is None else enabled
        self.label, self.width = label, width
        self.total = self.done = 0
        self.start = time.perf_counter()
        self._last = ""
        self._bar = None if plain or not self.enabled else _tqdm(label, self.stream)

    def add(self, total: int) -> None:
        """Announce ``total`` more steps."""
        self.total += total
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()
        self._draw()

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
        self._draw()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.enabled or self._bar is not None:
            return
        filled = self.width * self.done // max(self.total, 1)
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total} {time.perf_counter() - self.start:.0f} s")
        if line != self._last:
            self.stream.write("\r" + line)
            self.stream.flush()
            self._last = line


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _tqdm(label: str, stream: TextIO) -> Any:
    """A tqdm bar, or None if tqdm is not installed."""
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return None
    return tqdm.tqdm(total=0, desc=label, file=stream, leave=True, dynamic_ncols=True,
                     unit="step")
