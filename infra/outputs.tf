output "resource_group_name" {
  description = "Resource group holding every resource of this deployment."
  value       = azurerm_resource_group.main.name
}

output "function_app_name" {
  description = "Function App name: `func azure functionapp publish <function_app_name>`."
  value       = azurerm_linux_function_app.main.name
}

output "function_app_default_hostname" {
  description = "Default hostname of the Function App; the API is at https://<hostname>/api/."
  value       = azurerm_linux_function_app.main.default_hostname
}

output "function_app_principal_id" {
  description = "Object id of the Function App's system-assigned managed identity."
  value       = azurerm_linux_function_app.main.identity[0].principal_id
}

output "storage_account_name" {
  description = "Storage account holding the job queue and its poison queue."
  value       = azurerm_storage_account.main.name
}

output "queue_name" {
  description = "Job queue (FLOWCRAFT_QUEUE_NAME)."
  value       = azurerm_storage_queue.jobs.name
}

output "poison_queue_name" {
  description = "Poison queue the Functions runtime moves failed job messages to."
  value       = azurerm_storage_queue.jobs_poison.name
}

output "cosmos_endpoint" {
  description = "Cosmos DB account endpoint (https://<account>.documents.azure.com:443/)."
  value       = azurerm_cosmosdb_account.main.endpoint
}

output "cosmos_database_name" {
  description = "Cosmos DB database (COSMOS_DB_DATABASE)."
  value       = azurerm_cosmosdb_sql_database.main.name
}

output "redis_hostname" {
  description = "Azure Cache for Redis hostname (TLS port 6380)."
  value       = azurerm_redis_cache.main.hostname
}

output "application_insights_name" {
  description = "Application Insights component receiving the app's logs and traces."
  value       = azurerm_application_insights.main.name
}

# Secrets, e.g. for a local.settings.json pointed at the deployed resources:
#   terraform output -raw cosmos_connection_string
output "storage_connection_string" {
  description = "AzureWebJobsStorage connection string (contains the account key)."
  value       = azurerm_storage_account.main.primary_connection_string
  sensitive   = true
}

output "cosmos_connection_string" {
  description = "COSMOS_DB_CONNECTION_STRING (contains the account key)."
  value       = azurerm_cosmosdb_account.main.primary_sql_connection_string
  sensitive   = true
}

output "redis_url" {
  description = "REDIS_URL (contains the access key)."
  value       = local.redis_url
  sensitive   = true
}

output "application_insights_connection_string" {
  description = "APPLICATIONINSIGHTS_CONNECTION_STRING."
  value       = azurerm_application_insights.main.connection_string
  sensitive   = true
}
