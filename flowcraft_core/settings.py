"""Settings from the environment (or local.settings.json Values), validated at the edge (pydantic-settings).

Booleans are pydantic's: ``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); anything else, such as
``ture``, is a validation error that names the setting instead of silently meaning "false". Every secret is a
``SecretStr``: ``repr``, ``str`` and logs show ``**********``; the clients read ``get_secret_value()``.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from .errors import FlowcraftError

logger = logging.getLogger("flowcraft.settings")

# FLOWCRAFT_* names read outside Settings (tests and dev tools); not a typo when set.
OTHER_FLOWCRAFT_SETTINGS = frozenset({
    "FLOWCRAFT_FAULT_CRASH_AT", "FLOWCRAFT_LOG_LEVEL", "FLOWCRAFT_LLM_COMPLETION",
    "FLOWCRAFT_DECLARATIVE_FIXTURES", "FLOWCRAFT_SCHEMATHESIS_EXAMPLES",
})
# Alternatives to the connection strings (identity) and optional switches: documented in the README, left
# out of local.settings.json.example, whose emulator settings use connection strings.
NOT_IN_EXAMPLE = frozenset({
    "AzureWebJobsStorage__accountName", "AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId", "COSMOS_DB_ENDPOINT", "COSMOS_DB__credential", "COSMOS_DB__clientId",
    "REDIS_HOST", "REDIS_PORT", "REDIS_SSL", "REDIS__credential", "REDIS__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
})
_warned: set[str] = set()
# The mapping Settings.from_env reads instead of os.environ (pydantic-settings sources are built per call).
_source_env: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("flowcraft_env",
                                                                                       default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping (tests, local.settings.json)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._env, True, True, None)


class Settings(BaseSettings):
    """Every setting the app and the standalone worker read (names as in the environment)."""

    model_config = SettingsConfigDict(populate_by_name=True, frozen=True, case_sensitive=True,
                                      env_ignore_empty=True, extra="ignore")

    # --- Storage queues: a connection string, or identity (Functions' AzureWebJobsStorage__* convention).
    storage_connection_string: SecretStr = Field(default=SecretStr(""), alias="AzureWebJobsStorage")
    storage_account_name: str = Field(default="", alias="AzureWebJobsStorage__accountName")
    storage_queue_service_uri: str = Field(default="", alias="AzureWebJobsStorage__queueServiceUri")
    storage_credential: str = Field(default="", alias="AzureWebJobsStorage__credential")
    storage_client_id: str = Field(default="", alias="AzureWebJobsStorage__clientId")
    queue_name: str = Field(default="flowcraft-jobs", alias="FLOWCRAFT_QUEUE_NAME")
    # --- Cosmos DB: a connection string with the key, or an endpoint and Entra ID (data-plane RBAC).
    cosmos_connection_string: SecretStr = Field(default=SecretStr(""), alias="COSMOS_DB_CONNECTION_STRING")
    cosmos_endpoint: str = Field(default="", alias="COSMOS_DB_ENDPOINT")
    cosmos_credential: str = Field(default="", alias="COSMOS_DB__credential")
    cosmos_client_id: str = Field(default="", alias="COSMOS_DB__clientId")
    cosmos_database: str = Field(default="flowcraftDb", alias="COSMOS_DB_DATABASE")
    cosmos_context_container: str = Field(default="contexts", alias="COSMOS_DB_CONTEXT_CONTAINER")
    cosmos_status_container: str = Field(default="statuses", alias="COSMOS_DB_STATUS_CONTAINER")
    cosmos_verify_tls: bool = Field(default=True, alias="COSMOS_DB_VERIFY_TLS")
    # --- Redis: a URL (password inside), or a host and Entra ID (TLS on 6380 by default).
    redis_url: SecretStr = Field(default=SecretStr(""), alias="REDIS_URL")
    redis_host: str = Field(default="", alias="REDIS_HOST")
    redis_port: int = Field(default=6380, ge=1, le=65535, alias="REDIS_PORT")
    redis_ssl: bool = Field(default=True, alias="REDIS_SSL")
    redis_credential: str = Field(default="", alias="REDIS__credential")
    redis_client_id: str = Field(default="", alias="REDIS__clientId")
    # --- Telemetry: OpenTelemetry export to Application Insights when set.
    appinsights_connection_string: SecretStr = Field(default=SecretStr(""),
                                                     alias="APPLICATIONINSIGHTS_CONNECTION_STRING")
    # --- The engine and the worker.
    workflows_module: str = Field(default="workflows", alias="FLOWCRAFT_WORKFLOWS")
    stalled_threshold_seconds: float = Field(default=300, gt=0, alias="FLOWCRAFT_STALLED_THRESHOLD_SECONDS")
    reconcile_schedule: str = Field(default="0 */1 * * * *", alias="FLOWCRAFT_RECONCILE_SCHEDULE")
    worker_concurrency: int = Field(default=16, ge=1, le=1024, alias="FLOWCRAFT_WORKER_CONCURRENCY")
    visibility_timeout: int = Field(default=60, ge=5, le=3600, alias="FLOWCRAFT_VISIBILITY_TIMEOUT")
    # The standalone worker runs the jobs it enqueues itself when it can (AzureQueueAdapter.hand_on).
    worker_eager_dispatch: bool = Field(default=True, alias="FLOWCRAFT_WORKER_EAGER_DISPATCH")
    create_resources: bool = Field(default=False, alias="FLOWCRAFT_CREATE_RESOURCES")
    # Ended runs older than this many days are purged by the timer; unset keeps them forever.
    retention_days: float | None = Field(default=None, gt=0, alias="FLOWCRAFT_RETENTION_DAYS")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, alias="FLOWCRAFT_MAX_REQUEST_BYTES")
    # Only the local host (scripts.devhost) reads this: on Azure the Functions host checks its
    # own function keys. The default is a well-known value for local development, not a secret.
    function_key: SecretStr = Field(default=SecretStr("local-dev-key"), min_length=1,
                                    alias="FLOWCRAFT_FUNCTION_KEY")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the mapping given to from_env (os.environ by default); no .env files."""
        env = _source_env.get()
        return init_settings, _MappingEnvSource(settings_cls, os.environ if env is None else env)

    @field_validator("queue_name")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        # Storage queue names: 3-63 lowercase letters, digits and single dashes.
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
        source = dict(os.environ if env is None else env)
        if not source.get("AzureWebJobsStorage") and source.get("AZURE_STORAGE_CONNECTION_STRING"):
            source["AzureWebJobsStorage"] = source["AZURE_STORAGE_CONNECTION_STRING"]
        _warn_unknown(source)
        token = _source_env.set(source)
        try:
            return cls()
        finally:
            _source_env.reset(token)

    def require(self, *names: str) -> None:
        """Raise a clear error naming every required setting that is missing."""
        missing = [alias for alias in names if not _value(getattr(self, _field_for(alias)))]
        if missing:
            raise FlowcraftError(f"missing setting(s): {', '.join(missing)} (see local.settings.json.example)")


def _value(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _field_for(alias: str) -> str:
    for name, info in Settings.model_fields.items():
        if info.alias == alias:
            return name
    raise KeyError(alias)


def known_setting_names() -> frozenset[str]:
    """Every environment name Settings reads."""
    return frozenset(str(info.alias) for info in Settings.model_fields.values())


def _warn_unknown(env: Mapping[str, str]) -> None:
    # A misspelt FLOWCRAFT_ name would otherwise be ignored without a word (once per name per process).
    known = known_setting_names() | OTHER_FLOWCRAFT_SETTINGS
    for name in sorted(env):
        if name.startswith("FLOWCRAFT_") and name not in known and name not in _warned:
            _warned.add(name)
            logger.warning("unknown setting %s ignored (known FLOWCRAFT_ settings: %s)", name,
                           ", ".join(sorted(n for n in known if n.startswith("FLOWCRAFT_"))))


@dataclass
class Workflows:
    """What FLOWCRAFT_WORKFLOWS hands over: registry and blueprints, and optionally the pluggable parts."""

    registry: dict[str, Any]
    blueprints: dict[str, Any]
    dependencies: dict[str, Any] = field(default_factory=dict)
    middleware: list[Any] = field(default_factory=list)
    event_bus: Any = None
    evaluator: Any = None


def load_workflow_module(module_name: str) -> Workflows:
    """Import the module exposing ``registry`` and ``blueprints`` (and optionally ``dependencies``,
    ``middleware``, ``event_bus``, ``evaluator``)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FlowcraftError(f"cannot import workflows module {module_name!r}: {exc}") from exc
    registry = getattr(module, "registry", None)
    blueprints = getattr(module, "blueprints", None)
    if not isinstance(registry, Mapping) or not isinstance(blueprints, Mapping):
        raise FlowcraftError(f"workflows module {module_name!r} must expose dicts `registry` and `blueprints`")
    dependencies = getattr(module, "dependencies", None) or {}
    middleware = getattr(module, "middleware", None) or []
    if not isinstance(dependencies, Mapping):
        raise FlowcraftError(f"workflows module {module_name!r}: `dependencies` must be a dict")
    if not isinstance(middleware, list | tuple):
        raise FlowcraftError(f"workflows module {module_name!r}: `middleware` must be a list")
    return Workflows(dict(registry), dict(blueprints), dict(dependencies), list(middleware),
                     getattr(module, "event_bus", None), getattr(module, "evaluator", None))


def load_workflows(module_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Import the module exposing ``registry`` and ``blueprints`` (FLOWCRAFT_WORKFLOWS)."""
    workflows = load_workflow_module(module_name)
    return workflows.registry, workflows.blueprints
