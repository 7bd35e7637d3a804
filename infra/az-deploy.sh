#!/usr/bin/env bash
# Provision flowcraft-azure with the Azure CLI: the same resources, names and settings as the Terraform
# configuration beside this script (infra/*.tf). Terraform is the recommended path (it keeps state, shows
# a plan and can destroy); this script is for a quick environment without Terraform and for readers who
# think in az commands. It is safe to re-run: existing resources are updated or left as they are.
#
#   az login && az account set --subscription <subscription-id>
#   PREFIX=flowcraft LOCATION=eastus infra/az-deploy.sh
#   func azure functionapp publish <function app name printed at the end>
#
# Every setting below can be overridden from the environment. The random SUFFIX that makes names
# globally unique is saved in infra/.az-deploy.env (git-ignored) so that a re-run targets the same
# resources; set SUFFIX yourself to choose it. Redis creation alone takes 15-20 minutes.
set -euo pipefail
# Arrays that may be empty are expanded as ${ARRAY[@]+"${ARRAY[@]}"}: bash before 4.4 (macOS ships 3.2)
# treats "${ARRAY[@]}" of an empty array as unbound under set -u.

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
STATE_FILE=${STATE_FILE:-"$SCRIPT_DIR/.az-deploy.env"}

PREFIX=${PREFIX:-flowcraft}
LOCATION=${LOCATION:-eastus}
QUEUE_NAME=${QUEUE_NAME:-flowcraft-jobs}
COSMOS_DATABASE=${COSMOS_DATABASE:-flowcraftDb}
CONTEXT_CONTAINER=${CONTEXT_CONTAINER:-contexts}
STATUS_CONTAINER=${STATUS_CONTAINER:-statuses}
COSMOS_SERVERLESS=${COSMOS_SERVERLESS:-true}               # false: provisioned autoscale throughput
COSMOS_AUTOSCALE_MAX_THROUGHPUT=${COSMOS_AUTOSCALE_MAX_THROUGHPUT:-1000}
COSMOS_DEFAULT_TTL=${COSMOS_DEFAULT_TTL:-}                  # empty: TTL off (the default)
STORAGE_SKU=${STORAGE_SKU:-Standard_LRS}
REDIS_SKU=${REDIS_SKU:-Standard}
REDIS_VM_SIZE=${REDIS_VM_SIZE:-c0}
FUNCTION_PLAN_SKU=${FUNCTION_PLAN_SKU:-Y1}                  # Y1 (Consumption) or EP1-EP3 / B, S, P SKUs
ELASTIC_MAXIMUM_INSTANCES=${ELASTIC_MAXIMUM_INSTANCES:-10}
WORKFLOWS_MODULE=${WORKFLOWS_MODULE:-workflows}
STALLED_THRESHOLD_SECONDS=${STALLED_THRESHOLD_SECONDS:-300}
RECONCILE_SCHEDULE=${RECONCILE_SCHEDULE:-"0 */1 * * * *"}
LOG_RETENTION_DAYS=${LOG_RETENTION_DAYS:-30}
EXTRA_TAGS=${EXTRA_TAGS:-}                                  # space-separated key=value pairs

PARTITION_KEY_PATH=/runId
PYTHON_VERSION=3.11
COSMOS_DATA_CONTRIBUTOR_ROLE=00000000-0000-0000-0000-000000000002 # Cosmos DB Built-in Data Contributor

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'az-deploy.sh: %s\n' "$*" >&2
  exit 1
}

# Percent-encodes everything but unreserved characters (RFC 3986), like Terraform's urlencode().
urlencode() {
  local input=$1 output='' char i
  for ((i = 0; i < ${#input}; i++)); do
    char=${input:i:1}
    case $char in
      [A-Za-z0-9._~-]) output+=$char ;;
      *) printf -v char '%%%02X' "'$char" && output+=$char ;;
    esac
  done
  printf '%s' "$output"
}

# JSON string literal (the values here are connection strings, URLs and plain words: no control characters).
json_string() {
  local value=${1//\\/\\\\}
  printf '"%s"' "${value//\"/\\\"}"
}

# ---------------------------------------------------------------------------------------------------------
# Inputs and names (the same rules and names as variables.tf and main.tf)
# ---------------------------------------------------------------------------------------------------------

[[ $PREFIX =~ ^[a-z][a-z0-9-]{1,10}[a-z0-9]$ ]] ||
  die "PREFIX must be 3-12 lowercase letters, digits and hyphens, starting with a letter (got '$PREFIX')"
[[ $QUEUE_NAME =~ ^[a-z0-9]([a-z0-9]|-[a-z0-9]){2,55}$ ]] ||
  die "QUEUE_NAME must be 3-56 lowercase letters, digits and single hyphens (got '$QUEUE_NAME')"
case $FUNCTION_PLAN_SKU in
  Y1 | EP1 | EP2 | EP3 | B1 | B2 | B3 | S1 | S2 | S3 | P0v3 | P1v3 | P2v3 | P3v3) ;;
  *) die "FUNCTION_PLAN_SKU must be Y1, EP1-EP3, B1-B3, S1-S3 or P0v3-P3v3 (got '$FUNCTION_PLAN_SKU')" ;;
esac
case $REDIS_SKU in
  Basic | Standard | Premium) ;;
  *) die "REDIS_SKU must be Basic, Standard or Premium (got '$REDIS_SKU')" ;;
esac
[[ -z $COSMOS_DEFAULT_TTL || $COSMOS_DEFAULT_TTL == -1 || $COSMOS_DEFAULT_TTL =~ ^[1-9][0-9]*$ ]] ||
  die "COSMOS_DEFAULT_TTL must be empty, -1 or a positive number of seconds (got '$COSMOS_DEFAULT_TTL')"

if [[ -z ${SUFFIX:-} && -f $STATE_FILE ]]; then
  SUFFIX=$(sed -n 's/^SUFFIX=\([a-z0-9]\{1,12\}\)$/\1/p' "$STATE_FILE")
fi
if [[ -z ${SUFFIX:-} ]]; then
  SUFFIX=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
fi
[[ $SUFFIX =~ ^[a-z0-9]{1,12}$ ]] || die "SUFFIX must be 1-12 lowercase letters or digits (got '$SUFFIX')"
printf 'SUFFIX=%s\n' "$SUFFIX" >"$STATE_FILE"

RESOURCE_GROUP=${RESOURCE_GROUP:-"rg-$PREFIX-$SUFFIX"}
STORAGE_ACCOUNT_FULL="st${PREFIX//-/}$SUFFIX"
STORAGE_ACCOUNT=${STORAGE_ACCOUNT_FULL:0:24}
POISON_QUEUE_NAME="$QUEUE_NAME-poison"
COSMOS_ACCOUNT="cosmos-$PREFIX-$SUFFIX"
REDIS_NAME="redis-$PREFIX-$SUFFIX"
LOG_WORKSPACE="log-$PREFIX-$SUFFIX"
APP_INSIGHTS="appi-$PREFIX-$SUFFIX"
SERVICE_PLAN="asp-$PREFIX-$SUFFIX"
FUNCTION_APP="func-$PREFIX-$SUFFIX"

read -r -a EXTRA_TAG_LIST <<<"$EXTRA_TAGS"
TAGS=(app=flowcraft managed-by=az-cli ${EXTRA_TAG_LIST[@]+"${EXTRA_TAG_LIST[@]}"})

command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is not installed"
SUBSCRIPTION_ID=$(az account show --query id --output tsv) || die "not logged in: run 'az login' first"
log "Subscription $SUBSCRIPTION_ID, region $LOCATION, names ending in -$SUFFIX"
az extension add --name application-insights --upgrade --only-show-errors --output none

# ---------------------------------------------------------------------------------------------------------
# Resource group
# ---------------------------------------------------------------------------------------------------------

log "Resource group $RESOURCE_GROUP"
az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --tags "${TAGS[@]}" --output none

# ---------------------------------------------------------------------------------------------------------
# Storage account, job queue and poison queue (storage.tf)
# ---------------------------------------------------------------------------------------------------------

log "Storage account $STORAGE_ACCOUNT"
az storage account create \
  --name "$STORAGE_ACCOUNT" \
  --resource-group "$RESOURCE_GROUP" \
  --location "$LOCATION" \
  --kind StorageV2 \
  --sku "$STORAGE_SKU" \
  --access-tier Hot \
  --min-tls-version TLS1_2 \
  --https-only true \
  --allow-blob-public-access false \
  --allow-shared-key-access true \
  --public-network-access Enabled \
  --sas-expiration-period 1.00:00:00 \
  --tags "${TAGS[@]}" \
  --output none
az storage account blob-service-properties update \
  --account-name "$STORAGE_ACCOUNT" \
  --resource-group "$RESOURCE_GROUP" \
  --enable-delete-retention true \
  --delete-retention-days 7 \
  --enable-container-delete-retention true \
  --container-delete-retention-days 7 \
  --output none
STORAGE_ID=$(az storage account show --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --query id --output tsv)
STORAGE_CONNECTION_STRING=$(az storage account show-connection-string \
  --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --query connectionString --output tsv)

log "Queues $QUEUE_NAME and $POISON_QUEUE_NAME, queue logging"
# Data-plane commands read the connection string from the environment, keeping the key off the
# command line (and out of the process list).
for queue in "$QUEUE_NAME" "$POISON_QUEUE_NAME"; do
  AZURE_STORAGE_CONNECTION_STRING=$STORAGE_CONNECTION_STRING \
    az storage queue create --name "$queue" --output none
done
AZURE_STORAGE_CONNECTION_STRING=$STORAGE_CONNECTION_STRING \
  az storage logging update --services q --log rwd --retention 7 --output none

# ---------------------------------------------------------------------------------------------------------
# Log Analytics + Application Insights (monitoring.tf)
# ---------------------------------------------------------------------------------------------------------

log "Log Analytics workspace $LOG_WORKSPACE and Application Insights $APP_INSIGHTS"
LOG_WORKSPACE_ID=$(az monitor log-analytics workspace create \
  --resource-group "$RESOURCE_GROUP" \
  --workspace-name "$LOG_WORKSPACE" \
  --location "$LOCATION" \
  --sku PerGB2018 \
  --retention-time "$LOG_RETENTION_DAYS" \
  --tags "${TAGS[@]}" \
  --query id --output tsv)
az monitor app-insights component create \
  --app "$APP_INSIGHTS" \
  --resource-group "$RESOURCE_GROUP" \
  --location "$LOCATION" \
  --kind web \
  --application-type web \
  --workspace "$LOG_WORKSPACE_ID" \
  --tags "${TAGS[@]}" \
  --output none
APP_INSIGHTS_CONNECTION_STRING=$(az monitor app-insights component show \
  --app "$APP_INSIGHTS" --resource-group "$RESOURCE_GROUP" --query connectionString --output tsv)

# ---------------------------------------------------------------------------------------------------------
# Cosmos DB account, database and the two containers partitioned by /runId (cosmos.tf)
# ---------------------------------------------------------------------------------------------------------

log "Cosmos DB account $COSMOS_ACCOUNT"
COSMOS_CAPABILITIES=()
[[ $COSMOS_SERVERLESS == true ]] && COSMOS_CAPABILITIES=(--capabilities EnableServerless)
if ! az cosmosdb show --name "$COSMOS_ACCOUNT" --resource-group "$RESOURCE_GROUP" --output none 2>/dev/null; then
  az cosmosdb create \
    --name "$COSMOS_ACCOUNT" \
    --resource-group "$RESOURCE_GROUP" \
    --kind GlobalDocumentDB \
    --default-consistency-level Session \
    --locations regionName="$LOCATION" failoverPriority=0 isZoneRedundant=False \
    ${COSMOS_CAPABILITIES[@]+"${COSMOS_CAPABILITIES[@]}"} \
    --minimal-tls-version Tls12 \
    --disable-key-based-metadata-write-access true \
    --public-network-access ENABLED \
    --tags "${TAGS[@]}" \
    --output none
fi

log "Cosmos DB database $COSMOS_DATABASE, containers $CONTEXT_CONTAINER and $STATUS_CONTAINER"
COSMOS_THROUGHPUT=()
[[ $COSMOS_SERVERLESS == true ]] || COSMOS_THROUGHPUT=(--max-throughput "$COSMOS_AUTOSCALE_MAX_THROUGHPUT")
if ! az cosmosdb sql database show --account-name "$COSMOS_ACCOUNT" --resource-group "$RESOURCE_GROUP" \
  --name "$COSMOS_DATABASE" --output none 2>/dev/null; then
  az cosmosdb sql database create --account-name "$COSMOS_ACCOUNT" --resource-group "$RESOURCE_GROUP" \
    --name "$COSMOS_DATABASE" ${COSMOS_THROUGHPUT[@]+"${COSMOS_THROUGHPUT[@]}"} --output none
fi

COSMOS_TTL=()
[[ -n $COSMOS_DEFAULT_TTL ]] && COSMOS_TTL=(--ttl "$COSMOS_DEFAULT_TTL")
# contexts: read by id or by runId inside the run's partition, so only runId is indexed; statuses:
# everything but the final result, for the reconciler's query on status and lastUpdated.
CONTEXT_INDEXING='{"indexingMode":"consistent","includedPaths":[{"path":"/runId/?"}],"excludedPaths":[{"path":"/*"}]}'
STATUS_INDEXING='{"indexingMode":"consistent","includedPaths":[{"path":"/*"}],"excludedPaths":[{"path":"/result/*"}]}'
for spec in "$CONTEXT_CONTAINER|$CONTEXT_INDEXING" "$STATUS_CONTAINER|$STATUS_INDEXING"; do
  container=${spec%%|*}
  indexing=${spec#*|}
  if ! az cosmosdb sql container show --account-name "$COSMOS_ACCOUNT" --resource-group "$RESOURCE_GROUP" \
    --database-name "$COSMOS_DATABASE" --name "$container" --output none 2>/dev/null; then
    az cosmosdb sql container create \
      --account-name "$COSMOS_ACCOUNT" \
      --resource-group "$RESOURCE_GROUP" \
      --database-name "$COSMOS_DATABASE" \
      --name "$container" \
      --partition-key-path "$PARTITION_KEY_PATH" \
      --idx "$indexing" \
      ${COSMOS_TTL[@]+"${COSMOS_TTL[@]}"} \
      --output none
  fi
done
COSMOS_CONNECTION_STRING=$(az cosmosdb keys list --name "$COSMOS_ACCOUNT" --resource-group "$RESOURCE_GROUP" \
  --type connection-strings \
  --query "connectionStrings[?description=='Primary SQL Connection String'].connectionString | [0]" \
  --output tsv)

# ---------------------------------------------------------------------------------------------------------
# Azure Cache for Redis: TLS only, TLS 1.2 minimum (redis.tf)
# ---------------------------------------------------------------------------------------------------------

log "Azure Cache for Redis $REDIS_NAME ($REDIS_SKU $REDIS_VM_SIZE; creation takes 15-20 minutes)"
if ! az redis show --name "$REDIS_NAME" --resource-group "$RESOURCE_GROUP" --output none 2>/dev/null; then
  # No --enable-non-ssl-port: the plain-text port 6379 stays closed.
  az redis create \
    --name "$REDIS_NAME" \
    --resource-group "$RESOURCE_GROUP" \
    --location "$LOCATION" \
    --sku "$REDIS_SKU" \
    --vm-size "$REDIS_VM_SIZE" \
    --redis-version 6 \
    --minimum-tls-version 1.2 \
    --redis-configuration '{"maxmemory-policy":"noeviction"}' \
    --tags "${TAGS[@]}" \
    --output none
fi
if [[ $(az redis show --name "$REDIS_NAME" --resource-group "$RESOURCE_GROUP" --query enableNonSslPort --output tsv) != false ]]; then
  az redis update --name "$REDIS_NAME" --resource-group "$RESOURCE_GROUP" \
    --set enableNonSslPort=false minimumTlsVersion=1.2 --output none
fi
REDIS_HOSTNAME=$(az redis show --name "$REDIS_NAME" --resource-group "$RESOURCE_GROUP" --query hostName --output tsv)
REDIS_KEY=$(az redis list-keys --name "$REDIS_NAME" --resource-group "$RESOURCE_GROUP" --query primaryKey --output tsv)
REDIS_URL="rediss://:$(urlencode "$REDIS_KEY")@$REDIS_HOSTNAME:6380/0"

# ---------------------------------------------------------------------------------------------------------
# Function App: Linux, Python 3.11, Functions v4, system-assigned identity (function.tf)
# ---------------------------------------------------------------------------------------------------------

log "Function App $FUNCTION_APP on $FUNCTION_PLAN_SKU"
if [[ $FUNCTION_PLAN_SKU == Y1 ]]; then
  PLAN_ARGS=(--consumption-plan-location "$LOCATION")
else
  PLAN_EXTRA=()
  [[ $FUNCTION_PLAN_SKU == EP* ]] && PLAN_EXTRA=(--max-burst "$ELASTIC_MAXIMUM_INSTANCES" --min-instances 1)
  az functionapp plan create \
    --name "$SERVICE_PLAN" \
    --resource-group "$RESOURCE_GROUP" \
    --location "$LOCATION" \
    --sku "$FUNCTION_PLAN_SKU" \
    --is-linux true \
    ${PLAN_EXTRA[@]+"${PLAN_EXTRA[@]}"} \
    --tags "${TAGS[@]}" \
    --output none
  PLAN_ARGS=(--plan "$SERVICE_PLAN")
fi
if ! az functionapp show --name "$FUNCTION_APP" --resource-group "$RESOURCE_GROUP" --output none 2>/dev/null; then
  az functionapp create \
    --name "$FUNCTION_APP" \
    --resource-group "$RESOURCE_GROUP" \
    --storage-account "$STORAGE_ACCOUNT" \
    "${PLAN_ARGS[@]}" \
    --os-type Linux \
    --runtime python \
    --runtime-version "$PYTHON_VERSION" \
    --functions-version 4 \
    --app-insights "$APP_INSIGHTS" \
    --https-only true \
    --tags "${TAGS[@]}" \
    --output none
fi
az functionapp config set --name "$FUNCTION_APP" --resource-group "$RESOURCE_GROUP" \
  --ftps-state Disabled --min-tls-version 1.2 --http20-enabled true --output none
# FTP basic auth off; SCM basic auth stays on for `func azure functionapp publish`.
az resource update --resource-group "$RESOURCE_GROUP" --namespace Microsoft.Web \
  --resource-type basicPublishingCredentialsPolicies --parent "sites/$FUNCTION_APP" --name ftp \
  --set properties.allow=false --output none
PRINCIPAL_ID=$(az functionapp identity assign --name "$FUNCTION_APP" --resource-group "$RESOURCE_GROUP" \
  --query principalId --output tsv)

log "Role assignments for the Function App identity $PRINCIPAL_ID"
for role in "Storage Queue Data Contributor" "Storage Blob Data Owner"; do
  if [[ $(az role assignment list --assignee "$PRINCIPAL_ID" --role "$role" --scope "$STORAGE_ID" \
    --query 'length(@)' --output tsv) == 0 ]]; then
    az role assignment create --assignee-object-id "$PRINCIPAL_ID" --assignee-principal-type ServicePrincipal \
      --role "$role" --scope "$STORAGE_ID" --output none
  fi
done
if [[ $(az cosmosdb sql role assignment list --account-name "$COSMOS_ACCOUNT" --resource-group "$RESOURCE_GROUP" \
  --query "[?principalId=='$PRINCIPAL_ID' && ends_with(roleDefinitionId, '$COSMOS_DATA_CONTRIBUTOR_ROLE')] | length(@)" \
  --output tsv) == 0 ]]; then
  az cosmosdb sql role assignment create --account-name "$COSMOS_ACCOUNT" --resource-group "$RESOURCE_GROUP" \
    --role-definition-id "$COSMOS_DATA_CONTRIBUTOR_ROLE" --principal-id "$PRINCIPAL_ID" --scope "/" --output none
fi

log "App settings"
# Written to a private temporary file rather than passed as arguments, so that the keys in the
# connection strings never appear in the process list.
SETTINGS_FILE=$(umask 077 && mktemp)
trap 'rm -f "$SETTINGS_FILE"' EXIT
{
  printf '{\n'
  printf '  "AzureWebJobsStorage": %s,\n' "$(json_string "$STORAGE_CONNECTION_STRING")"
  printf '  "APPLICATIONINSIGHTS_CONNECTION_STRING": %s,\n' "$(json_string "$APP_INSIGHTS_CONNECTION_STRING")"
  printf '  "FLOWCRAFT_QUEUE_NAME": %s,\n' "$(json_string "$QUEUE_NAME")"
  printf '  "COSMOS_DB_CONNECTION_STRING": %s,\n' "$(json_string "$COSMOS_CONNECTION_STRING")"
  printf '  "COSMOS_DB_DATABASE": %s,\n' "$(json_string "$COSMOS_DATABASE")"
  printf '  "COSMOS_DB_CONTEXT_CONTAINER": %s,\n' "$(json_string "$CONTEXT_CONTAINER")"
  printf '  "COSMOS_DB_STATUS_CONTAINER": %s,\n' "$(json_string "$STATUS_CONTAINER")"
  printf '  "REDIS_URL": %s,\n' "$(json_string "$REDIS_URL")"
  printf '  "FLOWCRAFT_WORKFLOWS": %s,\n' "$(json_string "$WORKFLOWS_MODULE")"
  printf '  "FLOWCRAFT_STALLED_THRESHOLD_SECONDS": %s,\n' "$(json_string "$STALLED_THRESHOLD_SECONDS")"
  printf '  "FLOWCRAFT_RECONCILE_SCHEDULE": %s\n' "$(json_string "$RECONCILE_SCHEDULE")"
  printf '}\n'
} >"$SETTINGS_FILE"
az functionapp config appsettings set --name "$FUNCTION_APP" --resource-group "$RESOURCE_GROUP" \
  --settings "@$SETTINGS_FILE" --output none

FUNCTION_HOSTNAME=$(az functionapp show --name "$FUNCTION_APP" --resource-group "$RESOURCE_GROUP" \
  --query defaultHostName --output tsv)
cat <<EOF

Done.
  resource group     $RESOURCE_GROUP
  function app       $FUNCTION_APP (https://$FUNCTION_HOSTNAME/api/)
  storage account    $STORAGE_ACCOUNT (queues $QUEUE_NAME, $POISON_QUEUE_NAME)
  cosmos db          $COSMOS_ACCOUNT / $COSMOS_DATABASE ($CONTEXT_CONTAINER, $STATUS_CONTAINER; partition key $PARTITION_KEY_PATH)
  redis              $REDIS_HOSTNAME:6380 (TLS only)
  app insights       $APP_INSIGHTS

Deploy the code from the repository root:
  func azure functionapp publish $FUNCTION_APP
EOF
