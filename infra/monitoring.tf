# Logs and traces: the Functions host and the app's logging go to Application Insights, which stores them
# in this Log Analytics workspace (workspace-based Application Insights; classic is retired).
resource "azurerm_log_analytics_workspace" "main" {
  name                = local.log_workspace_name
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  daily_quota_gb      = var.log_daily_quota_gb
  tags                = local.tags
}

resource "azurerm_application_insights" "main" {
  name                = local.app_insights_name
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  workspace_id        = azurerm_log_analytics_workspace.main.id
  application_type    = "web"
  # Telemetry is sent with the connection string's instrumentation key (APPLICATIONINSIGHTS_CONNECTION_STRING).
  local_authentication_disabled = false
  tags                          = local.tags
}
