# cairn in one cluster, from variables: the namespace, the repository settings and write key,
# one ServiceAccount per job (annotated with its IRSA role), least-privilege RBAC, and the
# CronJobs (the same specs as k8s-manifests/base). The standby role only prepares the restore
# namespace.

locals {
  backup = var.role == "backup"
  labels = { "app.kubernetes.io/part-of" = "cairn" }
  jobs = local.backup ? {
    for name, schedule in var.schedules : name => schedule
    if contains(["etcd-snapshot", "manifest-export", "pvc-ingest", "maintain"], name)
  } : {}
  # The only jobs that talk to the API server.
  api_jobs = ["manifest-export", "pvc-ingest"]
  base_args = {
    "etcd-snapshot" = [
      "--endpoints", var.etcd_endpoints, "--cacert", "/var/run/cairn/etcd/ca.crt",
      "--cert", "/var/run/cairn/etcd/tls.crt", "--key", "/var/run/cairn/etcd/tls.key",
    ]
    "manifest-export" = []
    "pvc-ingest"      = ["run"]
    "maintain"        = []
  }
  service_accounts = local.backup ? toset([for j in keys(local.jobs) : "cairn-${j}"]) : toset(["cairn-restore"])
}

resource "kubernetes_namespace_v1" "this" {
  metadata {
    name = var.namespace
    labels = merge(local.labels, {
      "pod-security.kubernetes.io/enforce" = local.backup ? "restricted" : "baseline"
    })
  }
}

resource "kubernetes_config_map_v1" "repo" {
  metadata {
    name      = "cairn-repo"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.labels
  }
  data = merge({
    CAIRN_REPO       = var.repo_url
    CAIRN_CLUSTER    = var.cluster_name
    CAIRN_LOG_FORMAT = "json"
    CAIRN_LOCK_WAIT  = "10m"
    }, local.backup ? {
    CAIRN_WRITE_KEY    = "/var/run/cairn/write-key/write-key"
    CAIRN_INGEST_IMAGE = "${var.image_registry}/cairn-pvc-ingest:${var.image_tag}"
  } : {}, var.env)
}

resource "kubernetes_secret_v1" "write_key" {
  count = local.backup ? 1 : 0
  metadata {
    name      = "cairn-write-key"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.labels
  }
  data = { "write-key" = var.write_key }
}

resource "kubernetes_service_account_v1" "job" {
  for_each = local.service_accounts
  metadata {
    name      = each.key
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.labels
    annotations = lookup(var.role_arns, trimprefix(each.key, "cairn-"), null) == null ? {} : {
      "eks.amazonaws.com/role-arn" = var.role_arns[trimprefix(each.key, "cairn-")]
    }
  }
  # IRSA projects its token through the service account: jobs without API rights still
  # need it mounted when they have a role.
  automount_service_account_token = contains(local.api_jobs, trimprefix(each.key, "cairn-")) || contains(keys(var.role_arns), trimprefix(each.key, "cairn-"))
}

resource "kubernetes_cluster_role_v1" "manifest_export" {
  count = contains(keys(local.jobs), "manifest-export") ? 1 : 0
  metadata {
    name   = "cairn-manifest-export"
    labels = local.labels
  }
  rule {
    api_groups = ["*"]
    resources  = ["*"]
    verbs      = ["get", "list"]
  }
}

resource "kubernetes_cluster_role_v1" "pvc_ingest" {
  count = contains(keys(local.jobs), "pvc-ingest") ? 1 : 0
  metadata {
    name   = "cairn-pvc-ingest"
    labels = local.labels
  }
  rule {
    api_groups = [""]
    resources  = ["persistentvolumeclaims"]
    verbs      = ["get", "list", "create", "delete"]
  }
  rule {
    api_groups = ["snapshot.storage.k8s.io"]
    resources  = ["volumesnapshots"]
    verbs      = ["get", "list", "create", "delete"]
  }
  rule {
    api_groups = ["groupsnapshot.storage.k8s.io"]
    resources  = ["volumegroupsnapshots"]
    verbs      = ["get", "list", "create", "delete"]
  }
  rule {
    api_groups = ["batch"]
    resources  = ["jobs"]
    verbs      = ["get", "list", "create", "patch", "delete"]
  }
  rule {
    api_groups = [""]
    resources  = ["pods"]
    verbs      = ["get", "list"]
  }
  rule {
    api_groups = [""]
    resources  = ["secrets"]
    verbs      = ["create"]
  }
  rule {
    api_groups = ["storage.k8s.io"]
    resources  = ["storageclasses"]
    verbs      = ["get"]
  }
  rule {
    api_groups = [""]
    resources  = ["persistentvolumes"]
    verbs      = ["get"]
  }
  rule {
    api_groups = ["snapshot.storage.k8s.io"]
    resources  = ["volumesnapshotclasses"]
    verbs      = ["get", "list"]
  }
  rule {
    api_groups = ["snapshot.storage.k8s.io"]
    resources  = ["volumesnapshotcontents"]
    verbs      = ["get"]
  }
  rule {
    api_groups = ["groupsnapshot.storage.k8s.io"]
    resources  = ["volumegroupsnapshotclasses"]
    verbs      = ["get", "list"]
  }
  rule {
    api_groups = ["groupsnapshot.storage.k8s.io"]
    resources  = ["volumegroupsnapshotcontents"]
    verbs      = ["get"]
  }
}

# The standby's restore: apply objects (get/create/patch everywhere, escalate/bind for RBAC
# objects), and run PVC writer Jobs (delete jobs, list pods). See k8s-manifests/restore/rbac.yaml.
resource "kubernetes_cluster_role_v1" "restore" {
  count = local.backup ? 0 : 1
  metadata {
    name   = "cairn-restore"
    labels = local.labels
  }
  rule {
    api_groups = ["*"]
    resources  = ["*"]
    verbs      = ["get", "create", "patch"]
  }
  rule {
    api_groups = ["rbac.authorization.k8s.io"]
    resources  = ["roles", "clusterroles"]
    verbs      = ["escalate", "bind"]
  }
  rule {
    api_groups = ["batch"]
    resources  = ["jobs"]
    verbs      = ["delete"]
  }
  rule {
    api_groups = [""]
    resources  = ["pods"]
    verbs      = ["list"]
  }
}

resource "kubernetes_cluster_role_binding_v1" "job" {
  for_each = toset(concat(
    [for r in kubernetes_cluster_role_v1.manifest_export : r.metadata[0].name],
    [for r in kubernetes_cluster_role_v1.pvc_ingest : r.metadata[0].name],
    [for r in kubernetes_cluster_role_v1.restore : r.metadata[0].name],
  ))
  metadata {
    name   = each.key
    labels = local.labels
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = each.key
  }
  subject {
    kind      = "ServiceAccount"
    name      = each.key
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
}

resource "kubernetes_cron_job_v1" "job" {
  for_each = local.jobs
  metadata {
    name      = "cairn-${each.key}"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.labels
  }
  spec {
    schedule                      = each.value
    concurrency_policy            = "Forbid"
    starting_deadline_seconds     = 900
    successful_jobs_history_limit = 3
    failed_jobs_history_limit     = 3
    job_template {
      metadata {
        labels = local.labels
      }
      spec {
        backoff_limit              = 2
        active_deadline_seconds    = each.key == "pvc-ingest" ? 43200 : 3600
        ttl_seconds_after_finished = 86400
        pod_failure_policy {
          rule {
            action = "FailJob"
            on_exit_codes {
              container_name = "cairn"
              operator       = "In"
              values         = each.key == "pvc-ingest" ? [2, 3, 4] : [2, 4]
            }
          }
          rule {
            action = "Ignore"
            on_exit_codes {
              container_name = "cairn"
              operator       = "In"
              values         = [5]
            }
          }
          rule {
            action = "Ignore"
            on_pod_condition {
              type = "DisruptionTarget"
            }
          }
        }
        template {
          metadata {
            labels = merge(local.labels, { "app.kubernetes.io/name" = "cairn-${each.key}" })
          }
          spec {
            service_account_name             = kubernetes_service_account_v1.job["cairn-${each.key}"].metadata[0].name
            restart_policy                   = "Never"
            termination_grace_period_seconds = each.key == "pvc-ingest" ? 150 : 30
            node_selector                    = each.key == "etcd-snapshot" ? { "node-role.kubernetes.io/control-plane" = "" } : null
            dynamic "toleration" {
              for_each = each.key == "etcd-snapshot" ? [1] : []
              content {
                key      = "node-role.kubernetes.io/control-plane"
                operator = "Exists"
                effect   = "NoSchedule"
              }
            }
            security_context {
              run_as_non_root = true
              run_as_user     = 65532
              run_as_group    = 65532
              fs_group        = 65532
              seccomp_profile {
                type = "RuntimeDefault"
              }
            }
            container {
              name  = "cairn"
              image = "${var.image_registry}/cairn-${each.key}:${var.image_tag}"
              args  = concat(local.base_args[each.key], lookup(var.job_args, each.key, []))
              env_from {
                config_map_ref {
                  name = kubernetes_config_map_v1.repo.metadata[0].name
                }
              }
              resources {
                requests = { cpu = "100m", memory = "128Mi" }
                limits   = { memory = each.key == "maintain" ? "2Gi" : "512Mi" }
              }
              security_context {
                allow_privilege_escalation = false
                read_only_root_filesystem  = true
                capabilities {
                  drop = ["ALL"]
                }
              }
              volume_mount {
                name       = "write-key"
                mount_path = "/var/run/cairn/write-key"
                read_only  = true
              }
              dynamic "volume_mount" {
                for_each = each.key == "etcd-snapshot" ? [1] : []
                content {
                  name       = "etcd-client"
                  mount_path = "/var/run/cairn/etcd"
                  read_only  = true
                }
              }
            }
            volume {
              name = "write-key"
              secret {
                secret_name  = kubernetes_secret_v1.write_key[0].metadata[0].name
                default_mode = "0440"
              }
            }
            dynamic "volume" {
              for_each = each.key == "etcd-snapshot" ? [1] : []
              content {
                name = "etcd-client"
                secret {
                  secret_name  = var.etcd_client_secret
                  default_mode = "0440"
                }
              }
            }
          }
        }
      }
    }
  }
}
