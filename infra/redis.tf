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
  # The app authenticates with the access key inside REDIS_URL.
  access_keys_authentication_enabled = true
  # Reachable from Linux Consumption, which has no VNet integration (see README "Accepted findings").
  public_network_access_enabled = true

  redis_configuration {
    # A coordination store must never drop keys silently: an evicted lock or join counter could let a
    # join run twice or never. With noeviction a full cache makes writes fail loudly instead (the
    # default, volatile-lru, would evict any key that has a TTL, locks included).
    maxmemory_policy = "noeviction"
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.redis_sku_name == "Premium" ? (var.redis_capacity >= 1 && var.redis_capacity <= 5) : true
      error_message = "Premium caches take redis_capacity 1-5 (P1-P5)."
    }
  }
}
