"""Calculator decoding: when the model has written ``<<48/2=``, the value it is about to compute is
inserted for it (the arithmetic itself is `mathtune.arithmetic`)."""

from __future__ import annotations

import re

from mathtune.arithmetic import Number, evaluate_expression, evaluate_number, format_number, normalize_expression

__all__ = ["Number", "complete_calculator_annotation", "evaluate_expression", "evaluate_number", "format_number",
           "normalize_expression"]

_OPEN_ANNOTATION = re.compile(r"<<([^<>=]*)=$")


def complete_calculator_annotation(text: str) -> str | None:
    """The value to insert when ``text`` ends inside an annotation ``<<EXPR=``, else None.

    During decoding the model writes ``<<48/2=``; the caller appends this value and usually
    ``>>`` so the model never has to do the arithmetic itself.
    """
    match = _OPEN_ANNOTATION.search(text)
    return None if match is None else evaluate_expression(match.group(1))
