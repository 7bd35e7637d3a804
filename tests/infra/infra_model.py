"""The Terraform configuration in infra/, parsed with python-hcl2, for the infra tests.

No Terraform binary or provider is needed. Two libraries install themselves as the `hcl2` module:
python-hcl2 (listed in requirements-dev.txt) and bc-python-hcl2 (checkov's fork, pulled in by checkov),
and whichever pip installs last wins. They differ in one way that matters here: the fork wraps every
attribute value in a one-element list (`{"name": ["x"]}` instead of `{"name": "x"}`). `attr()` below
reads both shapes; blocks are lists of dicts in both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = REPO_ROOT / "infra"

# True when the installed hcl2 wraps attribute values in a list (bc-python-hcl2).
WRAPS_ATTRIBUTES = hcl2.loads("a = 1\n")["a"] == [1]

_MISSING = object()
_REFERENCE = re.compile(r"\$\{(var|local)\.([A-Za-z0-9_]+)\}")


def normalize_expression(text: str) -> str:
    """An expression as written, minus whitespace and with one quote style.

    The two hcl2 variants reconstruct expressions differently (`f(a, b)` vs `f(a,b)`, "x" vs 'x');
    compare expressions through this. Not for string literals whose spaces matter.
    """
    return re.sub(r"\s+", "", text).replace("'", '"')


def attr(node: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """The value of attribute `key` of a parsed block (a resource body, a nested block, ...)."""
    if key not in node:
        if default is _MISSING:
            raise KeyError(f"attribute {key!r} not set (keys: {sorted(k for k in node if not k.startswith('__'))})")
        return default
    value = node[key]
    if WRAPS_ATTRIBUTES:
        assert isinstance(value, list) and len(value) == 1, f"unexpected shape for {key!r}: {value!r}"
        value = value[0]
    return value


def blocks(node: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """Every nested block `key` of a parsed block."""
    found = node.get(key, [])
    assert isinstance(found, list) and all(isinstance(b, dict) for b in found), f"{key!r} is not a block"
    return found


def block(node: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The single nested block `key` of a parsed block."""
    found = blocks(node, key)
    assert len(found) == 1, f"expected exactly one {key!r} block, found {len(found)}"
    return found[0]


@dataclass
class Terraform:
    """The top-level blocks of every .tf file in infra/, merged as Terraform merges a module."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    terraform_blocks: list[dict[str, Any]] = field(default_factory=list)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def resource(self, type_: str, name: str) -> dict[str, Any]:
        assert name in self.resources.get(type_, {}), f"resource {type_}.{name} is not declared in infra/"
        return self.resources[type_][name]

    def all_resources(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(t, n, body) for t, by_name in self.resources.items() for n, body in by_name.items()]

    def default(self, variable: str) -> Any:
        assert variable in self.variables, f"variable {variable!r} is not declared"
        return attr(self.variables[variable], "default", None)

    def resolve(self, value: Any, overrides: Mapping[str, Any] | None = None) -> Any:
        """Substitutes ${var.x} (its default) and ${local.x} (its expression, resolved in turn).

        Only plain references are replaced; function calls and resource attributes stay as written.
        `overrides` maps "var.x" / "local.x" to a value to use instead (e.g. a fixed random suffix).
        """
        overrides = overrides or {}
        if isinstance(value, list):
            return [self.resolve(v, overrides) for v in value]
        if not isinstance(value, str):
            return value

        def lookup(kind: str, name: str) -> Any:
            key = f"{kind}.{name}"
            if key in overrides:
                return overrides[key]
            if kind == "var":
                return self.default(name)
            assert name in self.locals, f"local {name!r} is not declared"
            return self.locals[name]

        for _ in range(20):
            whole = _REFERENCE.fullmatch(value)
            if whole:
                replaced = lookup(*whole.groups())
                if not isinstance(replaced, str):
                    return self.resolve(replaced, overrides)
                if replaced == value:
                    return value
                value = replaced
                continue
            replaced = _REFERENCE.sub(lambda m: str(lookup(*m.groups())), value)
            if replaced == value:
                return value
            value = replaced
        raise AssertionError(f"reference loop while resolving {value!r}")


def load_terraform(directory: Path = INFRA_DIR) -> Terraform:
    tf = Terraform()
    for path in sorted(directory.glob("*.tf")):
        text = path.read_text(encoding="utf-8")
        tf.texts[path.name] = text
        parsed = hcl2.loads(text)
        for entry in parsed.get("resource", []):
            for type_, by_name in entry.items():
                for name, body in by_name.items():
                    assert name not in tf.resources.get(type_, {}), f"{type_}.{name} declared twice"
                    tf.resources.setdefault(type_, {})[name] = body
        for entry in parsed.get("variable", []):
            tf.variables.update(entry)
        for entry in parsed.get("output", []):
            tf.outputs.update(entry)
        for entry in parsed.get("locals", []):
            for key in entry:
                if not key.startswith("__"):
                    assert key not in tf.locals, f"local {key!r} declared twice"
                    tf.locals[key] = attr(entry, key)
        tf.terraform_blocks.extend(parsed.get("terraform", []))
        for entry in parsed.get("provider", []):
            tf.providers.update(entry)
    return tf
