"""Progress output on stderr: tqdm bars on a terminal, plain lines when stderr is not one.

A log file or a CI console (`> log 2>&1`) cannot redraw a line: tqdm's carriage returns and cursor-up escapes
(`\\x1b[A`, left behind by nested bars) would end up in it. There every update is one complete line instead.
stderr is looked up at each call, so a redirected or captured stderr is honoured.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


def _stream(stream: TextIO | None) -> TextIO:
    return sys.stderr if stream is None else stream


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether the stream (default: stderr) is an interactive terminal that can redraw a bar."""
    isatty = getattr(_stream(stream), "isatty", None)
    return bool(isatty and isatty())


class PlainBar:
    """A progress counter written as whole lines: one when it starts, one per update (with the elapsed time).

    The same calls as the tqdm bars it stands in for: update(n), close(), and use as a context manager."""

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self._stream = stream
        self._t0 = time.perf_counter()
        self._write()

    def _write(self):
        elapsed = time.perf_counter() - self._t0
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({elapsed:.1f} s)", file=_stream(self._stream),
              flush=True)

    def update(self, n: int = 1):
        self.n += n
        self._write()

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def bar(total: int, desc: str, unit: str = "it", leave: bool = True, stream: TextIO | None = None):
    """A progress bar over `total` steps: tqdm on a terminal (leave=False erases it when done), else a PlainBar."""
    if not is_terminal(stream):
        return PlainBar(total, desc, unit, stream)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=_stream(stream), leave=leave, dynamic_ncols=True)


def note(text: str, stream: TextIO | None = None):
    """One line of progress text; on a terminal written above any open bars instead of through them."""
    if not is_terminal(stream):
        print(text, file=_stream(stream), flush=True)
        return
    from tqdm import tqdm

    tqdm.write(text, file=_stream(stream))


class _WithoutRedraws:
    """A text stream that passes whole lines on to `target` and drops bar redraws: writes holding a carriage
    return or a cursor escape, and the newline a finished bar ends with."""

    def __init__(self, target: TextIO):
        self.target = target
        self._after_redraw = False

    def write(self, text: str) -> int:
        if "\r" in text or "\x1b[" in text:
            self._after_redraw = True
            return len(text)
        if text == "\n" and self._after_redraw:
            self._after_redraw = False
            return len(text)
        self._after_redraw = False
        return self.target.write(text)

    def flush(self):
        self.target.flush()

    def isatty(self) -> bool:
        return False


@contextmanager
def library_bars() -> Iterator[None]:
    """transformers' and huggingface_hub's own tqdm bars (weight loading, GGUF de-quantization, downloads) for
    the block: kept on a terminal; otherwise switched off where the library has a switch, and the redraws of
    those it draws unconditionally (transformers' GGUF de-quantization bar is a bare tqdm) dropped from stderr.
    Everything else written to stderr meanwhile passes through."""
    if is_terminal():
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_was_on = hf_logging.is_progress_bar_enabled()
    hub_was_on = not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    stderr = sys.stderr
    sys.stderr = _WithoutRedraws(stderr)
    try:
        yield
    finally:
        sys.stderr = stderr
        if hf_was_on:
            hf_logging.enable_progress_bar()
        if hub_was_on:
            enable_progress_bars()
