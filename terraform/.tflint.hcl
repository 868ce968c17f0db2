# tflint with its bundled Terraform ruleset only (plugins would be downloaded from the
# network, which CI here has not): naming, typed and documented variables and outputs,
# pinned versions, unused declarations.
config {
  call_module_type = "local"
}

plugin "terraform" {
  enabled = true
  preset  = "all"
}
