"""flowcraft-azure: Flowcraft-style declarative workflows in Python, in process or on Azure Functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import NodeContextView
from .engine import Engine, EngineOptions, JobOutcome
from .errors import (
    BlueprintError,
    ExpressionError,
    FlowcraftError,
    InvalidJobError,
    NodeExecutionError,
    RunStateError,
    UnknownRunError,
    WorkflowCancelled,
)
from .events import CollectingEventBus, EventBus, LoggingEventBus, Middleware
from .models import (
    BlueprintMetadata,
    EdgeDefinition,
    NodeConfig,
    NodeDefinition,
    WorkflowBlueprint,
    load_blueprints,
    parse_blueprint,
)
from .nodes import BaseNode, CancelSignal, NodeContext, NodeResult
from .runtime import FlowRuntime, WorkflowResult

if TYPE_CHECKING:
    from .analysis import BlueprintAnalysis, analyze_blueprint, generate_mermaid
    from .azure.adapter import AzureQueueAdapter
    from .azure.cosmos import CosmosDbContext
    from .azure.reconciler import ReconciliationStats, create_azure_reconciler
    from .azure.redis_store import RedisCoordinationStore
    from .lint import LintIssue, lint_blueprint, validate_blueprint

# Azure and analysis names load on first use so that `import flowcraft_core` stays cheap and works
# without the Azure SDKs' import cost for in-process users.
_LAZY = {
    "analyze_blueprint": ".analysis", "generate_mermaid": ".analysis", "BlueprintAnalysis": ".analysis",
    "lint_blueprint": ".lint", "validate_blueprint": ".lint", "LintIssue": ".lint",
    "AzureQueueAdapter": ".azure.adapter", "CosmosDbContext": ".azure.cosmos",
    "RedisCoordinationStore": ".azure.redis_store", "create_azure_reconciler": ".azure.reconciler",
    "ReconciliationStats": ".azure.reconciler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcraft_core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "AzureQueueAdapter", "BaseNode", "BlueprintAnalysis", "BlueprintError", "BlueprintMetadata", "CancelSignal",
    "CollectingEventBus", "CosmosDbContext", "EdgeDefinition", "Engine", "EngineOptions", "EventBus",
    "ExpressionError", "FlowRuntime", "FlowcraftError", "InvalidJobError", "JobOutcome", "LintIssue",
    "LoggingEventBus", "Middleware", "NodeConfig", "NodeContext", "NodeContextView", "NodeDefinition",
    "NodeExecutionError", "NodeResult", "ReconciliationStats", "RedisCoordinationStore", "RunStateError",
    "UnknownRunError", "WorkflowBlueprint", "WorkflowCancelled", "WorkflowResult", "analyze_blueprint",
    "create_azure_reconciler", "generate_mermaid", "lint_blueprint", "load_blueprints", "parse_blueprint",
    "validate_blueprint",
]
