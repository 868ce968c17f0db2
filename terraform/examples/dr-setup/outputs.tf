output "repo_url" {
  description = "The primary's repository."
  value       = "${module.bucket.repo_url_base}/${var.primary_cluster}"
}

output "role_arns" {
  description = "IAM role per job."
  value       = module.roles.role_arns
}

output "primary_cronjobs" {
  description = "CronJobs in the primary cluster."
  value       = module.primary.cronjobs
}

output "standby_namespace" {
  description = "Where restores run in the standby cluster."
  value       = module.standby.namespace
}
