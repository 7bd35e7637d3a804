"""The sample app's node implementations: the LLM nodes of Flowcraft's declarative example.

Every node reads its values from the run context through ``params.inputs`` and renders
``params.promptTemplate``; the completion comes from :func:`workflows.llm.call_llm`, which is the
offline rule-based stand-in (:mod:`workflows.fake_llm`) unless a real model is plugged in.

``params.inputs`` maps a template name to a source key or a list of source keys. For each name the
source keys are tried in order; for each key, the output of the node with that id
(``_outputs.<key>``) is used if present, else the context key itself; the first value found wins, and
a name with no value renders as ``""`` (the branch that would have produced it was not taken).
A stored ``None`` (JSON null) counts as no value, so the lookup moves on; Flowcraft's example would
render it instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from flowcraft_core.context import NodeContextView, output_key
from flowcraft_core.nodes import NodeContext, NodeFunction, NodeResult

from .llm import call_llm

DEFAULT_OUTPUT_KEY = "final_output"
DEFAULT_ACTION = "default"

_PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_ROUTER_STRIP = " \t\r\n'\"`."


def _source_keys(template_key: str, spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, list) and all(isinstance(key, str) for key in spec):
        return list(spec)
    raise TypeError(
        f"params.inputs.{template_key} must be a context key or a list of keys, not {type(spec).__name__}"
    )


async def _lookup(context: NodeContextView, source_key: str) -> Any:
    """The output of node ``source_key`` if it has one, else the context key itself, else None."""
    for key in (output_key(source_key), source_key):
        if await context.has(key):
            value = await context.get(key)
            if value is not None:
                return value
    return None


async def resolve_inputs(context: NodeContextView, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Resolve ``params.inputs`` against the context (node output first, then the key itself)."""
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"params.inputs must be a mapping of template names to keys, not {type(inputs).__name__}"
        )
    resolved: dict[str, Any] = {}
    for template_key, spec in inputs.items():
        value: Any = ""
        for source_key in _source_keys(template_key, spec):
            found = await _lookup(context, source_key)
            if found is not None:
                value = found
                break
        resolved[template_key] = value
    return resolved


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Replace each ``{{name}}`` with its value as text; placeholders with no value are left as written."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return _as_text(values[name]) if name in values else match.group(0)

    return _PLACEHOLDER_RE.sub(substitute, template)


async def render_prompt(ctx: NodeContext) -> str:
    """The node's prompt: ``params.promptTemplate`` rendered with its resolved ``params.inputs``."""
    template = ctx.params.get("promptTemplate", "")
    if not isinstance(template, str):
        raise TypeError(f"params.promptTemplate must be a string, not {type(template).__name__}")
    values = await resolve_inputs(ctx.context, ctx.params.get("inputs"))
    return render_template(template, values)


def _is_true(text: str) -> bool:
    return re.search(r"\btrue\b", text.lower()) is not None


async def llm_process(ctx: NodeContext) -> NodeResult:
    """Render the prompt and return the model's completion as the output."""
    prompt = await render_prompt(ctx)
    return NodeResult(output=await call_llm(prompt))


async def llm_condition(ctx: NodeContext) -> NodeResult:
    """Ask a yes/no question: action ``"true"`` when the answer says true, else ``"false"``."""
    result = await llm_process(ctx)
    answer = _as_text(result.output)
    return NodeResult(output=answer, action="true" if _is_true(answer) else "false")


async def llm_router(ctx: NodeContext) -> NodeResult:
    """Ask for an action code; the trimmed answer is both the action and the output."""
    result = await llm_process(ctx)
    code = _as_text(result.output).strip(_ROUTER_STRIP) or DEFAULT_ACTION
    return NodeResult(output=code, action=code)


async def output_node(ctx: NodeContext) -> NodeResult:
    """Render the template (no model call), store it under ``params.outputKey`` and return it."""
    key = ctx.params.get("outputKey") or DEFAULT_OUTPUT_KEY
    if not isinstance(key, str):
        raise TypeError(f"params.outputKey must be a string, not {type(key).__name__}")
    text = await render_prompt(ctx)
    await ctx.context.set(key, text)
    return NodeResult(output=text)


registry: dict[str, NodeFunction] = {
    "llm-process": llm_process,
    "llm-condition": llm_condition,
    "llm-router": llm_router,
    "output": output_node,
}
