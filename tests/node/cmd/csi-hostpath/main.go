// Command csi-hostpath is a small single-node CSI driver for cairn's tests.
// It keeps every volume and snapshot as plain files on the local disk, so
// tests can look at (and corrupt, or fill) volume data directly.
//
// Usage:
//
//	csi-hostpath --endpoint unix:///path/csi.sock --driver-name NAME \
//	    --node-id NODE --state-dir DIR [--kubelet-registration-dir DIR]
//
// # State layout (the contract tests rely on)
//
// Volume data of handle H (a PV's spec.csi.volumeHandle) is at
// STATE/volumes/H for a filesystem (mount) volume, a plain directory, or at
// STATE/volumes/H.img for a block volume, a sparse image file of the
// volume's size. Snapshots are copies, at STATE/snapshots/S or
// STATE/snapshots/S.img for snapshot handle S. Each of these has a JSON
// metadata file beside it (H.json, S.json) and each volume group snapshot
// has STATE/groups/G.json; a restarted driver learns what exists from
// those files alone. A handle is the CSI name itself when that is made
// only of [A-Za-z0-9_-], starts with a letter or digit and is at most 128
// bytes long (so the PV "pvc-<uid>" gets the handle "pvc-<uid>"), otherwise
// "h" followed by 32 hex digits of the name's SHA-256. The snapshot of volume V taken as part of group
// snapshot G has the handle derived the same way from "G-V".
//
// # Fault injection
//
// Tests create files under STATE/control/H/, where H is the source
// volume's handle; they are read on every call, never cached:
//
//   - fail-snapshot: while it exists, CreateSnapshot of H, and
//     CreateVolumeGroupSnapshot of any group containing H, fail with
//     codes.Internal and the file's contents (trimmed) as the message.
//     Nothing is created; a retry after the file is removed succeeds.
//   - snapshot-never-ready: while it exists, every snapshot of H is
//     reported with ready_to_use=false, by CreateSnapshot (including its
//     retries), ListSnapshots, GetSnapshot and the group snapshot RPCs.
//     The data is copied all the same, so removing the file makes the
//     snapshot ready on the next call.
//
// And STATE/control/publish-blocked/NS: while it exists, NodePublishVolume
// for pods of namespace NS fails with codes.Unavailable (the kubelet
// retries), so those pods wait in ContainerCreating. It needs the CSIDriver
// object's podInfoOnMount, which the test world sets.
//
// # What it implements
//
// Identity, Controller (create/delete/list volumes with mount and block
// access, clones, snapshots, list/get snapshots), GroupController (volume
// group snapshots) and Node (publish/unpublish by bind mount; block volumes
// through a loop device). There is no topology, no attach and no staging.
// With --kubelet-registration-dir it also serves the kubelet's
// plugin-registration service, standing in for node-driver-registrar.
//
// Every RPC is logged to stderr as one line. All calls are serialised by a
// single mutex: volumes in tests are small and correctness matters more
// than throughput here.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

const vendorVersion = "0.1.0"

// driver is the state shared by all CSI services.
type driver struct {
	name   string
	nodeID string
	store  *store

	// mu serialises every state-changing RPC (see the package comment).
	mu sync.Mutex
}

func main() {
	endpoint := flag.String("endpoint", "", "CSI endpoint, unix:///path/csi.sock")
	driverName := flag.String("driver-name", "", "CSI driver name, e.g. hostpath.csi.cairn.test")
	nodeID := flag.String("node-id", "", "node id reported by NodeGetInfo")
	stateDir := flag.String("state-dir", "", "directory that holds all volumes, snapshots and metadata")
	regDir := flag.String("kubelet-registration-dir", "", "if set, serve kubelet plugin registration in this directory (e.g. /var/lib/kubelet/plugins_registry)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	if *endpoint == "" || *driverName == "" || *nodeID == "" || *stateDir == "" {
		fmt.Fprintln(os.Stderr, "csi-hostpath: --endpoint, --driver-name, --node-id and --state-dir are required")
		flag.Usage()
		os.Exit(2)
	}
	sockPath, err := parseEndpoint(*endpoint)
	if err != nil {
		log.Fatalf("csi-hostpath: %v", err)
	}
	st, err := openStore(*stateDir)
	if err != nil {
		log.Fatalf("csi-hostpath: %v", err)
	}
	d := &driver{name: *driverName, nodeID: *nodeID, store: st}

	csiSrv := grpc.NewServer(grpc.UnaryInterceptor(logRPC))
	csi.RegisterIdentityServer(csiSrv, &identityServer{d: d})
	csi.RegisterControllerServer(csiSrv, &controllerServer{d: d})
	csi.RegisterGroupControllerServer(csiSrv, &groupControllerServer{d: d})
	csi.RegisterNodeServer(csiSrv, &nodeServer{d: d})
	csiLis, err := listenUnix(sockPath)
	if err != nil {
		log.Fatalf("csi-hostpath: %v", err)
	}
	servers := []*grpc.Server{csiSrv}
	sockets := []string{sockPath}
	go serve(csiSrv, csiLis)
	log.Printf("csi-hostpath %s: driver %q node %q serving CSI on %s, state in %s",
		vendorVersion, d.name, d.nodeID, sockPath, st.root)

	if *regDir != "" {
		regPath := filepath.Join(*regDir, d.name+"-reg.sock")
		regSrv := newRegistrationServer(d.name, sockPath)
		regLis, err := listenUnix(regPath)
		if err != nil {
			log.Fatalf("csi-hostpath: %v", err)
		}
		servers = append(servers, regSrv)
		sockets = append(sockets, regPath)
		go serve(regSrv, regLis)
		log.Printf("serving kubelet plugin registration on %s", regPath)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	log.Printf("received %v, shutting down", <-sig)
	for _, s := range servers {
		stopWithin(s, 5*time.Second)
	}
	for _, p := range sockets {
		_ = os.Remove(p)
	}
}

func serve(s *grpc.Server, l net.Listener) {
	if err := s.Serve(l); err != nil {
		log.Fatalf("csi-hostpath: serve: %v", err)
	}
}

// stopWithin lets in-flight RPCs finish, but does not wait forever for a
// client that keeps its stream open.
func stopWithin(s *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		s.Stop()
	}
}

// parseEndpoint accepts unix:///abs/path, unix:/abs/path or a bare path.
func parseEndpoint(ep string) (string, error) {
	p := ep
	switch {
	case strings.HasPrefix(ep, "unix://"):
		p = strings.TrimPrefix(ep, "unix://")
	case strings.HasPrefix(ep, "unix:"):
		p = strings.TrimPrefix(ep, "unix:")
	case strings.Contains(ep, "://"):
		return "", fmt.Errorf("endpoint %q: only unix sockets are supported", ep)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: socket path must be absolute", ep)
	}
	return filepath.Clean(p), nil
}

// listenUnix removes a socket left behind by an earlier run (a crashed
// driver cannot clean up after itself) and listens afresh.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	return net.Listen("unix", path)
}

// logRPC writes one line per RPC: method, the ids found in the request,
// the resulting gRPC code and the time taken.
func logRPC(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	line := fmt.Sprintf("rpc %s%s -> %s (%s)", method, requestIDs(req), status.Code(err),
		time.Since(start).Round(time.Millisecond))
	if err != nil {
		line += ": " + status.Convert(err).Message()
	}
	log.Print(line)
	return resp, err
}

// requestIDs picks the identifying fields out of any CSI request.
func requestIDs(req any) string {
	var b strings.Builder
	add := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	if r, ok := req.(interface{ GetName() string }); ok {
		add("name", r.GetName())
	}
	if r, ok := req.(interface{ GetVolumeId() string }); ok {
		add("volume", r.GetVolumeId())
	}
	if r, ok := req.(interface{ GetSourceVolumeId() string }); ok {
		add("source", r.GetSourceVolumeId())
	}
	if r, ok := req.(interface{ GetSourceVolumeIds() []string }); ok && len(r.GetSourceVolumeIds()) > 0 {
		add("sources", strings.Join(r.GetSourceVolumeIds(), ","))
	}
	if r, ok := req.(interface{ GetSnapshotId() string }); ok {
		add("snapshot", r.GetSnapshotId())
	}
	if r, ok := req.(interface{ GetGroupSnapshotId() string }); ok {
		add("group", r.GetGroupSnapshotId())
	}
	if r, ok := req.(interface{ GetTargetPath() string }); ok {
		add("target", r.GetTargetPath())
	}
	return b.String()
}
