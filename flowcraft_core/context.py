"""The run context as a node sees it: a snapshot of the run plus the node's own buffered writes.

Writes are buffered and committed with the node's record in one store write, so that a node costs one
write whatever it sets, concurrent branches never overwrite each other's items, and a retried attempt
leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .json_policy import JsonPolicyError, violation

_DELETED = object()
OUTPUTS_PREFIX = "_outputs."
INPUTS_PREFIX = "_inputs."


def output_key(node_id: str) -> str:
    """The context key holding a node's output."""
    return OUTPUTS_PREFIX + node_id


def input_key(node_id: str) -> str:
    """The context key holding the input an edge transform computed for a node."""
    return INPUTS_PREFIX + node_id


def ensure_json(value: Any, *, what: str) -> Any:
    """Reject values the JSON policy refuses (see json_policy), with the key in the message."""
    problem = violation(value)
    if problem is not None:
        # A TypeError (JsonPolicyError is one) inside the node: the attempt fails with this reason.
        raise JsonPolicyError(f"{what} is not JSON-serializable: {problem}")
    return value


class NodeContextView:
    """Async key-value view over the run context; reads see the snapshot plus this node's writes."""

    def __init__(self, base: Mapping[str, Any]) -> None:
        self._base = base
        self._writes: dict[str, Any] = {}

    # Sync variants exist for sync (threaded) node functions, which cannot await.
    def get_sync(self, key: str, default: Any = None) -> Any:
        """Read a key, or default when absent."""
        if key in self._writes:
            value = self._writes[key]
            return default if value is _DELETED else value
        return self._base.get(key, default)

    def has_sync(self, key: str) -> bool:
        """True when the key is present."""
        if key in self._writes:
            return self._writes[key] is not _DELETED
        return key in self._base

    def set_sync(self, key: str, value: Any) -> None:
        """Write a key; the value must be JSON-serializable."""
        if not isinstance(key, str) or not key:
            raise TypeError("context keys must be non-empty strings")
        ensure_json(key, what="a context key")
        self._writes[key] = ensure_json(value, what=f"context value for {key!r}")

    def delete_sync(self, key: str) -> None:
        """Remove a key."""
        self._writes[key] = _DELETED

    def to_dict_sync(self) -> dict[str, Any]:
        """The whole context as a plain dict."""
        merged = dict(self._base)
        for key, value in self._writes.items():
            if value is _DELETED:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def lazy_dict(self) -> Mapping[str, Any]:
        """The whole context as a mapping that copies it only when first read (routing rarely does)."""
        return _LazyDict(self)

    async def get(self, key: str, default: Any = None) -> Any:
        """Read a key, or default when absent."""
        return self.get_sync(key, default)

    async def has(self, key: str) -> bool:
        """True when the key is present."""
        return self.has_sync(key)

    async def set(self, key: str, value: Any) -> None:
        """Write a key; the value must be JSON-serializable."""
        self.set_sync(key, value)

    async def delete(self, key: str) -> None:
        """Remove a key."""
        self.delete_sync(key)

    async def to_dict(self) -> dict[str, Any]:
        """The whole context as a plain dict."""
        return self.to_dict_sync()

    to_json = to_dict

    def keys(self) -> Iterator[str]:
        """Every key currently visible."""
        return iter(self.to_dict_sync())

    def changes(self) -> tuple[dict[str, Any], list[str]]:
        """This node's writes as (set, deleted keys), ready to be committed."""
        sets = {k: v for k, v in self._writes.items() if v is not _DELETED}
        deletes = [k for k, v in self._writes.items() if v is _DELETED]
        return sets, deletes

    def discard_changes(self) -> None:
        """Forget buffered writes (a failed attempt must not leak into the next one)."""
        self._writes.clear()


class _LazyDict(Mapping[str, Any]):
    """A view's to_dict_sync(), built on first access: the copy is O(context) and most edges never look."""

    def __init__(self, view: NodeContextView) -> None:
        self._view = view
        self._data: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._view.to_dict_sync()
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


def nested_view(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The flat context with dotted keys also reachable as nested dicts, for expressions.

    Flowcraft stores ``_outputs.a`` as one flat key; expressions written against it say
    ``context._outputs.a``, so both spellings must resolve, and so must the bare node id ``a``.
    """
    view: dict[str, Any] = dict(flat)
    for key, value in flat.items():
        if "." not in key:
            continue
        parts = key.split(".")
        cursor = view
        for part in parts[:-1]:
            nxt = cursor.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                cursor[part] = nxt
            cursor = nxt
        cursor.setdefault(parts[-1], value)
    # Flowcraft makes a node's output readable under its bare id too (`a.ok` as well as
    # `_outputs.a.ok`); an alias here instead of a second stored copy. As in Flowcraft, where the output
    # is written under the bare id once the node ran, it wins over a context key of the same name.
    for key, value in flat.items():
        if key.startswith(OUTPUTS_PREFIX):
            view[key[len(OUTPUTS_PREFIX):]] = value
    return view
