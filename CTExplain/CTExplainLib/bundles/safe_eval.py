"""A small evaluator for the few ``$expressions`` real MONAI bundles use to describe data.

A bundle's ``$expressions`` are Python that MONAI hands to ``eval``: a model file must never
run code, so CTExplain parses them with :mod:`ast` and computes only these idioms, nothing
else (no attribute access but the constants below, no calls but the builtins below, no
names but the bundle's references):

1. Literals and their arithmetic: numbers, strings, ``True``/``False``/``None``, lists,
   tuples and dicts of them; ``+ - * / // % **``, unary ``- + not``, comparisons,
   ``and``/``or`` and ``x if c else y``, e.g. ``$[1.5, 1.5, 1.5] if @cfg#highres else [3.0, 3.0, 3.0]``.
2. References (``@id``, already resolved to data) with indexing and slicing, e.g. ``$@strides[1:]``,
   and a whole reference written as an expression, e.g. ``$@transforms``.
3. Calls of pure builtins on such values: ``len``, ``int``, ``float``, ``bool``, ``str``,
   ``list``, ``tuple``, ``min``, ``max``, ``abs``, ``round``, ``sum``, e.g. ``$len(@spatial_size)``.
4. Named constants: data types (``$torch.float32``, ``$numpy.int16``, ``$np.float32``, given as
   the type's name, e.g. ``"float32"``) and MONAI's key names (``$monai.utils.CommonKeys.IMAGE``,
   given as ``"image"``).

Anything else (imports, other attributes or calls, lambdas, comprehensions) raises
:class:`UnsafeExpression`. Results are bounded (MAX_ITEMS) so that ``[0] * 10**9`` cannot
exhaust memory.
"""
from __future__ import annotations

import ast
import operator
from typing import Any, Callable, Dict, Mapping

REFS_NAME = "__local_refs"  # MONAI's name for resolved references in rewritten expressions
MAX_ITEMS = 100_000  # longest list or string an expression may build
MAX_EXPONENT = 64

DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16", "bool")
DTYPE_MODULES = ("torch", "numpy", "np")
COMMON_KEYS = ("IMAGE", "LABEL", "PRED", "LOSS", "METADATA")
COMMON_KEYS_PREFIXES = ("monai.utils.CommonKeys", "monai.utils.enums.CommonKeys", "CommonKeys")

BUILTINS: Dict[str, Callable[..., Any]] = {
    "len": len,
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "list": list,
    "tuple": tuple,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "sum": sum,
}
BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


class UnsafeExpression(ValueError):
    """An expression outside the safe idioms; the message says which part."""


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of an attribute chain on a plain name, or "" for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def _constant(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    if module in DTYPE_MODULES and name in DTYPES:
        return name
    if module in COMMON_KEYS_PREFIXES and name in COMMON_KEYS:
        return name.lower()  # the values of monai.utils.CommonKeys
    raise UnsafeExpression(f"'{dotted}' is not a constant CTExplain knows")


def _bounded(value: Any) -> Any:
    if isinstance(value, (list, tuple, str, dict)) and len(value) > MAX_ITEMS:
        raise UnsafeExpression(f"result longer than {MAX_ITEMS} items")
    return value


class _Evaluator:
    def __init__(self, refs: Mapping[str, Any]) -> None:
        self.refs = refs

    def __call__(self, node: ast.AST) -> Any:
        handler = getattr(self, f"_{type(node).__name__}", None)
        if handler is None:
            raise UnsafeExpression(f"{type(node).__name__} is not allowed")
        return handler(node)

    def _Expression(self, node: ast.Expression) -> Any:
        return self(node.body)

    def _Constant(self, node: ast.Constant) -> Any:
        return node.value

    def _List(self, node: ast.List) -> Any:
        return _bounded([self(e) for e in node.elts])

    def _Tuple(self, node: ast.Tuple) -> Any:
        return tuple(self(e) for e in node.elts)

    def _Dict(self, node: ast.Dict) -> Any:
        if any(k is None for k in node.keys):
            raise UnsafeExpression("** in a dict is not allowed")
        return {self(k): self(v) for k, v in zip(node.keys, node.values)}

    def _Name(self, node: ast.Name) -> Any:
        raise UnsafeExpression(f"name '{node.id}' is not allowed")

    def _Attribute(self, node: ast.Attribute) -> Any:
        dotted = _dotted(node)
        if not dotted:
            raise UnsafeExpression("attribute access is not allowed")
        return _constant(dotted)

    def _Subscript(self, node: ast.Subscript) -> Any:
        if isinstance(node.value, ast.Name) and node.value.id == REFS_NAME:
            key = self(node.slice)
            if key not in self.refs:
                raise UnsafeExpression(f"reference '@{key}' is unknown")
            return self.refs[key]
        container = self(node.value)
        if not isinstance(container, (list, tuple, str, dict)):
            raise UnsafeExpression(f"cannot index a {type(container).__name__}")
        return container[self(node.slice)]

    def _Index(self, node: Any) -> Any:  # Python 3.8 wraps subscripts in ast.Index
        return self(node.value)

    def _Slice(self, node: ast.Slice) -> Any:
        return slice(*(None if part is None else self(part) for part in (node.lower, node.upper, node.step)))

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = UNARY.get(type(node.op))
        if op is None:
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed")
        return op(self(node.operand))

    def _BinOp(self, node: ast.BinOp) -> Any:
        op = BINARY.get(type(node.op))
        if op is None:
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed")
        left, right = self(node.left), self(node.right)
        if isinstance(node.op, ast.Pow) and not (isinstance(right, (int, float)) and abs(right) <= MAX_EXPONENT):
            raise UnsafeExpression(f"exponent {right!r} is too large")
        if isinstance(node.op, ast.Mult):
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (list, tuple, str)) and isinstance(times, int) and len(seq) * times > MAX_ITEMS:
                    raise UnsafeExpression(f"result longer than {MAX_ITEMS} items")
        return _bounded(op(left, right))

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        is_and = isinstance(node.op, ast.And)
        value: Any = is_and
        for operand in node.values:
            value = self(operand)
            if bool(value) != is_and:
                return value
        return value

    def _Compare(self, node: ast.Compare) -> Any:
        left = self(node.left)
        for op_node, right_node in zip(node.ops, node.comparators):
            right = self(right_node)
            if not COMPARE[type(op_node)](left, right):
                return False
            left = right
        return True

    def _IfExp(self, node: ast.IfExp) -> Any:
        return self(node.body) if self(node.test) else self(node.orelse)

    def _Call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else _dotted(node.func)
        function = BUILTINS.get(name) if isinstance(node.func, ast.Name) else None
        if function is None:
            raise UnsafeExpression(f"call of '{name or 'an expression'}' is not allowed")
        if any(isinstance(a, ast.Starred) for a in node.args) or node.keywords:
            raise UnsafeExpression(f"call of '{name}' with * or keywords is not allowed")
        return _bounded(function(*(self(a) for a in node.args)))


def safe_eval(code: str, refs: Mapping[str, Any]) -> Any:
    """The value of expression ``code`` (without its ``$``), whose references were rewritten
    to ``__local_refs['id']`` with their resolved values in ``refs``; raises
    :class:`UnsafeExpression` for anything outside the idioms in this module's docstring."""
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError as exc:
        raise UnsafeExpression(f"not a Python expression ({exc.msg})") from exc
    try:
        return _Evaluator(refs)(tree)
    except UnsafeExpression:
        raise
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise UnsafeExpression(f"cannot be computed: {exc}") from exc
