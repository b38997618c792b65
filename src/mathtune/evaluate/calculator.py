"""Calculator decoding: when the model has written ``<<48/2=``, the value it is about to compute is
inserted for it (the arithmetic itself is `mathtune.arithmetic`)."""

from __future__ import annotations

import re

from mathtune.arithmetic import Number, evaluate_expression, evaluate_number, format_number, normalize_expression

__all__ = ["Number", "complete_calculator_annotation", "evaluate_expression", "evaluate_number", "format_number",
           "normalize_expression"]

# `=` and the first character of the result it writes: BPE vocabularies (SmolLM2's, Llama's) hold `=-`
# and `=.` as single tokens, so a negative result arrives as `<<5-33=-` and never ends in a bare `=`.
_OPEN_ANNOTATION = re.compile(r"<<([^<>=]*)=([-.]?)$")


def complete_calculator_annotation(text: str) -> str | None:
    """The value to insert when ``text`` ends inside an annotation ``<<EXPR=``, else None.

    During decoding the model writes ``<<48/2=``; the caller appends this value and usually
    ``>>`` so the model never has to do the arithmetic itself. When the token that closed the
    expression also began the result (``<<5-33=-``, ``<<1/2=.``), the rest of the value is inserted
    if it begins that way; if not (``<<5+3=-``), None: the model's own text stands.
    """
    match = _OPEN_ANNOTATION.search(text)
    if match is None:
        return None
    value = evaluate_expression(match.group(1))
    written = match.group(2)
    if value is None or not written:
        return value
    if written == "." and value.startswith("0."):
        value = value[1:]  # GSM8K's `.5` for 0.5
    return value[len(written):] if value.startswith(written) else None
