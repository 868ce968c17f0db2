variable "role" {
  description = "backup: the namespace with the backup CronJobs (write key only); standby: the restore namespace of a standby cluster (no CronJobs, no write key; the identity Secret is created out of band at restore time)."
  type        = string
  default     = "backup"
  validation {
    condition     = contains(["backup", "standby"], var.role)
    error_message = "role must be backup or standby."
  }
}

variable "namespace" {
  description = "Namespace for cairn (backup role) or the restore side (standby role)."
  type        = string
  default     = "cairn"
}

variable "cluster_name" {
  description = "Cluster name recorded in snapshots (CAIRN_CLUSTER)."
  type        = string
}

variable "repo_url" {
  description = "Repository URL, e.g. s3://bucket/cairn/prod (bucket-aws repo_url_base + /cluster)."
  type        = string
}

variable "write_key" {
  description = "The write credential (cairn init --write-key-out), for the backup role. It cannot decrypt backups; it is still a secret."
  type        = string
  default     = null
  sensitive   = true
}

variable "env" {
  description = "Extra repository settings for every job (AWS_REGION, CAIRN_STORE_TIMEOUT...)."
  type        = map(string)
  default     = {}
}

variable "role_arns" {
  description = "IRSA role ARN per job (irsa-roles output role_arns); empty for none."
  type        = map(string)
  default     = {}
}

variable "image_registry" {
  description = "Registry and path of cairn's images."
  type        = string
  default     = "ghcr.io/cairn-backup"
}

variable "image_tag" {
  description = "Tag of cairn's images."
  type        = string
  default     = "0.1.0"
}

variable "schedules" {
  description = "Cron schedules per job; a job without one is not created."
  type        = map(string)
  default = {
    "etcd-snapshot"   = "*/30 * * * *"
    "manifest-export" = "15 * * * *"
    "pvc-ingest"      = "30 1 * * *"
    "maintain"        = "0 4 * * *"
  }
}

variable "job_args" {
  description = "Extra arguments per job (e.g. pvc-ingest: [\"--exclude-namespace\", \"kube-system\"]; maintain: retention flags)."
  type        = map(list(string))
  default = {
    "maintain" = ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12", "--check-subset", "5%"]
  }
}

variable "etcd_endpoints" {
  description = "etcd client URLs for the etcd snapshot job (kubeadm: https://<node>:2379, comma-separated)."
  type        = string
  default     = "https://127.0.0.1:2379"
}

variable "etcd_client_secret" {
  description = "Secret (in the namespace) with ca.crt, tls.crt, tls.key of an etcd client certificate."
  type        = string
  default     = "cairn-etcd-client"
}
