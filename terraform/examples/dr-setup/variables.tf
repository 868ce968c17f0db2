variable "region" {
  description = "AWS region of the bucket."
  type        = string
}

variable "bucket_name" {
  description = "Name of the backup bucket (shared by both clusters)."
  type        = string
}

variable "primary_cluster" {
  description = "Name of the primary cluster (recorded in its snapshots; its repository is s3://BUCKET/cairn/NAME)."
  type        = string
}

variable "primary_kubeconfig" {
  description = "Kubeconfig of the primary cluster."
  type        = string
}

variable "primary_oidc_provider_arn" {
  description = "IAM OIDC provider ARN of the primary (EKS) cluster."
  type        = string
}

variable "primary_oidc_issuer" {
  description = "OIDC issuer of the primary cluster, without https://."
  type        = string
}

variable "standby_kubeconfig" {
  description = "Kubeconfig of the standby cluster that restores."
  type        = string
}

variable "write_key" {
  description = "The primary's write credential (cairn init --write-key-out). Keep the age identity out of Terraform."
  type        = string
  sensitive   = true
}

variable "object_lock_days" {
  description = "Object Lock retention of backups, in days (0: none)."
  type        = number
  default     = 14
}
