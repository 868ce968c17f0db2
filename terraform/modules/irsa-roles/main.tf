# One IAM role per cairn job, assumed through IRSA by that job's ServiceAccount only.
#  - writers (etcd-snapshot, manifest-export, pvc-ingest): put, get, list; delete only lock
#    objects. A compromised cluster cannot erase its backups.
#  - maintain: the above plus delete (prune, forget).
#  - restore: get and list, and locks (it never writes data).

locals {
  writers = {
    "etcd-snapshot"   = ["${var.namespace}:cairn-etcd-snapshot"]
    "manifest-export" = ["${var.namespace}:cairn-manifest-export"]
    "pvc-ingest"      = concat(["${var.namespace}:cairn-pvc-ingest"], var.ingest_service_accounts)
  }
  roles = merge(local.writers, {
    "maintain" = ["${var.namespace}:cairn-maintain"]
    "restore"  = ["cairn-restore:cairn-restore"]
  })
  objects = "${var.bucket_arn}/${var.repo_prefix}"
}

data "aws_iam_policy_document" "assume" {
  for_each = local.roles
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = [for sa in each.value : "system:serviceaccount:${sa}"]
    }
  }
}

resource "aws_iam_role" "job" {
  for_each           = local.roles
  name               = "${var.name_prefix}-cairn-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
  tags               = var.tags
}

data "aws_iam_policy_document" "access" {
  for_each = local.roles
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.repo_prefix, "${var.repo_prefix}/*"]
    }
  }
  statement {
    sid       = "Read"
    actions   = ["s3:GetObject"]
    resources = ["${local.objects}/*"]
  }
  statement {
    sid       = "Locks"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.objects}/locks/*"]
  }
  dynamic "statement" {
    for_each = each.key == "restore" ? [] : [1]
    content {
      sid       = "Write"
      actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
      resources = ["${local.objects}/*"]
    }
  }
  dynamic "statement" {
    for_each = each.key == "maintain" ? [1] : []
    content {
      sid       = "Prune"
      actions   = ["s3:DeleteObject"]
      resources = ["${local.objects}/*"]
    }
  }
  statement {
    sid       = "Kms"
    actions   = each.key == "restore" ? ["kms:Decrypt"] : ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "access" {
  for_each = local.roles
  name     = "cairn-bucket"
  role     = aws_iam_role.job[each.key].id
  policy   = data.aws_iam_policy_document.access[each.key].json
}
