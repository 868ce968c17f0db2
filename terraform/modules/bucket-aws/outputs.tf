output "bucket" {
  description = "Bucket name."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "Bucket ARN (for IAM policies)."
  value       = aws_s3_bucket.this.arn
}

output "prefix" {
  description = "Key prefix of the repositories."
  value       = var.prefix
}

output "kms_key_arn" {
  description = "The SSE-KMS key (writers need kms:GenerateDataKey, readers kms:Decrypt)."
  value       = local.kms_key_arn
}

output "repo_url_base" {
  description = "Repository URL without the cluster part: append /<cluster>."
  value       = "s3://${aws_s3_bucket.this.id}/${var.prefix}"
}
