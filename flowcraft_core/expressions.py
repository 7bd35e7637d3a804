"""Safe evaluation of edge ``condition`` and ``transform`` expressions.

Expressions come from Flowcraft (TypeScript) blueprints, so the language is Python expression syntax
with JavaScript spellings and lookup semantics layered on top. They are parsed with :mod:`ast`, checked
against a whitelist and interpreted by a hardened :class:`simpleeval.SimpleEval`; nothing is ever
compiled to bytecode or handed to ``eval``/``exec``.

Allowed:

- Names from the scope (``result``, ``context``, ``input``); an unknown name is ``None``.
- Property paths over dicts and lists: ``result.output.score``, ``input.items[0]``,
  ``context["some.key"]``, ``items[-1]``, ``items[1:3]``, optional chaining ``a?.b?.[0]``.
  A missing key, an index out of range or a property of ``None`` is ``None`` (JavaScript's
  ``undefined``); ``.length`` of a string or list is its length. Only mapping keys, sequence indexes
  and ``.length`` are reachable: Python attributes of objects never are.
- Literals: numbers, strings in ``'`` or ``"``, ``true``/``false``/``null``/``undefined`` and
  ``True``/``False``/``None``, lists ``[1, 2]``, tuples (evaluated as lists) and objects
  ``{"a": 1}``; as in JavaScript a bare name used as an object key is the key itself (``{a: 1}``).
- Operators: ``+ - * / // % **``, comparisons (chained too), ``in``/``not in``, ``is``/``is not``,
  ``and``/``or``/``not``, ``a if c else b``, and the JavaScript spellings ``===``, ``!==``, ``&&``,
  ``||``, ``!`` (with JavaScript's precedence: ``!a == b`` is ``(not a) == b``).
  Ordering comparisons between incomparable values (``None > 0.5``, ``"a" < 1``) are ``False``;
  ``x in y`` where ``y`` is not a container is ``False``. ``+`` of a string and a scalar
  concatenates with JavaScript's spelling (``"n=" + null`` is ``"n=null"``).
- Calls of a small whitelist only: ``len str int float bool abs min max round`` and the aliases
  ``String Number Boolean``; the string methods ``lower upper strip`` (``toLowerCase toUpperCase
  trim``), ``startswith endswith`` (``startsWith endsWith``) and ``includes`` (strings and lists).
  Keyword and star arguments are not.

Forbidden (``ExpressionError``, before anything runs): any other call, any name or property containing
``__``, lambdas, comprehensions, f-strings, walrus, star-unpacking, bitwise operators (``~`` in the
source, ``& | ^ << >>``), JavaScript's ternary ``?:``, ``??`` and template literals, expressions longer
than ``max_length``, with more than ``max_nodes`` AST nodes or nested deeper than
:data:`MAX_NESTING`. At run time powers are bounded by ``max_power`` (``9**9**9`` is refused),
strings and lists built by ``+``/``*`` by ``max_string_length``, and results must be JSON-like
(``None``, bool, int, finite float, str, list, dict with string keys); tuples become lists.
"""

from __future__ import annotations

import ast
import json
import keyword
import math
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from simpleeval import SimpleEval

from .errors import ExpressionError

__all__ = ["MAX_NESTING", "Evaluator", "SafeEvaluator"]

MAX_NESTING = 32
"""Deepest bracket nesting (and half the AST depth) accepted, to keep all recursion shallow."""

_MAX_AST_DEPTH = 2 * MAX_NESTING
# Integers may grow by multiplication even with powers bounded; past this they stop being JSON
# numbers anyone can use and start costing real CPU.
_MAX_INT_BITS = 20_000
_MAX_RESULT_DEPTH = 200
_CACHE_SIZE = 512
_PREVIEW = 80
# Python's own messages may quote operands (a 100 kB string, say); keep errors readable.
_MAX_REASON = 300

# catch_warnings swaps the process-wide filter list; two threads interleaving it can leave
# warnings silenced for good, so every use here is serialized.
_WARNINGS_LOCK = threading.Lock()
# SimpleEval keeps per-evaluation state on the instance and costs ~30us to build, so each thread
# reuses one interpreter; evaluation never calls back into user code, so it is never re-entered.
_THREAD = threading.local()

_LITERAL_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None, "undefined": None}

_NUMBER_RE = re.compile(r"(?:\d|\.\d)(?:[eE][+-]|[\w.])*")
_IDENT_RE = re.compile(r"[^\W\d]\w*")

# Node types that carry no work of their own; they are not counted against max_nodes.
_MARKER_NODES = (ast.Expression, ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)

_ALLOWED_NODES: frozenset[type[ast.AST]] = frozenset(
    {
        ast.Expression,
        ast.Constant,
        ast.Name,
        ast.Attribute,
        ast.Subscript,
        ast.Slice,
        ast.UnaryOp,
        ast.BinOp,
        ast.BoolOp,
        ast.Compare,
        ast.IfExp,
        ast.Call,
        ast.List,
        ast.Tuple,
        ast.Dict,
        ast.Load,
        ast.And,
        ast.Or,
        ast.Not,
        ast.USub,
        ast.UAdd,
        # ``~`` only ever comes from JavaScript's ``!``: a literal ``~`` is refused by the tokenizer.
        ast.Invert,
        ast.Add,
        ast.Sub,
        ast.Mult,
        ast.Div,
        ast.FloorDiv,
        ast.Mod,
        ast.Pow,
        ast.Eq,
        ast.NotEq,
        ast.Lt,
        ast.LtE,
        ast.Gt,
        ast.GtE,
        ast.In,
        ast.NotIn,
        ast.Is,
        ast.IsNot,
    }
)

_NODE_HINTS: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Starred: "star-unpacking is not allowed",
    ast.Set: "set literals are not allowed",
    ast.BitAnd: "bitwise operators are not allowed",
    ast.BitOr: "bitwise operators are not allowed (use || or 'or')",
    ast.BitXor: "bitwise operators are not allowed",
    ast.LShift: "bitwise operators are not allowed",
    ast.RShift: "bitwise operators are not allowed",
    ast.MatMult: "the @ operator is not allowed",
}


def _js_str(value: Any) -> str:
    """Stringify a scalar the way JavaScript's String() does."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        # JavaScript prints whole floats without ".0" until it switches to exponent notation.
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TypeError(f"cannot convert {type(value).__name__} to a string")


def _to_number(value: Any) -> int | float:
    """JavaScript's Number() for the values expressions meet, without NaN: bad input raises."""
    if value is None:
        return 0
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        try:
            return int(text)
        except ValueError:
            return float(text)
    raise TypeError(f"cannot convert {type(value).__name__} to a number")


def _to_str(value: Any) -> str:
    return _js_str(value)


def _to_int(value: Any) -> int:
    if isinstance(value, (bool, int, float, str)):
        return int(value)
    raise TypeError(f"int() of {type(value).__name__} is not supported")


def _to_float(value: Any) -> float:
    if isinstance(value, (bool, int, float, str)):
        return float(value)
    raise TypeError(f"float() of {type(value).__name__} is not supported")


def _to_bool(value: Any) -> bool:
    return bool(value)


def _abs(value: Any) -> int | float:
    if isinstance(value, (int, float)):
        return abs(value)
    raise TypeError(f"abs() of {type(value).__name__} is not supported")


def _round(value: Any, digits: Any = None) -> int | float:
    if not isinstance(value, (int, float)):
        raise TypeError(f"round() of {type(value).__name__} is not supported")
    if digits is None:
        return round(value)
    if not isinstance(digits, int) or abs(digits) > 100:
        raise ValueError("round() digits must be an integer between -100 and 100")
    return round(value, digits)


def _extreme(pick: Callable[..., Any]) -> Callable[..., Any]:
    def apply(*args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], (list, tuple, str)):
            if not args[0]:
                raise ValueError("min()/max() of an empty list")
            return pick(args[0])
        if not args:
            raise TypeError("min()/max() needs at least one argument")
        return pick(args)

    return apply


def _len(value: Any) -> int:
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value)
    raise TypeError(f"len() of {type(value).__name__} is not supported")


# name -> (implementation, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "len": (_len, 1, 1),
    "str": (_to_str, 1, 1),
    "String": (_to_str, 1, 1),
    "int": (_to_int, 1, 1),
    "float": (_to_float, 1, 1),
    "Number": (_to_number, 1, 1),
    "bool": (_to_bool, 1, 1),
    "Boolean": (_to_bool, 1, 1),
    "abs": (_abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (_extreme(min), 1, 64),
    "max": (_extreme(max), 1, 64),
}

_STRING_METHODS: dict[str, str] = {
    "lower": "lower",
    "toLowerCase": "lower",
    "upper": "upper",
    "toUpperCase": "upper",
    "strip": "strip",
    "trim": "strip",
    "startswith": "startswith",
    "startsWith": "startswith",
    "endswith": "endswith",
    "endsWith": "endswith",
    "includes": "includes",
}


def _preview(expression: str) -> str:
    return expression if len(expression) <= _PREVIEW else expression[:_PREVIEW] + "..."


def _size(value: Any, limit: int) -> int:
    """Approximate size of a value (characters of strings, one per scalar or element), stopping past limit."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += max(1, len(item))
        elif isinstance(item, Mapping):
            total += 1
            for key, sub in item.items():
                total += len(key) if isinstance(key, str) else 1
                stack.append(sub)
                if total > limit:
                    break
        elif isinstance(item, (list, tuple)):
            total += 1 + len(item)
            if total <= limit:
                stack.extend(item)
        else:
            total += 1
    return total


def _translate(expression: str) -> str:
    """Rewrite JavaScript spellings into Python token by token, leaving string literals untouched."""
    out: list[str] = []
    depth = 0
    i = 0
    n = len(expression)

    def member(at: int) -> int:
        # A Python keyword after a dot (``result.output.class``) cannot be an attribute in Python,
        # but is a valid JavaScript property name: make it a subscript.
        m = _IDENT_RE.match(expression, at)
        if m and keyword.iskeyword(m.group()):
            out.append(f'["{m.group()}"]')
            return m.end()
        out.append(".")
        return at

    while i < n:
        c = expression[i]
        if c in "'\"":
            j = i + 1
            while j < n and expression[j] != c:
                j += 2 if expression[j] == "\\" else 1
            if j >= n:
                raise ExpressionError(f"unterminated string literal in {_preview(expression)!r}")
            out.append(expression[i : j + 1])
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expression[i + 1].isdigit()):
            m = _NUMBER_RE.match(expression, i)
            assert m is not None  # the branch condition guarantees a digit here
            out.append(m.group())
            i = m.end()
        elif c.isalpha() or c == "_":
            m = _IDENT_RE.match(expression, i)
            word = m.group() if m else c
            out.append(word)
            i += len(word)
        elif expression.startswith("===", i):
            out.append("==")
            i += 3
        elif expression.startswith("!==", i):
            out.append("!=")
            i += 3
        elif expression.startswith("!=", i):
            out.append("!=")
            i += 2
        elif c == "!":
            # ``~`` has the precedence of JavaScript's ``!`` (tighter than comparisons and ``&&``),
            # which Python's ``not`` has not; the interpreter reads Invert as logical not.
            out.append("~")
            i += 1
        elif expression.startswith("&&", i):
            out.append(" and ")
            i += 2
        elif expression.startswith("||", i):
            out.append(" or ")
            i += 2
        elif expression.startswith("?.", i) and not (i + 2 < n and expression[i + 2].isdigit()):
            # Lookups are already null-safe, so optional chaining is plain access.
            i += 2
            if i < n and expression[i] in "[(":
                continue
            i = member(i)
        elif expression.startswith("??", i):
            raise ExpressionError(
                f"'??' is not supported in {_preview(expression)!r}; write 'a if a is not None else b'"
            )
        elif c == "?":
            raise ExpressionError(
                f"the ternary 'c ? a : b' is not supported in {_preview(expression)!r}; write 'a if c else b'"
            )
        elif c == "`":
            raise ExpressionError(f"template literals are not supported in {_preview(expression)!r}")
        elif c == "~":
            raise ExpressionError(f"bitwise operators are not allowed in {_preview(expression)!r}")
        elif c == "#":
            raise ExpressionError(f"comments are not allowed in {_preview(expression)!r}")
        elif c == ".":
            i = member(i + 1)
        elif c in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise ExpressionError(
                    f"expression {_preview(expression)!r} is nested deeper than {MAX_NESTING} brackets"
                )
            out.append(c)
            i += 1
        elif c in ")]}":
            depth -= 1
            out.append(c)
            i += 1
        elif c in "\r\n\t\f\v":
            # JavaScript treats line breaks as whitespace; Python's eval mode would not.
            out.append(" ")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


@runtime_checkable
class Evaluator(Protocol):
    """Evaluates edge conditions and transforms; the engine accepts any implementation."""

    def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
        """The value of expression over scope."""
        ...


class SafeEvaluator:
    """The default evaluator: a whitelisted, size-bounded interpreter over JSON-like scopes."""

    def __init__(
        self,
        *,
        max_length: int = 1000,
        max_string_length: int = 100_000,
        max_power: int = 1000,
        max_nodes: int = 200,
    ) -> None:
        """Set the limits every expression must respect."""
        self.max_length = max_length
        self.max_string_length = max_string_length
        self.max_power = max_power
        self.max_nodes = max_nodes
        self._cache: dict[str, ast.expr] = {}

    def check(self, expression: str) -> None:
        """Parse and statically vet expression without evaluating it; raise ExpressionError if unsafe."""
        self._compile(expression)

    def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
        """The JSON-like value of expression over scope; raise ExpressionError on any problem."""
        tree = self._compile(expression)
        interpreter = _Interpreter.for_this_thread()
        interpreter.limits = self
        interpreter.scope = scope
        try:
            value = interpreter.eval(expression, previously_parsed=tree)
        except Exception as exc:  # every failure of a user expression becomes one error type
            reason = (str(exc) or type(exc).__name__)[:_MAX_REASON]
            raise ExpressionError(f"cannot evaluate {_preview(expression)!r}: {reason}") from exc
        finally:
            # Do not keep a finished run's context alive through the thread-local interpreter.
            interpreter.scope = {}
        return _to_json_like(value, expression)

    def _compile(self, expression: str) -> ast.expr:
        cached = self._cache.get(expression) if isinstance(expression, str) else None
        if cached is not None:
            return cached
        tree = self._parse(expression)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[expression] = tree
        return tree

    def _parse(self, expression: str) -> ast.expr:
        if not isinstance(expression, str):
            raise ExpressionError(f"an expression must be a string, not {type(expression).__name__}")
        if len(expression) > self.max_length:
            raise ExpressionError(f"expression is {len(expression)} characters long; the limit is {self.max_length}")
        if not expression.strip():
            raise ExpressionError("expression is empty")
        source = _translate(expression).strip()
        try:
            with _WARNINGS_LOCK, warnings.catch_warnings():
                # Python-only lint such as "'is' with a literal" must not reach the engine's logs.
                warnings.simplefilter("ignore")
                tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"invalid expression {_preview(expression)!r}: {exc.msg}") from None
        except (ValueError, RecursionError, MemoryError) as exc:
            raise ExpressionError(f"invalid expression {_preview(expression)!r}: {exc}") from None
        self._vet(tree, expression)
        return tree.body

    def _vet(self, tree: ast.Expression, expression: str) -> None:
        def refuse(reason: str) -> ExpressionError:
            return ExpressionError(f"unsafe expression {_preview(expression)!r}: {reason}")

        count = 0
        stack: list[tuple[ast.AST, int]] = [(tree, 0)]
        while stack:
            node, depth = stack.pop()
            kind = type(node)
            if kind not in _ALLOWED_NODES:
                raise refuse(_NODE_HINTS.get(kind, f"{kind.__name__} is not allowed"))
            if not isinstance(node, _MARKER_NODES):
                count += 1
                if count > self.max_nodes:
                    raise refuse(f"more than {self.max_nodes} syntax nodes")
            if depth > _MAX_AST_DEPTH:
                raise refuse(f"nested deeper than {_MAX_AST_DEPTH} levels")
            if isinstance(node, ast.Name) and "__" in node.id:
                raise refuse(f"names containing '__' are not allowed ({node.id})")
            elif isinstance(node, ast.Attribute) and "__" in node.attr:
                raise refuse(f"properties containing '__' are not allowed (.{node.attr})")
            elif isinstance(node, ast.Constant):
                value = node.value
                if value is not None and not isinstance(value, (bool, int, float, str)):
                    raise refuse(f"{type(value).__name__} literals are not allowed")
                if isinstance(value, str) and len(value) > self.max_string_length:
                    raise refuse(f"string literal longer than {self.max_string_length} characters")
            elif isinstance(node, ast.Dict) and any(key is None for key in node.keys):
                raise refuse("'**' unpacking is not allowed")
            elif isinstance(node, ast.Call):
                self._vet_call(node, refuse)
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))

    @staticmethod
    def _vet_call(node: ast.Call, refuse: Callable[[str], ExpressionError]) -> None:
        allowed = ", ".join([*_FUNCTIONS, *(f".{m}()" for m in _STRING_METHODS)])
        if node.keywords:
            raise refuse("keyword arguments are not allowed")
        func = node.func
        if isinstance(func, ast.Name):
            if "__" in func.id:
                raise refuse(f"names containing '__' are not allowed ({func.id})")
            if func.id not in _FUNCTIONS:
                raise refuse(f"calling {func.id!r} is not allowed; only {allowed}")
            _, lowest, highest = _FUNCTIONS[func.id]
            if not lowest <= len(node.args) <= highest:
                raise refuse(f"{func.id}() takes {lowest}..{highest} arguments, got {len(node.args)}")
        elif isinstance(func, ast.Attribute):
            if "__" in func.attr:
                raise refuse(f"properties containing '__' are not allowed (.{func.attr})")
            if func.attr not in _STRING_METHODS:
                raise refuse(f"calling .{func.attr}() is not allowed; only {allowed}")
            wanted = 0 if _STRING_METHODS[func.attr] in {"lower", "upper", "strip"} else 1
            if len(node.args) != wanted:
                raise refuse(f".{func.attr}() takes {wanted} argument(s), got {len(node.args)}")
        else:
            raise refuse("only named functions and string methods can be called")


class _Interpreter(SimpleEval):  # type: ignore[misc]  # simpleeval ships no type hints
    """SimpleEval with a node whitelist, JavaScript lookups and per-evaluator limits.

    ``limits`` and ``scope`` are set by :meth:`SafeEvaluator.evaluate` before each evaluation.
    """

    @classmethod
    def for_this_thread(cls) -> _Interpreter:
        """The calling thread's interpreter, built on first use."""
        interpreter: _Interpreter | None = getattr(_THREAD, "interpreter", None)
        if interpreter is None:
            # SimpleEval.__init__ uses catch_warnings itself.
            with _WARNINGS_LOCK:
                interpreter = cls()
            _THREAD.interpreter = interpreter
        return interpreter

    def __init__(self) -> None:
        self.limits = SafeEvaluator()
        self.scope: Mapping[str, Any] = {}
        operators: dict[type[ast.AST], Callable[..., Any]] = {
            ast.Add: self._add,
            ast.Sub: _numeric(lambda a, b: a - b),
            ast.Mult: self._mult,
            ast.Div: _numeric(lambda a, b: a / b),
            ast.FloorDiv: _numeric(lambda a, b: a // b),
            ast.Mod: _numeric(lambda a, b: a % b),
            ast.Pow: self._power,
            ast.USub: _numeric(lambda a: -a),
            ast.UAdd: _numeric(lambda a: +a),
            ast.Not: lambda a: not a,
            ast.Invert: lambda a: not a,
            ast.Eq: lambda a, b: a == b,
            ast.NotEq: lambda a, b: a != b,
            ast.Lt: _ordered(lambda a, b: a < b),
            ast.LtE: _ordered(lambda a, b: a <= b),
            ast.Gt: _ordered(lambda a, b: a > b),
            ast.GtE: _ordered(lambda a, b: a >= b),
            ast.In: _contains,
            ast.NotIn: lambda a, b: not _contains(a, b),
            ast.Is: lambda a, b: a is b,
            ast.IsNot: lambda a, b: a is not b,
        }
        super().__init__(operators=operators, functions={}, names={})
        # Replace simpleeval's table wholesale so that no handler we did not review is reachable.
        self.nodes = {
            ast.Constant: self._eval_constant,
            ast.Name: self._eval_name,
            ast.Attribute: self._eval_attribute,
            ast.Subscript: self._eval_subscript,
            ast.Slice: self._eval_slice,
            ast.UnaryOp: self._eval_unaryop,
            ast.BinOp: self._eval_binop,
            ast.BoolOp: self._eval_boolop,
            ast.Compare: self._eval_compare,
            ast.IfExp: self._eval_ifexp,
            ast.Call: self._eval_call,
            ast.List: self._eval_list,
            ast.Tuple: self._eval_list,
            ast.Dict: self._eval_dict,
        }

    def _check_disallowed_items(self, item: Any) -> None:
        # simpleeval walks every intermediate container recursively, which costs O(context size)
        # per lookup; values here only come from the scope and our own operators, and nothing we
        # return is ever called, so refusing callables at the top is enough.
        if callable(item):
            raise ExpressionError("functions and objects cannot be used as values")

    def _eval_constant(self, node: ast.Constant) -> Any:
        return node.value

    def _eval_name(self, node: ast.Name) -> Any:
        if node.id in _LITERAL_NAMES:
            return _LITERAL_NAMES[node.id]
        return self.scope.get(node.id)

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        return _lookup(self._eval(node.value), node.attr)

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        container = self._eval(node.value)
        key = self._eval(node.slice)
        if isinstance(key, slice):
            for bound in (key.start, key.stop, key.step):
                if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)):
                    raise TypeError("slice bounds must be integers")
            if isinstance(container, (str, list, tuple)):
                return container[key]
            return None
        return _lookup(container, key)

    def _eval_list(self, node: ast.List | ast.Tuple) -> list[Any]:
        return [self._eval(item) for item in node.elts]

    def _eval_dict(self, node: ast.Dict) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            # A bare name as key means the name itself, as in a JavaScript object literal.
            if isinstance(key_node, ast.Name):
                key: Any = key_node.id
            else:
                key = self._eval(key_node)
            if isinstance(key, bool) or not isinstance(key, (str, int, float)):
                raise TypeError(f"object keys must be strings or numbers, not {type(key).__name__}")
            result[key if isinstance(key, str) else _js_str(key)] = self._eval(value_node)
        return result

    def _eval_call(self, node: ast.Call) -> Any:
        args = [self._eval(arg) for arg in node.args]
        func = node.func
        if isinstance(func, ast.Name) and func.id in _FUNCTIONS:
            return _FUNCTIONS[func.id][0](*args)
        if isinstance(func, ast.Attribute) and func.attr in _STRING_METHODS:
            return _call_method(self._eval(func.value), func.attr, args)
        # The static check makes this unreachable; refuse anyway should the two ever drift apart.
        raise ExpressionError("this call is not allowed")

    def _add(self, a: Any, b: Any) -> Any:
        if isinstance(a, str) or isinstance(b, str):
            text = (a if isinstance(a, str) else _js_str(a)) + (b if isinstance(b, str) else _js_str(b))
            self._bound(len(text))
            return text
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            limit = self.limits.max_string_length
            self._bound(_size(a, limit) + _size(b, limit))
            return [*a, *b]
        return _numeric(lambda x, y: x + y)(a, b)

    def _mult(self, a: Any, b: Any) -> Any:
        if isinstance(b, (str, list, tuple)):
            a, b = b, a
        if isinstance(a, (str, list, tuple)):
            if not isinstance(b, int):
                raise TypeError(f"cannot repeat a {type(a).__name__} {type(b).__name__} times")
            if b > 0:
                size = len(a) if isinstance(a, str) else _size(a, self.limits.max_string_length)
                self._bound(size * b)
            return a * b if isinstance(a, str) else list(a) * b
        result = _numeric(lambda x, y: x * y)(a, b)
        if isinstance(result, int) and result.bit_length() > _MAX_INT_BITS:
            raise ExpressionError(f"the product is larger than {_MAX_INT_BITS} bits")
        return result

    def _power(self, a: Any, b: Any) -> Any:
        _require_numbers(a, b)
        if abs(a) > self.limits.max_power or abs(b) > self.limits.max_power:
            raise ExpressionError(
                f"{_number_text(a)} ** {_number_text(b)} is refused: "
                f"base and exponent are limited to {self.limits.max_power}"
            )
        result = a**b
        if isinstance(result, complex):
            raise ValueError(f"{_number_text(a)} ** {_number_text(b)} is not a real number")
        return result

    def _bound(self, size: int) -> None:
        if size > self.limits.max_string_length:
            raise ExpressionError(
                f"the result would be longer than max_string_length ({self.limits.max_string_length})"
            )


def _require_numbers(*values: Any) -> None:
    for value in values:
        if not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {_type_name(value)}")


def _number_text(value: int | float) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<{value.bit_length()}-bit integer>"
    return repr(value)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _numeric(operation: Callable[..., Any]) -> Callable[..., Any]:
    """Restrict an arithmetic operator to numbers, so that e.g. '%' never formats strings."""

    def apply(*values: Any) -> Any:
        _require_numbers(*values)
        return operation(*values)

    return apply


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """An ordering comparison that is False, as in JavaScript, when the operands do not compare."""

    def apply(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        try:
            return bool(compare(a, b))
        except TypeError:
            return False

    return apply


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, (Mapping, list, tuple)):
        try:
            return item in container
        except TypeError:  # an unhashable key tested against a mapping
            return False
    return False


def _lookup(container: Any, key: Any) -> Any:
    """JavaScript-style property access: mapping keys, sequence indexes and .length, else None."""
    if isinstance(container, Mapping):
        try:
            if key in container:
                return container[key]
        except TypeError:
            return None
        if isinstance(key, int) and not isinstance(key, bool):
            return container.get(str(key))
        return None
    if isinstance(container, (str, list, tuple)):
        if key == "length" and isinstance(key, str):
            return len(container)
        if isinstance(key, int) and not isinstance(key, bool) and -len(container) <= key < len(container):
            return container[key]
    return None


def _call_method(receiver: Any, name: str, args: Sequence[Any]) -> Any:
    if receiver is None:
        # Consistent with property access on None: the call short-circuits to undefined.
        return None
    method = _STRING_METHODS[name]
    if method == "includes" and isinstance(receiver, (list, tuple)):
        return args[0] in receiver
    if not isinstance(receiver, str):
        raise TypeError(f".{name}() is not available on {_type_name(receiver)}")
    if method in {"lower", "upper", "strip"}:
        result: str = getattr(str, method)(receiver)
        return result
    (needle,) = args
    if not isinstance(needle, str):
        raise TypeError(f".{name}() expects a string argument, got {_type_name(needle)}")
    if method == "startswith":
        return receiver.startswith(needle)
    if method == "endswith":
        return receiver.endswith(needle)
    return needle in receiver


def _to_json_like(value: Any, expression: str, depth: int = 0) -> Any:
    """A detached, JSON-serializable copy of an evaluation result."""
    if depth > _MAX_RESULT_DEPTH:
        raise ExpressionError(f"the result of {_preview(expression)!r} is nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            raise ExpressionError(f"the result of {_preview(expression)!r} is too large a number")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"the result of {_preview(expression)!r} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json_like(item, expression, depth + 1) for item in value]
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                if key is not None and not isinstance(key, (bool, int, float)):
                    raise ExpressionError(f"the result of {_preview(expression)!r} has a non-string key")
                key = json.dumps(key)
            result[key] = _to_json_like(item, expression, depth + 1)
        return result
    raise ExpressionError(f"the result of {_preview(expression)!r} is a {type(value).__name__}, not a JSON-like value")
