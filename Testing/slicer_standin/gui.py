"""The few GUI objects the logic-only path touches, and importable ``qt``/``ctk`` placeholders.

Widgets are out of scope (the brief and slicer-api.md section 7: run the logic headless). Module
files still ``import qt, ctk`` at the top, so those names resolve to placeholder modules whose
classes raise StandInLimitation when *used*; constants read off them are placeholders too.
"""
from __future__ import annotations

import types
from typing import Any, List, Optional

from .errors import StandInLimitation


class HeadlessLayout:
    """Records what a widget's setup() adds to ``self.layout``."""

    def __init__(self) -> None:
        self.items: List[Any] = []

    def addWidget(self, widget, *args) -> None:
        self.items.append(widget)

    def addLayout(self, layout, *args) -> None:
        self.items.append(layout)

    def addItem(self, item) -> None:
        self.items.append(item)

    def addStretch(self, *args) -> None:
        self.items.append("stretch")

    def addRow(self, *args) -> None:
        self.items.append(args)

    def count(self) -> int:
        return len(self.items)

    def itemAt(self, index: int):
        return self.items[index] if 0 <= index < len(self.items) else None

    def removeItem(self, item) -> None:
        if item in self.items:
            self.items.remove(item)


class qMRMLWidget:
    """A parent widget for ScriptedLoadableModuleWidget(parent=None) without Qt."""

    def __init__(self, parent=None) -> None:
        self._layout: Optional[HeadlessLayout] = None
        self._scene = None
        self.visible = False

    def setLayout(self, layout) -> None:
        self._layout = layout

    def layout(self):
        return self._layout

    def setMRMLScene(self, scene) -> None:
        self._scene = scene

    def mrmlScene(self):
        return self._scene

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def deleteLater(self) -> None:
        pass


class QIcon:
    """What ScriptedLoadableModule stores as ``parent.icon``: just the file it came from."""

    def __init__(self, path: str = "") -> None:
        self.path = path

    def isNull(self) -> bool:
        return not self.path


class _PlaceholderMeta(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder("%s.%s" % (cls.__name__, name))

    def __call__(cls, *args, **kwargs):
        raise StandInLimitation("slicer_standin has no Qt: %s cannot be used" % cls.__name__)


def _placeholder(name: str) -> type:
    return _PlaceholderMeta(name, (), {})


def placeholder_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = "slicer_standin placeholder: no Qt in this environment"

    def __getattr__(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _placeholder("%s.%s" % (name, attribute))

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return module
