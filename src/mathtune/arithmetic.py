"""Safe arithmetic: the one evaluator behind calculator decoding, the program converter and the
augmenter (GSM8K annotations such as ``<<48/2=24>>``, straight-line programs).

Expressions are parsed with :mod:`ast` and walked by hand; nothing is ever passed to ``eval``.
Only numbers, ``+ - * / // % **``, unary ``+``/``-`` and parentheses are accepted. Every
intermediate result is bounded, so a hostile expression like ``9**9**9`` is refused at once
instead of trying to build a number with hundreds of millions of digits.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping

Number = int | float

MAX_EXPRESSION_CHARS = 256  # GSM8K's longest annotation is far shorter; long input is not arithmetic
MAX_MAGNITUDE = 10**30  # word-problem quantities never get near this; bigger means a runaway power
DECIMALS = 6  # GSM8K writes results like 0.2 or 0.33; six places hides float noise (0.1 + 0.2)

_BINARY_OPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
# "1,000" inside an expression is a thousands separator, not a tuple.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Python 3 rejects "05"; GSM8K annotations occasionally contain such literals.
_LEADING_ZEROS = re.compile(r"(?<![\w.])0+(?=\d)")
_TIMES_X = re.compile(r"(?<=[\d)])\s*x\s*(?=[\d(])")


class _Refused(Exception):
    """The expression is not plain bounded arithmetic."""


def normalize_expression(expr: str) -> str:
    """Rewrite GSM8K notation as Python arithmetic.

    ``x``/``×`` → ``*``, ``÷`` → ``/``, ``−`` → ``-``, ``$`` dropped, ``1,000`` → ``1000``, ``05`` → ``5``.
    """
    text = expr.strip().replace("×", "*").replace("÷", "/").replace("−", "-").replace("$", "")
    text = _TIMES_X.sub("*", text)
    text = _THOUSANDS_COMMA.sub("", text)
    return _LEADING_ZEROS.sub("", text)


ALL_OPERATORS: frozenset[type[ast.operator]] = frozenset((*_BINARY_OPS, ast.Pow))
FOUR_OPERATIONS: frozenset[type[ast.operator]] = frozenset((ast.Add, ast.Sub, ast.Mult, ast.Div))


def evaluate_number(expr: str, variables: Mapping[str, Number] | None = None,
                    operators: frozenset[type[ast.operator]] = ALL_OPERATORS) -> Number | None:
    """Value of ``expr`` as an int or float, or None if it is not safe, bounded arithmetic.

    ``variables`` lets straight-line programs refer to earlier results by name; any other name is
    refused. ``operators`` narrows what is arithmetic (the failure analysis reads only + - * /).
    """
    text = normalize_expression(expr)
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        if any(isinstance(node, ast.BinOp) and type(node.op) not in operators for node in ast.walk(tree)):
            return None
        return _check(_eval(tree.body, variables or {}))
    except (_Refused, SyntaxError, ValueError, ArithmeticError, RecursionError, MemoryError):
        return None


def evaluate_expression(expr: str) -> str | None:
    """Result of ``expr`` formatted the way GSM8K writes it (``"24"``, ``"0.2"``), or None if refused."""
    value = evaluate_number(expr)
    return None if value is None else format_number(value)


def format_number(value: Number) -> str:
    """Integers without ``.0``; other floats rounded to ``DECIMALS`` places, trailing zeros stripped."""
    if isinstance(value, int):
        return str(value)
    rounded = round(value, DECIMALS)
    if rounded.is_integer():
        return str(int(rounded))
    return f"{rounded:.{DECIMALS}f}".rstrip("0").rstrip(".")


def _eval(node: ast.expr, variables: Mapping[str, Number]) -> Number:
    if isinstance(node, ast.Constant):
        # bool is an int subclass, but "True + 1" is not arithmetic a solution should contain.
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise _Refused
        return _check(node.value)
    if isinstance(node, ast.Name) and node.id in variables:
        return _check(variables[node.id])
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_eval(node.operand, variables))
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, variables), _eval(node.right, variables)
        if isinstance(node.op, ast.Pow):
            return _check(_power(left, right))
        if type(node.op) in _BINARY_OPS:
            return _check(_BINARY_OPS[type(node.op)](left, right))
    raise _Refused


def _power(base: Number, exponent: Number) -> Number:
    # Estimate the size before computing: the cost of the power is what a hostile input exploits.
    if base not in (0, 1, -1) and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise _Refused
    result = base**exponent
    if isinstance(result, complex):  # (-8) ** 0.5
        raise _Refused
    return result


def _check(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused
    if abs(value) > MAX_MAGNITUDE:
        raise _Refused
    return value
