variable "name_prefix" {
  description = "Prefix of the IAM role names (e.g. the cluster name)."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (EKS: module.eks.oidc_provider_arn)."
  type        = string
}

variable "oidc_issuer" {
  description = "The cluster's OIDC issuer without https:// (e.g. oidc.eks.eu-west-1.amazonaws.com/id/ABC)."
  type        = string
}

variable "namespace" {
  description = "Namespace of cairn's ServiceAccounts."
  type        = string
  default     = "cairn"
}

variable "bucket_arn" {
  description = "ARN of the backup bucket (bucket-aws output bucket_arn)."
  type        = string
}

variable "repo_prefix" {
  description = "Key prefix of this cluster's repository in the bucket (e.g. cairn/prod)."
  type        = string
}

variable "kms_key_arn" {
  description = "The bucket's SSE-KMS key (bucket-aws output kms_key_arn)."
  type        = string
}

variable "ingest_service_accounts" {
  description = "namespace:name of the ServiceAccounts PVC ingest pods run as (--ingest-service-account), which assume the pvc-ingest role too."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
