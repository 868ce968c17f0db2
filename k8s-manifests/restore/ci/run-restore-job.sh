#!/usr/bin/env bash
# Launch a one-off cairn restore Job from the template (job-manifests.yaml), follow it, and
# exit with the restore's own exit code (0 ok, 3 some objects failed, 2 bad selection,
# 4 denied or damaged, 1 anything retryable, including a Job that never ran).
#
#   run-restore-job.sh [options] -- RESTORE-ARGS...
#     -n NAMESPACE     where the restore kustomization is applied (default cairn-restore)
#     -t TEMPLATE      the Job template (default: job-manifests.yaml beside this directory)
#     -i IMAGE         the cairn-restore image (default: the template's)
#     -r REPO          repository URL (CAIRN_REPO)
#     -e SECRET        a Secret whose keys become environment variables (store credentials)
#     -a ACCOUNT       the restore's ServiceAccount (default: the template's, cairn-restore)
#     -w SECONDS       how long to wait for the Job (default 3600)
#     -k KUBECONFIG    (default: $KUBECONFIG)
#   RESTORE-ARGS are cairn-restore's arguments, e.g. `manifests -n prod --snapshot latest`.
#
# Needs only kubectl. What CI pipelines run (see github-actions-restore.yaml); the test
# suite runs this very script against its API server.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns=cairn-restore template="$here/../job-manifests.yaml" image="" repo="" env_secret="" account="" wait=3600
kc=${KUBECONFIG:-}
KUBECTL=${KUBECTL:-kubectl}
while getopts "n:t:i:r:e:a:w:k:" o; do
  case $o in
    n) ns=$OPTARG ;; t) template=$OPTARG ;; i) image=$OPTARG ;; r) repo=$OPTARG ;;
    e) env_secret=$OPTARG ;; a) account=$OPTARG ;; w) wait=$OPTARG ;; k) kc=$OPTARG ;;
    *) echo "usage: $0 [-n ns] [-t template] [-i image] [-r repo] [-e secret] [-w seconds] [-k kubeconfig] -- ARGS..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "$0: give the restore's arguments after --" >&2; exit 2; }
k() { if [ -n "$kc" ]; then "$KUBECTL" --kubeconfig "$kc" "$@"; else "$KUBECTL" "$@"; fi; }
log() { printf '[restore-job %s] %s\n' "$(date +%T)" "$*" >&2; }

json_list() {  # arguments → a JSON array of strings
  local out="" a
  for a in "$@"; do
    a=${a//\\/\\\\}; a=${a//\"/\\\"}
    out+="${out:+,}\"$a\""
  done
  printf '[%s]' "$out"
}

name="cairn-restore-$(date +%Y%m%d%H%M%S)-$RANDOM"
patch="[{\"op\":\"replace\",\"path\":\"/metadata/name\",\"value\":\"$name\"}"
patch+=",{\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/args\",\"value\":$(json_list "$@")}"
[ -n "$image" ] && patch+=",{\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/image\",\"value\":\"$image\"}"
[ -n "$repo" ] && patch+=",{\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/env/0\",\"value\":{\"name\":\"CAIRN_REPO\",\"value\":\"$repo\"}}"
[ -n "$account" ] && patch+=",{\"op\":\"replace\",\"path\":\"/spec/template/spec/serviceAccountName\",\"value\":\"$account\"}"
[ -n "$env_secret" ] && patch+=",{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/envFrom\",\"value\":[{\"secretRef\":{\"name\":\"$env_secret\"}}]}"
patch+="]"

log "creating Job $ns/$name: cairn-restore $*"
k patch --local -f "$template" --type=json -p "$patch" -o json | k create -n "$ns" -f - >/dev/null

# Follow the logs while it runs (best effort: the pod may not have started yet).
( for _ in $(seq 1 60); do
    k logs -n "$ns" "job/$name" -f 2>/dev/null && break
    sleep 2
  done ) &
follower=$!
trap 'kill $follower 2>/dev/null || true' EXIT

deadline=$((SECONDS + wait))
state=""
while [ $SECONDS -lt $deadline ]; do
  state=$(k get job -n "$ns" "$name" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
  case " $state " in
    *" Complete "*|*" Failed "*) break ;;
  esac
  sleep 2
done

code=$(k get pods -n "$ns" -l "job-name=$name" -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.exitCode}' 2>/dev/null || true)
message=$(k get pods -n "$ns" -l "job-name=$name" -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}' 2>/dev/null || true)
kill $follower 2>/dev/null || true
if [ -z "$code" ]; then
  log "Job $name did not run to an end within ${wait}s (conditions: ${state:-none}); see kubectl describe job -n $ns $name"
  exit 1
fi
[ -n "$message" ] && printf '%s\n' "$message"
log "Job $name ended with exit code $code"
exit "$code"
