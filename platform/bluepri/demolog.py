"""The demo's terminal: the story on screen, the libraries' output in a log file.

While `quiet_terminal` is open, the loggers of Ray, Ray Data/Tune/Train/Serve, diffusers,
transformers, peft and optuna write to one log file instead of the terminal, and so does
whatever is printed (Tune's status tables, tqdm bars, `warnings`): sys.stdout and sys.stderr
point at the file. Only the lines passed to the `say` it yields reach the terminal (through
the caller's own `log`), copied into the file too so the noise there reads in context.
Everything is put back on exit, including handlers a library added meanwhile on the
redirected streams. Ray's workers print nowhere near us: `runtime.ensure_ray` starts Ray
with `log_to_driver=False`. Native code in this process writes to file descriptor 2 itself
(Ray's C++ core worker logs there, e.g. its warning that a Ray Data actor pool's constructor
arguments live in the object store): descriptor 2 points at the file too while the demo runs,
and at what it was before (a terminal, or a test runner's capture) afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

NOISY_LOGGERS = (
    "ray",
    "ray.data",
    "ray.tune",
    "ray.train",
    "ray.serve",
    "diffusers",
    "transformers",
    "peft",
    "optuna",
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STDERR_FD = 2


@dataclass
class LoggerState:
    """What `quiet_terminal` changes on one logger, to put back."""

    logger: logging.Logger
    handlers: list[logging.Handler]
    propagate: bool

    @classmethod
    def save(cls, logger: logging.Logger) -> LoggerState:
        return cls(logger, list(logger.handlers), logger.propagate)

    def restore(self) -> None:
        self.logger.handlers[:] = self.handlers
        self.logger.propagate = self.propagate


@contextlib.contextmanager
def quiet_terminal(
    log_path: Path, log: Callable[[str], None], loggers: Sequence[str] = NOISY_LOGGERS
) -> Iterator[Callable[[str], None]]:
    """Send `loggers` and stdout/stderr to `log_path` (appended); yield `say(line)`, which
    shows a line through `log` on the real terminal and copies it into the file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    screen = sys.stdout
    lock = threading.Lock()
    with open(log_path, "a", buffering=1, encoding="utf-8") as file:
        file.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} ----\n")
        handler = logging.StreamHandler(file)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        saved = [LoggerState.save(logging.getLogger(name)) for name in loggers]

        def say(line: str) -> None:
            # `log` (print, typer.echo) writes to whatever sys.stdout is when called, so the
            # real one comes back for that call; a library printing from another thread in
            # that instant would reach the screen too, which is harmless.
            with lock:
                file.write(line + "\n")
                with contextlib.redirect_stdout(screen):
                    log(line)

        try:
            for state in saved:
                state.logger.handlers[:] = [*files_only(state.handlers), handler]
                state.logger.propagate = False  # once in our file is enough
            with (
                descriptor_into(STDERR_FD, file),
                contextlib.redirect_stdout(file),
                contextlib.redirect_stderr(file),
            ):
                yield say
        finally:
            for state in saved:
                state.restore()
            drop_handlers_on(file)


@contextlib.contextmanager
def descriptor_into(fd: int, file: TextIO) -> Iterator[None]:
    """Point file descriptor `fd` at `file` (what native code writes there), then back."""
    saved = os.dup(fd)
    sys.stderr.flush()  # what Python buffered for the terminal goes there first
    os.dup2(file.fileno(), fd)
    try:
        yield
    finally:
        file.flush()
        os.dup2(saved, fd)
        os.close(saved)


def files_only(handlers: Sequence[logging.Handler]) -> list[logging.Handler]:
    """The handlers that do not write to a terminal: files (Ray Data's session log) stay."""
    return [
        h
        for h in handlers
        if isinstance(h, logging.FileHandler) or not isinstance(h, logging.StreamHandler)
    ]


def drop_handlers_on(stream: TextIO) -> None:
    """Remove every handler, on any logger, that writes to `stream`: one a library added
    while stderr was our file would otherwise write to a closed file later."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        if not isinstance(logger, logging.Logger):
            continue  # a PlaceHolder for a logger nobody created yet
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                logger.removeHandler(handler)


@contextlib.contextmanager
def heartbeat(say: Callable[[str], None], what: str, every_s: float = 15.0) -> Iterator[None]:
    """Say `what` is still going, with the time it has taken, every `every_s` seconds: the
    long steps (training, the search) say nothing of their own until they end."""
    stop = threading.Event()
    started = time.perf_counter()

    def beat() -> None:
        while not stop.wait(every_s):
            say(f"  ... {what}: {time.perf_counter() - started:.0f}s")

    thread = threading.Thread(target=beat, name="demo-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
