output "namespace" {
  description = "The namespace cairn lives in."
  value       = kubernetes_namespace_v1.this.metadata[0].name
}

output "cronjobs" {
  description = "Names of the CronJobs created (backup role)."
  value       = [for c in kubernetes_cron_job_v1.job : c.metadata[0].name]
}
