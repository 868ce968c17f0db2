# The test world's node (#11), sourced by `up` after the control plane: a real single-node
# cluster on this machine, with every path, socket and port of its own under $STATE:
#
#   containerd + runc (Debian packages) ─ CRI ─ kubelet ─ kube-apiserver ─ kube-scheduler
#   CNI bridge $NODE_BRIDGE ($NODE_IP/24, no NAT, no default route in pods, no IP forwarding)
#   kube-proxy (iptables): pods reach the API server through the `kubernetes` Service
#   our hostpath CSI driver (tests/node) + the real external-provisioner, snapshot-controller
#   and csi-snapshotter (VolumeGroupSnapshots are GA in v8.7: on by default)
#
# Pods reach the world's services (API server, S3, the mTLS etcd) on $NODE_IP, the bridge's
# host address, which those services listen on. Nothing is pulled: the sandbox image and
# cairn's images are imported from archives built offline (images/build.sh oci).
# Expects from `up`: STATE, pki, cert, kubeconfig, start, wait_for, running, log, die,
# BIN_KUBE, PORT_KUBE, NODE_*; reads CAIRN_TESTENV_IMAGES (default: the checkout's
# target/images).

NODE_NAME=cairn-node
CSI_DRIVER=hostpath.csi.cairn.test
containerd_sock=$STATE/containerd/containerd.sock
kubelet_root=$STATE/kubelet
csi_sock=$kubelet_root/plugins/$CSI_DRIVER/csi.sock
BIN_CSI="$CAIRN_TESTENV_CACHE"
kubectl_admin() { "$BIN_KUBE/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

node_network() {
  # The bridge exists before anything binds to its address. Pods get a route to it and to
  # the service range only; with no forwarding on the host, nothing they send can leave.
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr show dev "$NODE_BRIDGE" | grep -q " $NODE_IP/" || ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat >"$STATE/cni/net.d/10-cairn.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "cairn-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "rangeStart": "${NODE_IP%.*}.10"}]],
        "routes": [{"dst": "$NODE_SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
}

# CAP_SYS_RESOURCE is capability 24 of the effective set.
has_cap_sys_resource() {
  local eff; eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  (( (16#$eff >> 24) & 1 ))
}

start_containerd() {
  local d=$STATE/containerd
  mkdir -p "$d"/{root,state,opt,runc}
  cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$containerd_sock"
[ttrpc]
  address = "$containerd_sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODE_PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # Root here may lack CAP_SYS_RESOURCE (then no process can lower its oom_score_adj, and
  # the kubelet's -998 for the sandbox makes runc fail): keep scores at or above ours.
  restrict_oom_score_adj = $(has_cap_sys_resource && echo false || echo true)
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$d/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
TOML
  start containerd containerd --config "$d/config.toml"
  wait_for containerd 30 ctr --address "$containerd_sock" version
}

# The test workload image (test code, not product): Debian's sqlite3 with its libraries and
# a static busybox as /bin/sh (its applets run without links), for the hook and dump tests'
# database pods. Copied from this machine's packages (tests/env/install-deps), nothing pulled.
workload_image() {
  local out=$1 base="$STATE/images/workload-base" adds=() lib
  rm -rf "$base"; mkdir -p "$base"
  python3 "$here/../../images/oci.py" base "$base"
  adds+=(--add "/bin/busybox=/bin/sh" --add "/usr/bin/sqlite3=/usr/bin/sqlite3")
  for lib in $(ldd /usr/bin/sqlite3 | grep -o '/[^ ]*'); do
    adds+=(--add "$(readlink -f "$lib")=$lib")
  done
  python3 "$here/../../images/oci.py" archive --tag "$NODE_WORKLOAD_IMAGE" --base "$base" \
    "${adds[@]}" --entrypoint /bin/sh --out "$out" >/dev/null || die "building the workload image"
}

# Every image archive in the images directory, the sandbox and the workload image, into the
# CRI namespace.
import_images() {
  local dir=${CAIRN_TESTENV_IMAGES:-$here/../../target/images}
  local pause="$STATE/images/pause.tar"
  mkdir -p "$STATE/images" "$STATE/images/pause-base"
  if [ ! -f "$pause" ]; then
    python3 "$here/../../images/oci.py" base "$STATE/images/pause-base"
    python3 "$here/../../images/oci.py" archive --tag "$NODE_PAUSE_IMAGE" --base "$STATE/images/pause-base" \
      --add "$BIN_NODE/pause=/pause" --entrypoint /pause --out "$pause" >/dev/null
  fi
  local workload="$STATE/images/workload.tar"
  [ -f "$workload" ] || workload_image "$workload"
  local archives=("$pause" "$workload")
  if compgen -G "$dir/*.tar" >/dev/null; then archives+=("$dir"/*.tar); else
    log "no image archives in $dir (images/build.sh oci): only the sandbox image is imported"
  fi
  local a
  for a in "${archives[@]}"; do
    ctr --address "$containerd_sock" -n k8s.io images import --no-unpack=false "$a" >/dev/null \
      || die "importing $a"
  done
  log "imported ${#archives[@]} image archives"
}

start_kubelet() {
  mkdir -p "$kubelet_root" "$STATE/pod-logs"
  cat >"$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $PORT_KUBELET
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $PORT_KUBELET_HEALTHZ
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/kube-ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://$containerd_sock
failSwapOn: false
podLogsDir: $STATE/pod-logs
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Never collect images: nothing can be pulled back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 60
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusReportFrequency: 10s
YAML
  start kubelet "$BIN_KUBE/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/node.kubeconfig" \
    --root-dir "$kubelet_root" --cert-dir "$kubelet_root/pki" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --v=1
}

start_kube_proxy() {
  start kube-scheduler "$BIN_KUBE/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$PORT_SCHEDULER" --leader-elect=false --v=1
  start kube-proxy "$BIN_KUBE/kube-proxy" --kubeconfig "$STATE/proxy.kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$NODE_POD_CIDR" --bind-address "$NODE_IP" \
    --healthz-bind-address "127.0.0.1:$PORT_PROXY_HEALTHZ" --metrics-bind-address "127.0.0.1:$PORT_PROXY_METRICS" \
    --nodeport-addresses "$NODE_POD_CIDR" --conntrack-max-per-core 0 --v=1
}

start_csi() {
  mkdir -p "$STATE/csi" "$(dirname "$csi_sock")" "$kubelet_root/plugins_registry"
  start csi-hostpath "$BIN_NODE/csi-hostpath" --endpoint "unix://$csi_sock" --driver-name "$CSI_DRIVER" \
    --node-id "$NODE_NAME" --state-dir "$STATE/csi" --kubelet-registration-dir "$kubelet_root/plugins_registry"
  wait_for csi-hostpath 30 test -S "$csi_sock"
  local kc="$STATE/admin.kubeconfig"
  start csi-provisioner "$BIN_CSI/csi-provisioner-$CSI_PROVISIONER_VERSION/csi-provisioner" \
    --csi-address "$csi_sock" --kubeconfig "$kc" --leader-election=false --extra-create-metadata \
    --timeout 60s --http-endpoint "127.0.0.1:$PORT_CSI_PROVISIONER" --v=2
  start snapshot-controller "$BIN_CSI/snapshot-controller-$CSI_SNAPSHOTTER_VERSION/snapshot-controller" \
    --kubeconfig "$kc" --leader-election=false \
    --http-endpoint "127.0.0.1:$PORT_SNAPSHOT_CONTROLLER" --v=2
  start csi-snapshotter "$BIN_CSI/csi-snapshotter-$CSI_SNAPSHOTTER_VERSION/csi-snapshotter" \
    --csi-address "$csi_sock" --kubeconfig "$kc" --leader-election=false \
    --extra-create-metadata --timeout 60s --http-endpoint "127.0.0.1:$PORT_CSI_SNAPSHOTTER" --v=2
}

# Objects every test relies on: the node's role, the snapshot CRDs, the CSI driver and its
# classes (the defaults, as on a cloud cluster).
node_objects() {
  kubectl_admin apply --server-side -f "$CAIRN_SHARED_FIXTURES/crds/csi-snapshot/" >/dev/null
  kubectl_admin wait --for condition=established --timeout 60s crd --all >/dev/null
  kubectl_admin apply --server-side -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: $CSI_DRIVER}
spec: {attachRequired: false, podInfoOnMount: true, volumeLifecycleModes: [Persistent]}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: cairn-hostpath
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: $CSI_DRIVER
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: false
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: cairn-hostpath
  annotations: {snapshot.storage.kubernetes.io/is-default-class: "true"}
driver: $CSI_DRIVER
deletionPolicy: Delete
---
apiVersion: groupsnapshot.storage.k8s.io/v1
kind: VolumeGroupSnapshotClass
metadata:
  name: cairn-hostpath
  annotations: {groupsnapshot.storage.kubernetes.io/is-default-class: "true"}
driver: $CSI_DRIVER
deletionPolicy: Delete
YAML
}

start_node() {
  start_containerd
  import_images
  start_kube_proxy
  start_kubelet
  wait_for kubelet 120 sh -c "'$BIN_KUBE/kubectl' --kubeconfig '$STATE/admin.kubeconfig' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  kubectl_admin label node "$NODE_NAME" node-role.kubernetes.io/control-plane= --overwrite >/dev/null
  node_objects
  start_csi
  wait_for csi-hostpath 60 sh -c "'$BIN_KUBE/kubectl' --kubeconfig '$STATE/admin.kubeconfig' get csinode $NODE_NAME -o jsonpath='{.spec.drivers[*].name}' | grep -q '$CSI_DRIVER'"
}
