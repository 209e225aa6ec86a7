"""Exceptions with messages a user can act on: each names the file and the problem."""
from __future__ import annotations

from pathlib import Path
from typing import Union


class CTExplainError(Exception):
    """Base class of every error the core raises on purpose."""


class InputError(CTExplainError):
    """An input image or folder cannot be used; the message names the path and the problem."""

    def __init__(self, path: Union[str, Path], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelPackageError(CTExplainError):
    """A model package is malformed, unsafe or does not match its network."""

    def __init__(self, path: Union[str, Path], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
