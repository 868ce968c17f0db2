output "role_arns" {
  description = "IAM role ARN per job (etcd-snapshot, manifest-export, pvc-ingest, maintain, restore): annotate each ServiceAccount with eks.amazonaws.com/role-arn."
  value       = { for k, r in aws_iam_role.job : k => r.arn }
}

output "delete_principal_arns" {
  description = "The roles allowed to delete data (for bucket-aws delete_principal_arns)."
  value       = [aws_iam_role.job["maintain"].arn]
}
