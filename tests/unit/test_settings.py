"""Settings: a typo in a value stops start-up naming the setting; secrets never show; unknown names warn once."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from flowcraft_core import settings as settings_module
from flowcraft_core.settings import Settings

SECRETS = {
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c3RvcmFnZS1rZXktc2VjcmV0;",
    "COSMOS_DB_CONNECTION_STRING": "AccountEndpoint=https://c.documents.azure.com:443/;AccountKey=Y29zbW9zLXNlY3JldA==;",
    "REDIS_URL": "rediss://:redis-password-secret@r.redis.cache.windows.net:6380/0",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-1111-2222-3333-444444444444;",
    "FLOWCRAFT_FUNCTION_KEY": "function-key-secret",
}


@pytest.mark.parametrize("name", ["COSMOS_DB_VERIFY_TLS", "FLOWCRAFT_CREATE_RESOURCES", "REDIS_SSL"])
def test_a_misspelt_boolean_is_an_error_naming_the_setting(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.from_env({name: "ture"})
    assert name in str(caught.value) and "boolean" in str(caught.value)


@pytest.mark.parametrize(("text", "value"), [("false", False), ("0", False), ("No", False), ("TRUE", True),
                                             ("on", True), ("1", True)])
def test_booleans_take_the_usual_spellings(text: str, value: bool) -> None:
    assert Settings.from_env({"COSMOS_DB_VERIFY_TLS": text}).cosmos_verify_tls is value


def test_an_empty_value_means_the_default() -> None:
    assert Settings.from_env({"COSMOS_DB_VERIFY_TLS": "", "REDIS_PORT": ""}).cosmos_verify_tls is True


def test_secrets_never_show_in_repr_str_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env(SECRETS)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("flowcraft.test").info("settings: %s / %r / %s", settings, settings, settings.model_dump())
    logging.getLogger("flowcraft.test").info(f"settings: {settings!s} {settings!r}")
    shown = [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json(), caplog.text]
    for text in shown:
        for secret in SECRETS.values():
            assert secret not in text
        for fragment in ("c3RvcmFnZS1rZXktc2VjcmV0", "redis-password-secret", "Y29zbW9zLXNlY3JldA",
                         "function-key-secret", "InstrumentationKey"):
            assert fragment not in text
    # ...while the clients still get the values.
    assert settings.redis_url.get_secret_value() == SECRETS["REDIS_URL"]
    assert settings.function_key.get_secret_value() == "function-key-secret"


def test_an_unknown_flowcraft_setting_is_warned_about_once(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())
    caplog.set_level(logging.WARNING, logger="flowcraft.settings")
    env = {"FLOWCRAFT_QUEUE_NAMES": "jobs", "FLOWCRAFT_WORKFLOWS": "workflows", "OTHER_THING": "x"}
    Settings.from_env(env)
    Settings.from_env(env)
    warnings = [r.getMessage() for r in caplog.records if r.name == "flowcraft.settings"]
    assert len(warnings) == 1 and "FLOWCRAFT_QUEUE_NAMES" in warnings[0]
    assert "FLOWCRAFT_QUEUE_NAME," in warnings[0]  # the message lists the real names


def test_from_env_reads_the_given_mapping_not_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCRAFT_QUEUE_NAME", "from-process")
    assert Settings.from_env({}).queue_name == "flowcraft-jobs"
    assert Settings.from_env().queue_name == "from-process"
    assert Settings.from_env({"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
                             ).storage_connection_string.get_secret_value() == "UseDevelopmentStorage=true"
