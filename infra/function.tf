# Hosting plan. Default Y1 (Linux Consumption) because it is the cheapest way to run this app: it scales
# to zero, bills per execution and GB-second (the monthly free grant of 1M executions and 400,000 GB-s
# covers the every-minute reconciler timer and a good amount of traffic), and the queue trigger scales
# out on queue length by itself. Its costs: cold starts of a few seconds after idle periods, no VNet
# integration (so Cosmos DB, Redis and Storage must stay on public endpoints) and, per Microsoft, the
# Linux Consumption plan retires on 30 September 2028 (successor: Flex Consumption, a different resource,
# azurerm_function_app_flex_consumption).
# Choose EP1 (Elastic Premium, roughly 150 USD/month per always-ready instance) for no cold starts, VNet
# integration with private endpoints, and longer executions; dedicated SKUs (B/S/P) run always-on.
resource "azurerm_service_plan" "functions" {
  name                         = local.service_plan_name
  location                     = azurerm_resource_group.main.location
  resource_group_name          = azurerm_resource_group.main.name
  os_type                      = "Linux"
  sku_name                     = var.function_plan_sku
  maximum_elastic_worker_count = local.function_plan_is_ep ? var.elastic_maximum_instances : null
  tags                         = local.tags
}

locals {
  # redis-py's from_url() percent-decodes the password; the access key is base64 and may contain
  # "+", "/" and "=", which would otherwise break the URL. 6380 is the cache's TLS port.
  redis_url = "rediss://:${urlencode(azurerm_redis_cache.main.primary_access_key)}@${azurerm_redis_cache.main.hostname}:6380/0"

  # The settings flowcraft_core needs on Azure (flowcraft_core/settings.py). Two more come from dedicated
  # arguments of azurerm_linux_function_app, which is where the provider expects them (it strips them
  # from app_settings when reading the app back, so setting them here would show a change on every plan):
  #   AzureWebJobsStorage                    <- storage_account_name + storage_account_access_key
  #   APPLICATIONINSIGHTS_CONNECTION_STRING  <- site_config.application_insights_connection_string
  # and FUNCTIONS_WORKER_RUNTIME = python   <- site_config.application_stack.python_version
  common_app_settings = {
    FLOWCRAFT_QUEUE_NAME                = azurerm_storage_queue.jobs.name
    COSMOS_DB_DATABASE                  = azurerm_cosmosdb_sql_database.main.name
    COSMOS_DB_CONTEXT_CONTAINER         = azurerm_cosmosdb_sql_container.contexts.name
    COSMOS_DB_STATUS_CONTAINER          = azurerm_cosmosdb_sql_container.statuses.name
    FLOWCRAFT_WORKFLOWS                 = var.workflows_module
    FLOWCRAFT_STALLED_THRESHOLD_SECONDS = tostring(var.stalled_threshold_seconds)
    FLOWCRAFT_RECONCILE_SCHEDULE        = var.reconcile_schedule
  }
  # identity_connections = false: keys inside connection strings.
  key_app_settings = {
    COSMOS_DB_CONNECTION_STRING = azurerm_cosmosdb_account.main.primary_sql_connection_string
    REDIS_URL                   = local.redis_url
  }
  # identity_connections = true: endpoints only; the managed identity signs in (flowcraft_core.azure.identity).
  identity_app_settings = {
    COSMOS_DB_ENDPOINT = azurerm_cosmosdb_account.main.endpoint
    REDIS_HOST         = azurerm_redis_cache.main.hostname
    REDIS_PORT         = tostring(azurerm_redis_cache.main.ssl_port)
  }
  function_app_settings = merge(
    local.common_app_settings,
    var.identity_connections ? tomap(local.identity_app_settings) : tomap(local.key_app_settings),
  )
}

resource "azurerm_linux_function_app" "main" {
  name                = local.function_app_name
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  service_plan_id     = azurerm_service_plan.functions.id

  # Becomes AzureWebJobsStorage (a connection string with the account key), or with host_storage_identity
  # AzureWebJobsStorage__accountName (the managed identity, no key): the Functions host, the queue trigger
  # and the app's own QueueClient all use it.
  storage_account_name          = azurerm_storage_account.main.name
  storage_account_access_key    = local.host_storage_identity ? null : azurerm_storage_account.main.primary_access_key
  storage_uses_managed_identity = local.host_storage_identity ? true : null

  functions_extension_version = "~4"
  https_only                  = true
  # The HTTP API (POST /api/runs ...) is the way users start runs, so the app stays public; requests
  # need a function key unless a route is anonymous (the auth level is set per route in function_app.py).
  public_network_access_enabled = true
  # AzureWebJobsDashboard is obsolete; logs go to Application Insights.
  builtin_logging_enabled = false
  # FTP is never used. Basic auth on the SCM (Kudu) site stays on: `func azure functionapp publish`
  # deploys with the app's publishing credentials.
  ftp_publish_basic_authentication_enabled       = false
  webdeploy_publish_basic_authentication_enabled = true

  identity {
    type = "SystemAssigned"
  }

  site_config {
    application_stack {
      python_version = local.function_python
    }

    application_insights_connection_string = azurerm_application_insights.main.connection_string

    always_on                = local.function_always_on
    elastic_instance_minimum = local.function_plan_is_ep ? 1 : null
    ftps_state               = "Disabled"
    minimum_tls_version      = "1.2"
    scm_minimum_tls_version  = "1.2"
    http2_enabled            = true
  }

  app_settings = merge(var.extra_app_settings, local.function_app_settings)

  tags = local.tags

  lifecycle {
    # Written by `func azure functionapp publish` (the package URL on Linux Consumption, the remote-build
    # switches elsewhere): without this, the next apply would delete them and unload the deployed code.
    ignore_changes = [
      app_settings["WEBSITE_RUN_FROM_PACKAGE"],
      app_settings["SCM_DO_BUILD_DURING_DEPLOYMENT"],
      app_settings["ENABLE_ORYX_BUILD"],
    ]
  }
}

# Data-plane roles on the storage account for the function's managed identity: reading, adding,
# updating and deleting queue messages, and the blob access the Functions host needs (leases, package).
# They allow the move to identity-based AzureWebJobsStorage__accountName without another apply.
resource "azurerm_role_assignment" "function_queue_data_contributor" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Queue Data Contributor"
  principal_id         = azurerm_linux_function_app.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "function_blob_data_owner" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_linux_function_app.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}
