# Azure Cache for Redis: the coordination store (INCR counters and SET NX locks for fan-in joins).
# Only the TLS port (6380) is open; REDIS_URL in function.tf uses rediss:// on that port.
resource "azurerm_redis_cache" "main" {
  name                = local.redis_name
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku_name            = var.redis_sku_name
  family              = var.redis_sku_name == "Premium" ? "P" : "C"
  capacity            = var.redis_capacity
  redis_version       = "6"

  non_ssl_port_enabled = false
  minimum_tls_version  = "1.2"
  # identity_connections: the app signs in with Microsoft Entra ID (REDIS_HOST, the access policy
  # assignment below) and access keys are off; otherwise it uses the access key inside REDIS_URL.
  access_keys_authentication_enabled = !var.identity_connections
  # Reachable from Linux Consumption, which has no VNet integration (see README "Accepted findings").
  public_network_access_enabled = true

  redis_configuration {
    # A coordination store must never drop keys silently: an evicted lock or join counter could let a
    # join run twice or never. With noeviction a full cache makes writes fail loudly instead (the
    # default, volatile-lru, would evict any key that has a TTL, locks included).
    maxmemory_policy = "noeviction"
    # Microsoft Entra ID sign-in for the app's managed identity (identity_connections).
    active_directory_authentication_enabled = var.identity_connections
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.redis_sku_name == "Premium" ? (var.redis_capacity >= 1 && var.redis_capacity <= 5) : true
      error_message = "Premium caches take redis_capacity 1-5 (P1-P5)."
    }
  }
}

# The function's managed identity as a Redis user (Entra ID auth): Data Contributor covers the commands
# the coordination store runs (strings, sets, scripts), without the dangerous administrative ones.
resource "azurerm_redis_cache_access_policy_assignment" "function" {
  count              = var.identity_connections ? 1 : 0
  name               = "flowcraft-function"
  redis_cache_id     = azurerm_redis_cache.main.id
  access_policy_name = "Data Contributor"
  object_id          = azurerm_linux_function_app.main.identity[0].principal_id
  object_id_alias    = "ServicePrincipal"
}
