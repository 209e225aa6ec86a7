"""Exceptions the stand-in raises where real Slicer would do something it cannot reproduce."""
from __future__ import annotations


class StandInLimitation(NotImplementedError):
    """Real Slicer would need Qt widgets, a main window or a running application here."""


class ModalDialogWouldBlock(RuntimeError):
    """Outside testing mode Slicer shows a modal dialog here, which blocks a headless run
    (slicer-api.md section 1, "Dialogs"). Set ``slicer.app.dialogResponder`` to answer it."""
