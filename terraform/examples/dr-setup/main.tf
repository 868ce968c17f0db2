# A primary cluster backed up into a locked bucket, and a standby cluster prepared to restore
# from it. The age identity that decrypts is not in Terraform: it is created as a Secret in the
# standby's cairn-restore namespace when a restore is due (k8s-manifests/restore/disaster-recovery.md).

provider "aws" {
  region = var.region
}

provider "kubernetes" {
  alias       = "primary"
  config_path = var.primary_kubeconfig
}

provider "kubernetes" {
  alias       = "standby"
  config_path = var.standby_kubeconfig
}

data "aws_caller_identity" "current" {}

locals {
  # Known before the roles exist: the bucket policy names the one role allowed to delete.
  maintain_role_arn = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:role/${var.primary_cluster}-cairn-maintain"
}

module "bucket" {
  source                = "../../modules/bucket-aws"
  name                  = var.bucket_name
  object_lock_days      = var.object_lock_days
  delete_principal_arns = [local.maintain_role_arn]
}

module "roles" {
  source            = "../../modules/irsa-roles"
  name_prefix       = var.primary_cluster
  oidc_provider_arn = var.primary_oidc_provider_arn
  oidc_issuer       = var.primary_oidc_issuer
  bucket_arn        = module.bucket.bucket_arn
  repo_prefix       = "${module.bucket.prefix}/${var.primary_cluster}"
  kms_key_arn       = module.bucket.kms_key_arn
}

module "primary" {
  source       = "../../modules/cluster"
  providers    = { kubernetes = kubernetes.primary }
  cluster_name = var.primary_cluster
  repo_url     = "${module.bucket.repo_url_base}/${var.primary_cluster}"
  write_key    = var.write_key
  role_arns    = module.roles.role_arns
  env          = { AWS_REGION = var.region }
}

module "standby" {
  source       = "../../modules/cluster"
  providers    = { kubernetes = kubernetes.standby }
  role         = "standby"
  namespace    = "cairn-restore"
  cluster_name = "${var.primary_cluster}-standby"
  repo_url     = "${module.bucket.repo_url_base}/${var.primary_cluster}"
  env          = { AWS_REGION = var.region }
}
