"""The JSON policy: what a value must be to cross an edge of the system (HTTP, queue, store).

One rule for every edge (HTTP bodies, webhook and resume payloads, queue messages, a run's initial
context, node outputs and context writes before they are committed):

- finite numbers only: ``NaN`` and ``±Infinity`` (``1e999`` parses to infinity) are not JSON (RFC 8259)
  and Cosmos DB refuses them; integers within the signed 64-bit range;
- valid Unicode only: no lone surrogates (``"\\ud800"`` parses, but cannot be encoded as UTF-8);
- nesting depth at most :data:`MAX_DEPTH` arrays/objects;
- JSON types only: ``dict`` (string, number, boolean or null keys, as ``json.dumps`` accepts), ``list``
  or ``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``.

Sizes are limited where they are today (``FLOWCRAFT_MAX_REQUEST_BYTES`` for HTTP bodies, 64 KB for queue
messages). The walk is iterative, so a value nested far too deep is reported, never a ``RecursionError``.

:func:`sanitize` is the other half, for output: a copy of any value that is always renderable as JSON
(what the HTTP API falls back to if a stored value slipped past the policy, e.g. written by an older
version), so that reading a run can never fail on its data.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import FlowcraftError
from .protocols import NodeRecord

# Deep enough for any document a person or a program means to write; far below what Python's parser,
# pydantic's serializer (about 250) or JSON parsers in other languages can take.
MAX_DEPTH = 64
# Rendering allows more: a value stored under the policy gains a few levels inside a status item and a
# response (result.context.<key>), and nothing policy-conforming may ever be cut when it is shown.
RENDER_DEPTH = 2 * MAX_DEPTH
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
TRUNCATED = f"(not shown: nested deeper than {RENDER_DEPTH} levels)"

_SURROGATE = re.compile("[\ud800-\udfff]")
_Path = tuple[Any, Any] | None  # (parent path, key): a linked list, built only as deep as the walk goes


class JsonPolicyError(FlowcraftError, TypeError, ValueError):
    """A value breaks the JSON policy; the message says what, and where (a dotted path)."""


def violation(value: Any, *, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``value`` breaks the policy (with the path of the first offending part), or None."""
    stack: list[tuple[Any, int, _Path]] = [(value, 0, None)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _utf8_ok(item):
                return f"{_where(path)}a string holds a lone surrogate (invalid Unicode)"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                return f"{_where(path)}an integer is outside the 64-bit range"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{_where(path)}{item!r} is not a JSON number (numbers must be finite)"
        elif isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return f"{_where(path)}nested deeper than {max_depth} levels of arrays/objects"
            if isinstance(item, dict):
                for key, child in item.items():
                    problem = _key_problem(key)
                    if problem is not None:
                        return f"{_where((path, key) if isinstance(key, str) and _utf8_ok(key) else path)}{problem}"
                    stack.append((child, depth + 1, (path, key)))
            else:
                for index, child in enumerate(item):
                    stack.append((child, depth + 1, (path, index)))
        else:
            return f"{_where(path)}a value of type {type(item).__name__} is not JSON"
    return None


def check(value: Any, *, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """Return ``value`` if it conforms to the policy; raise JsonPolicyError naming ``what`` otherwise."""
    problem = violation(value, max_depth=max_depth)
    if problem is not None:
        raise JsonPolicyError(f"{what} is not acceptable JSON: {problem}")
    return value


def record_violation(record: NodeRecord) -> str | None:
    """Why a node's record cannot be committed (its output, action, context writes or dynamic nodes)."""
    for what, value in (("output", record.output), ("action", record.action),
                        ("dynamic nodes", record.dynamic_nodes), ("context deletes", record.deletes)):
        problem = violation(value)
        if problem is not None:
            return f"the node's {what} is not acceptable JSON: {problem}"
    for key, value in record.changes.items():
        problem = violation(key) or violation(value)
        if problem is not None:
            return f"the context value for {_safe(key)!r} is not acceptable JSON: {problem}"
    return None


def checked_record(record: NodeRecord) -> NodeRecord:
    """The record itself, or a failed record of the same execution saying why it broke the policy."""
    problem = record_violation(record)
    if problem is None:
        if record.error is not None and violation(record.error) is not None:
            # An error message quoting what the node raised (a lone surrogate, say) is ours to store.
            record.error = sanitize(record.error)
        return record
    return NodeRecord(node_id=record.node_id, iteration=record.iteration, status="failed",
                      error={"nodeId": record.node_id, "message": problem, "attempt": record.attempts},
                      attempts=record.attempts)


def sanitize(value: Any, *, max_depth: int = RENDER_DEPTH) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` always encodes as UTF-8.

    Lone surrogates become U+FFFD, non-finite numbers and out-of-range integers become null, keys become
    strings, other types their ``repr``, and containers deeper than ``max_depth`` a short note.
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, int, Any, Any]] = [(value, 0, root, 0)]
    while stack:
        item, depth, parent, slot = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                parent[slot] = TRUNCATED
            elif isinstance(item, dict):
                out: dict[str, Any] = {}
                parent[slot] = out
                for key, child in item.items():
                    clean = _clean_key(key)
                    out[clean] = None  # keeps the key order
                    stack.append((child, depth + 1, out, clean))
            else:
                items: list[Any] = [None] * len(item)
                parent[slot] = items
                for index, child in enumerate(item):
                    stack.append((child, depth + 1, items, index))
        else:
            parent[slot] = _clean_scalar(item)
    return root[0]


def _clean_scalar(item: Any) -> Any:
    if isinstance(item, str):
        return item if item.isascii() or _utf8_ok(item) else _safe(item)
    if isinstance(item, bool) or item is None:
        return item
    if isinstance(item, int):
        return item if MIN_INT <= item <= MAX_INT else None
    if isinstance(item, float):
        return item if math.isfinite(item) else None
    return _safe(_short_repr(item))


def _clean_key(key: Any) -> str:
    if isinstance(key, str):
        return _safe(key)
    return str(_clean_scalar(key)) if isinstance(key, int | float | bool) or key is None else _safe(_short_repr(key))


def _short_repr(item: Any, limit: int = 200) -> str:
    try:
        text = repr(item)
    except Exception:  # a hostile __repr__ must not break rendering either
        text = f"<{type(item).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _key_problem(key: Any) -> str | None:
    if isinstance(key, str):
        return None if key.isascii() or _utf8_ok(key) else "an object key holds a lone surrogate (invalid Unicode)"
    if isinstance(key, bool) or key is None or isinstance(key, int):
        return None if not isinstance(key, int) or MIN_INT <= key <= MAX_INT else "an object key is out of range"
    if isinstance(key, float):
        return None if math.isfinite(key) else "an object key is not a finite number"
    return f"an object key of type {type(key).__name__} is not JSON"


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safe(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def _where(path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) and not isinstance(key, bool) else _safe(str(key)))
    if not parts:
        return ""
    parts.reverse()
    if len(parts) > 8:  # a path 300 deep says no more than its ends and its length
        parts = [*parts[:4], f"<{len(parts) - 6} more>", *parts[-2:]]
    shown = ".".join(parts).replace(".[", "[")
    if len(shown) > 300:
        shown = shown[:150] + "..." + shown[-150:]
    return f"at {shown}: "
