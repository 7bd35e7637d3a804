"""Settings from the environment (or local.settings.json Values), validated at the edge."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import FlowcraftError


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


class Settings(BaseModel):
    """Every setting the app and the standalone worker read (names as in the environment)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    storage_connection_string: str = Field(default="", alias="AzureWebJobsStorage")
    queue_name: str = Field(default="flowcraft-jobs", alias="FLOWCRAFT_QUEUE_NAME")
    cosmos_connection_string: str = Field(default="", alias="COSMOS_DB_CONNECTION_STRING")
    cosmos_database: str = Field(default="flowcraftDb", alias="COSMOS_DB_DATABASE")
    cosmos_context_container: str = Field(default="contexts", alias="COSMOS_DB_CONTEXT_CONTAINER")
    cosmos_status_container: str = Field(default="statuses", alias="COSMOS_DB_STATUS_CONTAINER")
    cosmos_verify_tls: bool = Field(default=True, alias="COSMOS_DB_VERIFY_TLS")
    redis_url: str = Field(default="", alias="REDIS_URL")
    workflows_module: str = Field(default="workflows", alias="FLOWCRAFT_WORKFLOWS")
    stalled_threshold_seconds: float = Field(default=300, gt=0, alias="FLOWCRAFT_STALLED_THRESHOLD_SECONDS")
    reconcile_schedule: str = Field(default="0 */1 * * * *", alias="FLOWCRAFT_RECONCILE_SCHEDULE")
    worker_concurrency: int = Field(default=16, ge=1, le=1024, alias="FLOWCRAFT_WORKER_CONCURRENCY")
    visibility_timeout: int = Field(default=60, ge=5, le=3600, alias="FLOWCRAFT_VISIBILITY_TIMEOUT")
    create_resources: bool = Field(default=False, alias="FLOWCRAFT_CREATE_RESOURCES")
    # Ended runs older than this many days are purged by the timer; unset keeps them forever.
    retention_days: float | None = Field(default=None, gt=0, alias="FLOWCRAFT_RETENTION_DAYS")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, alias="FLOWCRAFT_MAX_REQUEST_BYTES")
    # Only the local host (scripts.devhost) reads this: on Azure the Functions host checks its
    # own function keys. The default is a well-known value for local development, not a secret.
    function_key: str = Field(default="local-dev-key", min_length=1, alias="FLOWCRAFT_FUNCTION_KEY")

    @field_validator("queue_name")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        # Storage queue names: 3-63 lowercase letters, digits and single dashes.
        import re

        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", value):
            raise ValueError("queue names are 3-63 lowercase letters, digits and single dashes")
        return value

    @property
    def poison_queue_name(self) -> str:
        """The queue the Functions host moves failing messages to."""
        return f"{self.queue_name}-poison"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment; AZURE_STORAGE_CONNECTION_STRING is accepted too."""
        env = dict(os.environ if env is None else env)
        data: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            alias = field.alias or name
            if alias in env and env[alias] != "":
                data[alias] = env[alias]
        if "AzureWebJobsStorage" not in data and env.get("AZURE_STORAGE_CONNECTION_STRING"):
            data["AzureWebJobsStorage"] = env["AZURE_STORAGE_CONNECTION_STRING"]
        for key in ("COSMOS_DB_VERIFY_TLS", "FLOWCRAFT_CREATE_RESOURCES"):
            if key in data:
                data[key] = _flag(data[key], key == "COSMOS_DB_VERIFY_TLS")
        return cls.model_validate(data)

    def require(self, *names: str) -> None:
        """Raise a clear error naming every required setting that is missing."""
        missing = [alias for alias in names if not getattr(self, _field_for(alias))]
        if missing:
            raise FlowcraftError(f"missing setting(s): {', '.join(missing)} (see local.settings.json.example)")


def _field_for(alias: str) -> str:
    for name, field in Settings.model_fields.items():
        if field.alias == alias:
            return name
    raise KeyError(alias)


def load_workflows(module_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Import the module exposing ``registry`` and ``blueprints`` (FLOWCRAFT_WORKFLOWS)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FlowcraftError(f"cannot import workflows module {module_name!r}: {exc}") from exc
    registry = getattr(module, "registry", None)
    blueprints = getattr(module, "blueprints", None)
    if not isinstance(registry, Mapping) or not isinstance(blueprints, Mapping):
        raise FlowcraftError(f"workflows module {module_name!r} must expose dicts `registry` and `blueprints`")
    return dict(registry), dict(blueprints)
