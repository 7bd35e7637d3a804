# ---------------------------------------------------------------------------------------------------------
# Deployment-wide
# ---------------------------------------------------------------------------------------------------------

variable "subscription_id" {
  description = "Azure subscription to deploy into. Leave null to use the ARM_SUBSCRIPTION_ID environment variable."
  type        = string
  default     = null
}

variable "prefix" {
  description = "Short name every resource name starts with (3-12 characters: lowercase letters, digits, hyphens; starts with a letter). A random suffix is appended so that globally unique names (storage, Cosmos DB, Redis, Function App) do not collide."
  type        = string
  default     = "flowcraft"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,10}[a-z0-9]$", var.prefix))
    error_message = "prefix must be 3-12 characters of lowercase letters, digits and hyphens, start with a letter and end with a letter or digit."
  }
}

variable "location" {
  description = "Azure region for every resource, e.g. eastus or westeurope."
  type        = string
  default     = "eastus"

  validation {
    condition     = can(regex("^[a-z0-9]+$", var.location))
    error_message = "location must be a region name in its short form (lowercase, no spaces), e.g. eastus."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags (merged over app = flowcraft and managed-by = terraform)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------------------
# Storage: job queue
# ---------------------------------------------------------------------------------------------------------

variable "queue_name" {
  description = "Name of the Storage Queue that carries node jobs (FLOWCRAFT_QUEUE_NAME). Its poison queue is \"<queue_name>-poison\", the name the Functions queue trigger moves failed messages to."
  type        = string
  default     = "flowcraft-jobs"

  validation {
    # Queue names: 3-63 lowercase letters, digits and single hyphens; 56 leaves room for "-poison".
    condition     = can(regex("^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,55}$", var.queue_name))
    error_message = "queue_name must be 3-56 lowercase letters, digits and single hyphens, starting and ending with a letter or digit."
  }
}

variable "storage_replication_type" {
  description = "Replication of the storage account (queue messages, Functions host state). LRS is the cheapest; ZRS or GZRS survive a zone or region outage."
  type        = string
  default     = "LRS"

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "RAGRS", "GZRS", "RAGZRS"], var.storage_replication_type)
    error_message = "storage_replication_type must be one of LRS, ZRS, GRS, RAGRS, GZRS, RAGZRS."
  }
}

# ---------------------------------------------------------------------------------------------------------
# Cosmos DB: run context and status
# ---------------------------------------------------------------------------------------------------------

variable "cosmos_database_name" {
  description = "Cosmos DB SQL database holding the run state (COSMOS_DB_DATABASE)."
  type        = string
  default     = "flowcraftDb"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$", var.cosmos_database_name))
    error_message = "cosmos_database_name must be 1-255 letters, digits, underscores or hyphens."
  }
}

variable "cosmos_context_container_name" {
  description = "Container holding one context item per run (COSMOS_DB_CONTEXT_CONTAINER), partitioned by /runId."
  type        = string
  default     = "contexts"
}

variable "cosmos_status_container_name" {
  description = "Container holding one status item per run (COSMOS_DB_STATUS_CONTAINER), partitioned by /runId."
  type        = string
  default     = "statuses"
}

variable "cosmos_serverless" {
  description = "true: serverless capacity (pay per request unit consumed, nothing when idle; single region). false: provisioned autoscale throughput shared by the database's containers (see cosmos_autoscale_max_throughput)."
  type        = bool
  default     = true
}

variable "cosmos_autoscale_max_throughput" {
  description = "Autoscale ceiling in RU/s for the database when cosmos_serverless = false (it scales between 10% of this and this). Ignored when serverless."
  type        = number
  default     = 1000

  validation {
    condition     = var.cosmos_autoscale_max_throughput >= 1000 && var.cosmos_autoscale_max_throughput % 1000 == 0
    error_message = "cosmos_autoscale_max_throughput must be a multiple of 1000, at least 1000."
  }
}

variable "cosmos_free_tier" {
  description = "Use the Cosmos DB free tier (first 1000 RU/s and 25 GB free; one account per subscription; provisioned throughput only, so it needs cosmos_serverless = false)."
  type        = bool
  default     = false
}

variable "cosmos_default_ttl_seconds" {
  description = "Default time-to-live of context and status items, in seconds, counted from each item's last write. null (the default) leaves TTL off: runs are kept until deleted. -1 turns TTL on without expiring anything unless an item sets its own ttl. A run's items are written at different times, so choose a TTL well beyond the longest run, pauses (awaiting runs) included."
  type        = number
  default     = null

  validation {
    condition     = var.cosmos_default_ttl_seconds == null ? true : (var.cosmos_default_ttl_seconds == -1 || (var.cosmos_default_ttl_seconds >= 1 && var.cosmos_default_ttl_seconds <= 2147483647 && floor(var.cosmos_default_ttl_seconds) == var.cosmos_default_ttl_seconds))
    error_message = "cosmos_default_ttl_seconds must be null, -1, or a whole number of seconds between 1 and 2147483647."
  }
}

# ---------------------------------------------------------------------------------------------------------
# Azure Cache for Redis: join coordination
# ---------------------------------------------------------------------------------------------------------

variable "redis_sku_name" {
  description = "Azure Cache for Redis tier. Standard (default) keeps a replica, so the fan-in counters and locks survive patching and node failures; Basic is a single node without SLA whose data can be lost on maintenance (fine for development, not for runs that must not execute a join twice)."
  type        = string
  default     = "Standard"

  validation {
    condition     = contains(["Basic", "Standard", "Premium"], var.redis_sku_name)
    error_message = "redis_sku_name must be Basic, Standard or Premium."
  }
}

variable "redis_capacity" {
  description = "Cache size: 0-6 for Basic/Standard (C0 = 250 MB is plenty for counters and locks), 1-5 for Premium (P1-P5)."
  type        = number
  default     = 0

  validation {
    condition     = var.redis_capacity >= 0 && var.redis_capacity <= 6 && floor(var.redis_capacity) == var.redis_capacity
    error_message = "redis_capacity must be a whole number from 0 to 6."
  }
}

# ---------------------------------------------------------------------------------------------------------
# Function App
# ---------------------------------------------------------------------------------------------------------

variable "function_plan_sku" {
  description = "App Service plan SKU for the Function App: Y1 (Linux Consumption, default), EP1-EP3 (Elastic Premium) or a dedicated SKU (B1-B3, S1-S3, P1v3-P3v3). See the comment on azurerm_service_plan.functions in function.tf."
  type        = string
  default     = "Y1"

  validation {
    condition     = contains(["Y1", "EP1", "EP2", "EP3", "B1", "B2", "B3", "S1", "S2", "S3", "P0v3", "P1v3", "P2v3", "P3v3"], var.function_plan_sku)
    error_message = "function_plan_sku must be Y1, EP1-EP3, B1-B3, S1-S3 or P0v3-P3v3."
  }
}

variable "elastic_maximum_instances" {
  description = "Maximum number of instances an Elastic Premium plan scales out to (ignored for other SKUs)."
  type        = number
  default     = 10

  validation {
    condition     = var.elastic_maximum_instances >= 1 && var.elastic_maximum_instances <= 100
    error_message = "elastic_maximum_instances must be between 1 and 100."
  }
}

variable "workflows_module" {
  description = "Python module exposing `registry` and `blueprints` (FLOWCRAFT_WORKFLOWS)."
  type        = string
  default     = "workflows"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*$", var.workflows_module))
    error_message = "workflows_module must be a dotted Python module path, e.g. workflows or myapp.workflows."
  }
}

variable "stalled_threshold_seconds" {
  description = "A running run whose status has not been updated for this many seconds is reconciled (FLOWCRAFT_STALLED_THRESHOLD_SECONDS)."
  type        = number
  default     = 300

  validation {
    condition     = var.stalled_threshold_seconds >= 30 && floor(var.stalled_threshold_seconds) == var.stalled_threshold_seconds
    error_message = "stalled_threshold_seconds must be a whole number of seconds, at least 30."
  }
}

variable "reconcile_schedule" {
  description = "NCRONTAB schedule (six fields, seconds first) of the reconciler timer function (FLOWCRAFT_RECONCILE_SCHEDULE)."
  type        = string
  default     = "0 */1 * * * *"

  validation {
    condition     = length(split(" ", trimspace(var.reconcile_schedule))) == 6
    error_message = "reconcile_schedule must be an NCRONTAB expression with six space-separated fields, e.g. \"0 */1 * * * *\"."
  }
}

variable "extra_app_settings" {
  description = "Additional app settings for the Function App (e.g. FLOWCRAFT_LOG_LEVEL). The settings this configuration wires to its resources take precedence over keys given here."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Days the Log Analytics workspace (and so Application Insights) keeps data; 30 is included in the ingestion price."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730
    error_message = "log_retention_days must be between 30 and 730."
  }
}

variable "log_daily_quota_gb" {
  description = "Daily ingestion cap of the Log Analytics workspace in GB; -1 means no cap. A cap bounds the bill but drops telemetry for the rest of the day once reached."
  type        = number
  default     = -1

  validation {
    condition     = var.log_daily_quota_gb == -1 || var.log_daily_quota_gb >= 0.023
    error_message = "log_daily_quota_gb must be -1 (no cap) or at least 0.023."
  }
}

variable "identity_connections" {
  description = "true (default): the app reaches Cosmos DB and Redis with its managed identity (Microsoft Entra ID): COSMOS_DB_ENDPOINT and REDIS_HOST in the app settings, no key; Cosmos DB key auth and Redis access keys are turned off. On EP or dedicated plans the host storage goes keyless too (AzureWebJobsStorage__accountName, shared keys off); Linux Consumption (Y1) keeps the AzureWebJobsStorage connection string, which its deployment path needs. false: connection strings with keys everywhere."
  type        = bool
  default     = true
}
