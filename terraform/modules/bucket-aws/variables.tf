variable "name" {
  description = "Bucket name."
  type        = string
}

variable "prefix" {
  description = "Key prefix the cairn repositories live under (one repository per cluster below it, e.g. s3://BUCKET/PREFIX/prod)."
  type        = string
  default     = "cairn"
}

variable "object_lock_days" {
  description = "Default Object Lock retention in days for new objects (0: no Object Lock). Packs and snapshots then cannot be deleted or overwritten before it ends, even with the maintenance role; prune defers such deletes."
  type        = number
  default     = 0
}

variable "object_lock_mode" {
  description = "GOVERNANCE (principals with s3:BypassGovernanceRetention may delete early) or COMPLIANCE (nobody may)."
  type        = string
  default     = "GOVERNANCE"
  validation {
    condition     = contains(["GOVERNANCE", "COMPLIANCE"], var.object_lock_mode)
    error_message = "object_lock_mode must be GOVERNANCE or COMPLIANCE."
  }
}

variable "noncurrent_version_days" {
  description = "Days after which noncurrent object versions (left by deletes on a versioned bucket) expire."
  type        = number
  default     = 30
}

variable "abort_multipart_days" {
  description = "Days after which incomplete multipart uploads (a crashed backup's half-written pack) are aborted."
  type        = number
  default     = 2
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS; null creates one. cairn encrypts everything itself: this is defence in depth."
  type        = string
  default     = null
}

variable "delete_principal_arns" {
  description = "IAM role ARNs allowed to delete objects anywhere under the prefix (the maintenance job's role). Everyone else may delete only lock objects."
  type        = list(string)
}

variable "force_destroy" {
  description = "Allow destroying a non-empty bucket (never for real backups)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
