"""The sample app: Flowcraft's four declarative use cases, with offline stand-ins for the LLM nodes.

The Functions app, the worker and the CLI load this module by name (``FLOWCRAFT_WORKFLOWS=workflows``)
and use three attributes:

- ``registry``: the node implementations by ``uses`` key (``llm-process``, ``llm-condition``,
  ``llm-router``, ``output``); ``subflow`` is built into the engine.
- ``blueprints``: every ``blueprints/<use-case>/<id>.json``, keyed by the file name (``"100"`` ...).
- ``use_cases``: each use case's entry blueprint and initial context, as in Flowcraft's example.

The JSON files are Flowcraft's fixtures, unchanged. Like Flowcraft's example loader, loading applies
the convergence rule (see :func:`apply_convergence_rule`).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import Any

from flowcraft_core.models import WorkflowBlueprint, load_blueprints
from flowcraft_core.nodes import NodeFunction

from .nodes import registry as _node_registry

BLUEPRINTS_DIR = Path(__file__).resolve().parent / "blueprints"


def apply_convergence_rule(blueprint: WorkflowBlueprint) -> list[str]:
    """Set ``joinStrategy: "any"`` on nodes whose several incoming edges all come from one node.

    Such a node is where a router's branches meet again; only one of them runs, so the node must run
    on the first arrival. This is the rule of Flowcraft's example loader. The node's ``config`` is
    changed in place; the ids of the changed nodes are returned.
    """
    predecessors: dict[str, list[str]] = defaultdict(list)
    for edge in blueprint.edges:
        predecessors[edge.target].append(edge.source)
    changed: list[str] = []
    for node in blueprint.nodes:
        sources = predecessors.get(node.id, [])
        if len(sources) > 1 and len(set(sources)) == 1:
            node.config.join_strategy = "any"
            changed.append(node.id)
    return changed


def _load(path: Path) -> dict[str, WorkflowBlueprint]:
    loaded = load_blueprints(path)
    for blueprint in loaded.values():
        apply_convergence_rule(blueprint)
    return loaded


registry: dict[str, NodeFunction] = dict(_node_registry)

blueprints: dict[str, WorkflowBlueprint] = _load(BLUEPRINTS_DIR)

use_cases: dict[str, dict[str, Any]] = {
    "1.blog-post": {
        "entryWorkflowId": "100",
        "initialContext": {
            "topic": "The rise of AI-powered workflow automation in modern software development.",
        },
    },
    "2.job-application": {
        "entryWorkflowId": "200",
        "initialContext": {
            "applicantName": "Jane Doe",
            "resume": (
                "Experienced developer with a background in TypeScript, Node.js, and building complex "
                "DAG workflow systems. Also proficient in React and SQL."
            ),
            "coverLetter": (
                "To Whom It May Concern, I am writing to express my interest in the Senior Developer "
                "position."
            ),
        },
    },
    "3.customer-review": {
        "entryWorkflowId": "300",
        "initialContext": {
            "initial_review": (
                "The new dashboard is a huge improvement, but I noticed that the export-to-PDF feature is "
                "really slow and sometimes crashes the app on large datasets. It would be great if you "
                "could look into this."
            ),
        },
    },
    "4.content-moderation": {
        "entryWorkflowId": "400",
        "initialContext": {
            "userId": "user-456",
            "userPost": (
                "Hi, I need help with my account. My email is test@example.com and my phone is 555-123-4567."
            ),
        },
    },
}


def initial_context(use_case: str) -> dict[str, Any]:
    """A fresh copy of a use case's initial context (KeyError names the known use cases)."""
    if use_case not in use_cases:
        raise KeyError(f"unknown use case {use_case!r}; known: {sorted(use_cases)}")
    context: dict[str, Any] = copy.deepcopy(use_cases[use_case]["initialContext"])
    return context


__all__ = [
    "BLUEPRINTS_DIR",
    "apply_convergence_rule",
    "blueprints",
    "initial_context",
    "registry",
    "use_cases",
]
