"""A MONAI bundle config read as data: JSON or YAML, ``@references`` resolved, code never run.

MONAI's own parser (``monai.bundle.ConfigParser``) instantiates ``_target_`` objects and
evaluates ``$expressions`` with ``eval``; CTExplain uses only its file reading (JSON, or YAML
with a safe loader) and its id handling (``#``/``::`` separators, relative ids such as
``@#key``), and resolves values itself, on demand: only the entries that are asked for (the
network, the preprocessing, the inferer) are looked at, so ``imports``, datalists, devices
and handlers are never read. A reference resolves to the data it points to; an expression is
computed only when it is one of the safe idioms of :mod:`.safe_eval`, otherwise
:class:`BundleRefused` names its id and text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ModelPackageError
from .safe_eval import UnsafeExpression, safe_eval

EXPRESSION = "$"
REFERENCE = "@"
MACRO = "%"
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


class BundleRefused(ModelPackageError):
    """A bundle asks for something CTExplain does not do: code, or an unknown transform."""


def _resolver() -> Any:
    from monai.bundle.reference_resolver import ReferenceResolver  # MONAI is imported only for bundles

    return ReferenceResolver


def read_config_file(path: Path) -> Dict[str, Any]:
    """One config file as plain data (MONAI's reader: ``json.load`` or a safe YAML loader)."""
    from monai.bundle import ConfigParser

    try:
        data = ConfigParser.load_config_file(str(path))
    except (OSError, ValueError) as exc:
        raise ModelPackageError(path, f"cannot read bundle config: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError and its subclasses
        raise ModelPackageError(path, f"cannot read bundle config: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelPackageError(path, "bundle config is not a mapping of ids to entries")
    return data


def find_config(folder: Path, stem: str) -> Optional[Path]:
    """``folder/stem.json`` (or ``.yaml``, ``.yml``), whichever exists first."""
    for suffix in CONFIG_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class BundleConfig:
    """Entries of one config file, resolved on demand by id (``"network_def"``, ``"inferer#roi_size"``)."""

    def __init__(self, path: Path, data: Dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self._resolving: List[str] = []

    @classmethod
    def read(cls, path: Path) -> "BundleConfig":
        return cls(path, read_config_file(path))

    def has(self, id: str) -> bool:
        try:
            self.raw(id)
            return True
        except KeyError:
            return False

    def raw(self, id: str) -> Any:
        """The entry at ``id`` as written (KeyError when absent)."""
        node: Any = self.data
        for key in _resolver().split_id(id) if id else []:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.lstrip("-").isdigit() and -len(node) <= int(key) < len(node):
                node = node[int(key)]
            else:
                raise KeyError(id)
        return node

    def get(self, id: str) -> Any:
        """The entry at ``id`` with every reference, macro and expression in it resolved."""
        id = _resolver().normalize_id(id)
        if id in self._resolving:
            raise self.refused(id, f"circular reference: {' -> '.join(self._resolving + [id])}")
        try:
            value = self.raw(id)
        except KeyError:
            raise self.refused(id, "missing entry") from None
        self._resolving.append(id)
        try:
            return self.resolve(value, id)
        finally:
            self._resolving.pop()

    def resolve(self, value: Any, id: str) -> Any:
        """``value``, found at ``id`` (for relative ids and messages), resolved."""
        if isinstance(value, dict):
            return {key: self.resolve(item, _join(id, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve(item, _join(id, str(index))) for index, item in enumerate(value)]
        if not isinstance(value, str):
            return value
        if value.startswith(EXPRESSION):
            return self._expression(value, id)
        if value.startswith(REFERENCE) or value.startswith(MACRO):
            target = self._absolute(value, id)
            if target.startswith(MACRO):
                return self._macro(target, id)
            return self.get(target[len(REFERENCE) :])
        return value

    def refused(self, id: str, problem: str) -> BundleRefused:
        return BundleRefused(self.path, f"entry '{_display(id)}': {problem}")

    def _absolute(self, value: str, id: str) -> str:
        from monai.bundle import ConfigParser

        try:
            return ConfigParser.resolve_relative_ids(id, value)
        except ValueError as exc:
            raise self.refused(id, str(exc)) from exc

    def _macro(self, value: str, id: str) -> Any:
        """``%file#id`` (a file beside this one) or ``%#id``/``%id`` (this file): the entry as written, resolved there."""
        path_part, _, target = value[len(MACRO) :].partition(_resolver().sep)
        if not path_part:
            return self.get(target)
        other = (self.path.parent / path_part).resolve()
        if other.parent != self.path.parent.resolve() or other.suffix not in CONFIG_SUFFIXES:
            raise self.refused(id, f"macro {value!r} names a file outside the bundle's configs folder")
        return BundleConfig.read(other).get(target)

    def _expression(self, value: str, id: str) -> Any:
        resolver = _resolver()
        normal = resolver.normalize_id(value)
        refs: Dict[str, Any] = {}
        for match in resolver.id_matcher.findall(self._absolute(normal, id)):
            refs[match[len(REFERENCE) :]] = self.get(match[len(REFERENCE) :])
        rewritten = resolver.update_refs_pattern(self._absolute(normal, id), refs)
        try:
            return safe_eval(rewritten[len(EXPRESSION) :], refs)
        except UnsafeExpression as exc:
            raise self.refused(id, f"expression {value!r} is code CTExplain does not run ({exc})") from exc


def _join(id: str, key: str) -> str:
    return f"{id}::{key}" if id else key


def _display(id: str) -> str:
    """An id as bundles write it (``a#b``)."""
    return id.replace("::", "#")
