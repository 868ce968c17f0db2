package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// nodeServer publishes volumes by bind mount. There is no staging step:
// the data already lives on this node, so there is nothing to stage.
type nodeServer struct {
	csi.UnimplementedNodeServer
	d *driver
}

func (s *nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: s.d.nodeID, MaxVolumesPerNode: 0}, nil
}

func (s *nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func (s *nodeServer) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, volCap := req.GetVolumeId(), req.GetVolumeCapability()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if req.GetTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	}
	if volCap == nil {
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	block, err := volumeKind([]*csi.VolumeCapability{volCap})
	if err != nil {
		return nil, err
	}
	target := cleanTarget(req.GetTargetPath())
	// Unavailable is retried by the kubelet: the pod waits in ContainerCreating
	// until the test removes the switch.
	if ns := req.GetVolumeContext()["csi.storage.k8s.io/pod.namespace"]; s.d.store.publishBlocked(ns) {
		return nil, status.Errorf(codes.Unavailable, "publishing for namespace %s is blocked by the test", ns)
	}

	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	st := s.d.store
	v, err := st.getVolume(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
	}
	if v.Block != block {
		return nil, status.Error(codes.InvalidArgument, "access type (block vs mount) does not match the volume")
	}

	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if !mounted { // else: a repeated call, already done
		if err := publish(st.volumeData(v), target, block, req.GetReadonly()); err != nil {
			if block && len(v.Published) == 0 {
				_ = detachLoops(st.volumeData(v))
			}
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if !slices.Contains(v.Published, target) {
		v.Published = append(v.Published, target)
		if err := st.writeMeta("volumes", id, v); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// publish bind-mounts a volume directory onto a new directory at target,
// or the image's loop device onto a new file at target.
func publish(data, target string, block, readonly bool) error {
	src := data
	if block {
		dev, err := attachLoop(data)
		if err != nil {
			return err
		}
		src = dev
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return err
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return err
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return err
	}
	if err := syscall.Mount(src, target, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", src, target, err)
	}
	// A bind mount ignores MS_RDONLY on creation; it takes a remount.
	if readonly {
		if err := syscall.Mount("", target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			_ = syscall.Unmount(target, 0)
			return fmt.Errorf("remount %s read-only: %w", target, err)
		}
	}
	return nil
}

func (s *nodeServer) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if req.GetTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	}
	target := cleanTarget(req.GetTargetPath())

	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	// Unmount until nothing is left: a target mounted twice (by a racing
	// caller) must still end up empty.
	for {
		mounted, err := isMountPoint(target)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if !mounted {
			break
		}
		if err := syscall.Unmount(target, 0); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}

	// An unknown volume is not an error: the target is gone, which is all
	// the caller (say, a kubelet cleaning up after a deleted volume) needs.
	st := s.d.store
	v, err := st.getVolume(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if v == nil {
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if i := slices.Index(v.Published, target); i >= 0 {
		v.Published = slices.Delete(v.Published, i, i+1)
		if err := st.writeMeta("volumes", id, v); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if v.Block && len(v.Published) == 0 {
		if err := detachLoops(st.volumeData(v)); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// --- mounts ---

// cleanTarget makes target comparable with /proc/self/mountinfo, which
// shows mount points with symlinks resolved: resolve the parent directory
// (the target itself may not exist yet).
func cleanTarget(p string) string {
	p = filepath.Clean(p)
	if dir, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
		return filepath.Join(dir, filepath.Base(p))
	}
	return p
}

func isMountPoint(path string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// Field 5 is the mount point, with space, tab, newline and
		// backslash written as octal escapes.
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMountinfo(f[4]) == path {
			return true, nil
		}
	}
	return false, nil
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// stillMounted returns the targets in published that are still mount points.
func stillMounted(published []string) []string {
	var out []string
	for _, t := range published {
		if ok, _ := isMountPoint(t); ok {
			out = append(out, t)
		}
	}
	return out
}

// --- loop devices ---

// loopsFor lists the loop devices backed by file; losetup matches by
// device and inode, so the path spelling does not matter.
func loopsFor(file string) ([]string, error) {
	out, err := exec.Command("losetup", "--noheadings", "--output", "NAME", "--associated", file).Output()
	if err != nil {
		return nil, fmt.Errorf("losetup --associated %s: %w", file, cmdErr(err))
	}
	return strings.Fields(string(out)), nil
}

// attachLoop returns the loop device of file, attaching one if there is
// none, so that publishing a volume twice shares one device.
func attachLoop(file string) (string, error) {
	devs, err := loopsFor(file)
	if err != nil {
		return "", err
	}
	if len(devs) > 0 {
		return devs[0], nil
	}
	out, err := exec.Command("losetup", "--find", "--show", file).Output()
	if err != nil {
		return "", fmt.Errorf("losetup --find %s: %w", file, cmdErr(err))
	}
	return strings.TrimSpace(string(out)), nil
}

// detachLoops detaches every loop device backed by file.
func detachLoops(file string) error {
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	devs, err := loopsFor(file)
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			return fmt.Errorf("losetup --detach %s: %v: %s", dev, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// cmdErr adds a failed command's stderr to its error.
func cmdErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}
