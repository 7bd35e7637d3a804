# Cosmos DB (SQL API): one context item and one status item per run, both partitioned by runId so that
# every read and write of a run is a single-partition point operation.
resource "azurerm_cosmosdb_account" "main" {
  name                = local.cosmos_account_name
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  offer_type          = "Standard"
  kind                = "GlobalDocumentDB"
  free_tier_enabled   = var.cosmos_free_tier
  minimal_tls_version = "Tls12"

  # With identity_connections the app reads COSMOS_DB_ENDPOINT and authenticates with its managed identity
  # (the built-in data-contributor role below), so key auth is turned off; without, it reads
  # COSMOS_DB_CONNECTION_STRING and keys stay on.
  local_authentication_disabled = var.identity_connections
  # Keys may read and write items but not create or change databases, containers or throughput: the
  # schema belongs to Terraform (the app must not create containers on Azure, only against the emulator).
  access_key_metadata_writes_enabled = false
  # Reachable from Linux Consumption, which has no VNet integration (see README "Accepted findings").
  public_network_access_enabled = true

  automatic_failover_enabled       = false
  multiple_write_locations_enabled = false

  consistency_policy {
    # Session: each client reads its own writes (a worker patches the context, then reads it back) at
    # the RU price of Eventual; Strong or BoundedStaleness would cost more and add nothing in one region.
    consistency_level = "Session"
  }

  geo_location {
    location          = azurerm_resource_group.main.location
    failover_priority = 0
    zone_redundant    = false
  }

  dynamic "capabilities" {
    for_each = var.cosmos_serverless ? ["EnableServerless"] : []
    content {
      name = capabilities.value
    }
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = !(var.cosmos_free_tier && var.cosmos_serverless)
      error_message = "The Cosmos DB free tier applies to provisioned throughput only: set cosmos_serverless = false to use cosmos_free_tier."
    }
  }
}

resource "azurerm_cosmosdb_sql_database" "main" {
  name                = var.cosmos_database_name
  resource_group_name = azurerm_cosmosdb_account.main.resource_group_name
  account_name        = azurerm_cosmosdb_account.main.name

  # Provisioned mode: one autoscale budget shared by both containers. Serverless accounts take none.
  dynamic "autoscale_settings" {
    for_each = var.cosmos_serverless ? [] : [var.cosmos_autoscale_max_throughput]
    content {
      max_throughput = autoscale_settings.value
    }
  }
}

# The items of a run, all in the run's partition: a header, one write-once record per node execution
# (plus chunks of records too big for one item) and cancel/fail markers (flowcraft_core/azure/cosmos.py).
# They are read by id or by the single-partition query `WHERE c.runId = @runId`, never filtered on
# their contents, so only runId is indexed: a record then costs the same few RUs to write however many
# fields its output has, instead of paying to index each of them.
resource "azurerm_cosmosdb_sql_container" "contexts" {
  name                  = var.cosmos_context_container_name
  resource_group_name   = azurerm_cosmosdb_account.main.resource_group_name
  account_name          = azurerm_cosmosdb_account.main.name
  database_name         = azurerm_cosmosdb_sql_database.main.name
  partition_key_paths   = [local.partition_key_path]
  partition_key_kind    = "Hash"
  partition_key_version = 2
  default_ttl           = var.cosmos_default_ttl_seconds

  indexing_policy {
    indexing_mode = "consistent"

    included_path {
      path = "/runId/?"
    }

    excluded_path {
      path = "/*"
    }
  }
}

# One item per run: {"id": runId, "runId", "blueprintId", "status", "createdAt", "lastUpdated", "result"?,
# "reason"?}. The reconciler queries status = 'running' AND lastUpdated < threshold across partitions,
# so the top-level fields stay indexed; the final result (a whole run context) is excluded because
# nothing filters on it.
resource "azurerm_cosmosdb_sql_container" "statuses" {
  name                  = var.cosmos_status_container_name
  resource_group_name   = azurerm_cosmosdb_account.main.resource_group_name
  account_name          = azurerm_cosmosdb_account.main.name
  database_name         = azurerm_cosmosdb_sql_database.main.name
  partition_key_paths   = [local.partition_key_path]
  partition_key_kind    = "Hash"
  partition_key_version = 2
  default_ttl           = var.cosmos_default_ttl_seconds

  indexing_policy {
    indexing_mode = "consistent"

    included_path {
      path = "/*"
    }

    excluded_path {
      path = "/result/*"
    }
  }
}

# "Cosmos DB Built-in Data Contributor" (role definition ...0002) on the whole account, for the function's
# system-assigned identity: data-plane access without keys once the app authenticates with Entra ID.
resource "azurerm_cosmosdb_sql_role_assignment" "function_data_contributor" {
  resource_group_name = azurerm_cosmosdb_account.main.resource_group_name
  account_name        = azurerm_cosmosdb_account.main.name
  role_definition_id  = "${azurerm_cosmosdb_account.main.id}/sqlRoleDefinitions/00000000-0000-0000-0000-000000000002"
  principal_id        = azurerm_linux_function_app.main.identity[0].principal_id
  scope               = azurerm_cosmosdb_account.main.id
}
