# Resource group, naming and the settings shared by the other files:
#   storage.tf     storage account, job queue + poison queue, queue logging
#   cosmos.tf      Cosmos DB account, database, contexts + statuses containers, data-plane role
#   redis.tf       Azure Cache for Redis
#   monitoring.tf  Log Analytics workspace + Application Insights
#   function.tf    service plan, Linux Function App, app settings, storage role assignments

# Appended to every globally unique name. Stored in state, so names stay the same across applies.
resource "random_string" "suffix" {
  length  = 6
  lower   = true
  upper   = false
  numeric = true
  special = false
}

locals {
  suffix = random_string.suffix.result

  # Storage account names allow only lowercase letters and digits, at most 24 characters.
  storage_account_name = substr("st${replace(var.prefix, "-", "")}${local.suffix}", 0, 24)

  resource_group_name = "rg-${var.prefix}-${local.suffix}"
  cosmos_account_name = "cosmos-${var.prefix}-${local.suffix}"
  redis_name          = "redis-${var.prefix}-${local.suffix}"
  log_workspace_name  = "log-${var.prefix}-${local.suffix}"
  app_insights_name   = "appi-${var.prefix}-${local.suffix}"
  service_plan_name   = "asp-${var.prefix}-${local.suffix}"
  function_app_name   = "func-${var.prefix}-${local.suffix}"
  poison_queue_name   = "${var.queue_name}-poison"
  partition_key_path  = "/runId"
  function_python     = "3.11"
  function_plan_is_ep = startswith(var.function_plan_sku, "EP")
  function_plan_is_y1 = var.function_plan_sku == "Y1"
  function_always_on  = !(local.function_plan_is_y1 || local.function_plan_is_ep)
  # Linux Consumption deploys (func azure functionapp publish) upload the package with the
  # AzureWebJobsStorage connection string, so Y1 keeps it even with identity_connections.
  host_storage_identity = var.identity_connections && !local.function_plan_is_y1

  tags = merge(
    {
      app        = "flowcraft"
      managed-by = "terraform"
    },
    var.tags,
  )
}

resource "azurerm_resource_group" "main" {
  name     = local.resource_group_name
  location = var.location
  tags     = local.tags
}
