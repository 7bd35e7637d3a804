terraform {
  required_version = ">= 1.6"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.46 is the first 4.x release whose azurerm_storage_queue accepts storage_account_id
      # (queues are then created through Azure Resource Manager instead of the data plane).
      version = "~> 4.46"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "azurerm" {
  # azurerm 4.x needs a subscription: set var.subscription_id or export ARM_SUBSCRIPTION_ID
  # (a null value here leaves the provider to read the environment).
  subscription_id = var.subscription_id

  features {
    resource_group {
      # Application Insights creates "Failure Anomalies" smart-detector alert rules in the resource
      # group that Terraform does not manage; without this, `terraform destroy` stops at the group.
      # The group is created by this configuration and holds nothing else.
      prevent_deletion_if_contains_resources = false
    }
  }
}
