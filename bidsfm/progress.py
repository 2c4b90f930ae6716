"""Progress of long jobs: a rich progress bar on a terminal, one log line per step off it.

Used by the participant level (one step per run and per participant's model stage, fed by
Nipype's ``status_callback``), the group level (one step per target) and the demo generator
(one step per participant). Off a terminal (cluster logs, pipes) every step start and end is
an INFO line ``[k/N] <item>: <what>``; on a terminal a transient bar shows the current step and
only the ends are logged. Nothing is imported beyond the standard library until a bar is
shown (rich then).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_CONSOLE: Any = None


def console() -> Any:
    """The rich console on standard error shared by the log handler and the progress bars."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(stderr=True)
    return _CONSOLE


def on_terminal() -> bool:
    """Whether standard error is a terminal (then bars, else log lines)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class Steps:
    """Progress over ``total`` steps, logged to ``logger``.

    Parameters
    ----------
    what : str
        What is counted (the bar's label), e.g. ``"participant job"``.
    total : int
        Number of steps.
    logger : logging.Logger
        Where the lines go.
    bar : bool, optional
        Show a rich bar (default: when standard error is a terminal).
    """

    def __init__(self, what: str, total: int, logger: logging.Logger,
                 bar: bool | None = None) -> None:
        self.what, self.total, self.logger = what, max(int(total), 0), logger
        self.bar = on_terminal() if bar is None else bar
        self.done_count = 0
        self.started_count = 0
        self._started: dict[str, float] = {}
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Steps:
        if self.bar and self.total:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=console(), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.what, total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _tag(self, number: int) -> str:
        return f"[{number}/{self.total}]"

    def start(self, item: str, step: str) -> None:
        """A step begins: a line off a terminal, the bar's description on it.

        Steps are numbered in the order they start (several run at once with MultiProc).
        """
        self._started[item] = time.perf_counter()
        self.started_count += 1
        number = min(self.started_count, self.total)
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self.what}: {item} ({step})")
        else:
            self.logger.info("%s %s: %s", self._tag(number), item, step)

    def end(self, item: str, outcome: str, level: int = logging.INFO,
            took: float | None = None) -> None:
        """A step ends: always one line (with its duration: ``took`` seconds when given, e.g.
        measured by a worker process, else the time since :meth:`start`), and the bar
        advances."""
        self.done_count += 1
        since = time.perf_counter() - self._started.pop(item, time.perf_counter())
        took = since if took is None else took
        self.logger.log(level, "%s %s: %s (%.1f s)", self._tag(min(self.done_count, self.total)),
                        item, outcome, took)
        if self._progress is not None:
            self._progress.advance(self._task)


def _node_outcome(node: Any) -> tuple[str, int]:
    """Short outcome of a finished bidsfm node (statuses from its ``results`` output)."""
    try:
        results = list(node.result.outputs.results or [])
    except Exception:
        return "finished", logging.INFO
    if not results:
        return "nothing to do", logging.INFO
    counts: dict[str, int] = {}
    for res in results:
        counts[str(res.get("status"))] = counts.get(str(res.get("status")), 0) + 1
    bad = any(s == "error" for s in counts)
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return text, logging.WARNING if bad else logging.INFO


class NipypeSteps(Steps):
    """:class:`Steps` fed by Nipype's ``status_callback`` (Linear and MultiProc plugins).

    ``labels`` maps node names (``run_000_…``, ``encode_model``) of each participant's
    workflow to what the lines say; other nodes (the merge node) are not counted.
    """

    def __init__(self, labels: dict[str, tuple[str, str]], logger: logging.Logger,
                 bar: bool | None = None) -> None:
        super().__init__("participant job", len(labels), logger, bar=bar)
        self.labels = labels

    def _key(self, node: Any) -> str | None:
        key = str(getattr(node, "fullname", "") or "")
        # fullname is "<top workflow>.<participant workflow>.<node>"
        key = ".".join(key.split(".")[-2:])
        return key if key in self.labels else None

    def callback(self, node: Any, status: str) -> None:
        """Nipype's ``status_callback(node, status)``; never raises."""
        try:
            key = self._key(node)
            if key is None:
                return
            item, step = self.labels[key]
            if status == "start":
                self.start(item, step)
            elif status == "end":
                outcome, level = _node_outcome(node)
                self.end(item, outcome, level)
            else:  # "exception": the node crashed (its crash file says why)
                self.end(item, "crashed (see the crash file)", logging.ERROR)
        except Exception:  # progress must never break the workflow
            pass
