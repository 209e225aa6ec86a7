"""Progress of ``ctexplain explain``: nothing, or one line per stage for a log.

A redrawn tqdm bar writes carriage returns, which a log file (or ``torchrun``'s forwarded
output) keeps as one long garbled line; :class:`LineProgress` writes every stage a case
enters as one line instead::

    [1/4] chest_ct: load
    [1/4] chest_ct: preprocess
    ...
    [1/4] chest_ct: done (12.3 s)

Under ``torchrun`` each line starts with the rank that runs the case.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Set, TextIO


class QuietProgress:
    """No progress (``--no-progress``); the case's error and warning lines still go to stderr.
    The other reporters of the command line share its methods."""

    def start_case(self, case: str, index: int, cases: int) -> None:
        return None

    def __call__(self, stage: str, fraction: float) -> None:
        return None

    def end_case(self, result: Any) -> None:  # a pipeline.CaseResult
        return None

    def write(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        return None


class LineProgress(QuietProgress):
    """Stages of each case as they start; a stage entered again (once per finding) is not repeated."""

    def __init__(self, stream: Optional[TextIO] = None, prefix: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self.case = ""
        self.seen: Set[str] = set()

    def start_case(self, case: str, index: int, cases: int) -> None:
        self.case = f"[{index + 1}/{cases}] {case}"
        self.seen = set()

    def __call__(self, stage: str, fraction: float) -> None:
        if stage not in self.seen:
            self.seen.add(stage)
            self.write(f"{self.prefix}{self.case}: {stage}")

    def end_case(self, result: Any) -> None:
        self.write(f"{self.prefix}{self.case}: {'done' if result.ok else 'failed'} ({result.elapsed_s:.1f} s)")

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
