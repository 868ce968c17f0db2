package main

// The on-disk state: data, JSON metadata and the test-control files. The
// layout is described in the package comment of main.go; callers hold
// driver.mu, so nothing here locks.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

const (
	// defaultCapacity is used when a CreateVolume asks for no size.
	defaultCapacity = 1 << 30

	// tmpPrefix marks data being copied. Handles never start with ".",
	// so a leftover from a crash cannot be mistaken for a volume.
	tmpPrefix = ".tmp-"
)

// volumeMeta is STATE/volumes/H.json.
type volumeMeta struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	Block         bool      `json:"block"`
	CapacityBytes int64     `json:"capacityBytes"`
	SourceVolume  string    `json:"sourceVolume,omitempty"`
	SourceSnap    string    `json:"sourceSnapshot,omitempty"`
	CreatedAt     time.Time `json:"createdAt"`
	// Published lists the target paths this volume is bind-mounted at;
	// a block volume's loop device is detached when it becomes empty.
	Published []string `json:"published,omitempty"`
}

// snapshotMeta is STATE/snapshots/S.json.
type snapshotMeta struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	SourceVolume string    `json:"sourceVolume"`
	Group        string    `json:"group,omitempty"`
	Block        bool      `json:"block"`
	SizeBytes    int64     `json:"sizeBytes"`
	CreatedAt    time.Time `json:"createdAt"`
}

// groupMeta is STATE/groups/G.json.
type groupMeta struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	SourceVolumes []string  `json:"sourceVolumes"`
	Snapshots     []string  `json:"snapshots"`
	CreatedAt     time.Time `json:"createdAt"`
}

type store struct {
	root string
}

func openStore(root string) (*store, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	s := &store{root: root}
	for _, d := range []string{"volumes", "snapshots", "groups", "control"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}
	// Copies interrupted by a crash are garbage; their metadata was never
	// written, so nothing refers to them.
	for _, d := range []string{"volumes", "snapshots"} {
		leftovers, _ := filepath.Glob(filepath.Join(root, d, tmpPrefix+"*"))
		for _, p := range leftovers {
			_ = os.RemoveAll(p)
		}
	}
	return s, nil
}

var plainID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

// idFor turns a CSI name into a handle: the name itself when it is safe as
// a file name (and cannot end in .json or .img), else a hash of it.
func idFor(name string) string {
	if plainID.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h" + hex.EncodeToString(sum[:16])
}

// validID reports whether a handle from a request can name a file of ours;
// anything else cannot exist, which also keeps "../x" out of path joins.
func validID(id string) bool { return plainID.MatchString(id) }

func (s *store) volumeData(v *volumeMeta) string {
	return dataPath(filepath.Join(s.root, "volumes", v.ID), v.Block)
}

func (s *store) snapshotData(sn *snapshotMeta) string {
	return dataPath(filepath.Join(s.root, "snapshots", sn.ID), sn.Block)
}

func dataPath(base string, block bool) string {
	if block {
		return base + ".img"
	}
	return base
}

// --- metadata ---

func (s *store) metaPath(kind, id string) string {
	return filepath.Join(s.root, kind, id+".json")
}

// readMeta returns (false, nil) when the object does not exist.
func (s *store) readMeta(kind, id string, into any) (bool, error) {
	if !validID(id) {
		return false, nil
	}
	b, err := os.ReadFile(s.metaPath(kind, id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, into); err != nil {
		return false, fmt.Errorf("%s: %w", s.metaPath(kind, id), err)
	}
	return true, nil
}

// writeMeta replaces the file atomically so a crash never leaves half a
// JSON document behind.
func (s *store) writeMeta(kind, id string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	p := s.metaPath(kind, id)
	tmp := filepath.Join(filepath.Dir(p), tmpPrefix+filepath.Base(p))
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func (s *store) removeMeta(kind, id string) error {
	err := os.Remove(s.metaPath(kind, id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (s *store) getVolume(id string) (*volumeMeta, error) {
	v := &volumeMeta{}
	ok, err := s.readMeta("volumes", id, v)
	if !ok {
		v = nil
	}
	return v, err
}

func (s *store) getSnapshot(id string) (*snapshotMeta, error) {
	sn := &snapshotMeta{}
	ok, err := s.readMeta("snapshots", id, sn)
	if !ok {
		sn = nil
	}
	return sn, err
}

func (s *store) getGroup(id string) (*groupMeta, error) {
	g := &groupMeta{}
	ok, err := s.readMeta("groups", id, g)
	if !ok {
		g = nil
	}
	return g, err
}

// listIDs returns the handles of one kind, sorted so that pagination
// tokens (indexes) stay meaningful between calls.
func (s *store) listIDs(kind string) ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(s.root, kind, "*.json"))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, p := range paths {
		id := strings.TrimSuffix(filepath.Base(p), ".json")
		if validID(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

func (s *store) listVolumes() ([]*volumeMeta, error) {
	ids, err := s.listIDs("volumes")
	var out []*volumeMeta
	for _, id := range ids {
		v, err := s.getVolume(id)
		if err != nil {
			return nil, err
		}
		if v != nil {
			out = append(out, v)
		}
	}
	return out, err
}

func (s *store) listSnapshots() ([]*snapshotMeta, error) {
	ids, err := s.listIDs("snapshots")
	var out []*snapshotMeta
	for _, id := range ids {
		sn, err := s.getSnapshot(id)
		if err != nil {
			return nil, err
		}
		if sn != nil {
			out = append(out, sn)
		}
	}
	return out, err
}

// --- data ---

// createData makes an empty volume: a directory, or a sparse image file
// of the given size.
func createData(path string, block bool, size int64) error {
	if !block {
		if err := os.Mkdir(path, 0o777); err != nil {
			return err
		}
		// Explicit, past the umask: pods running as any user can write.
		return os.Chmod(path, 0o777)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// copyData copies a volume or snapshot (directory or image file) to dst,
// keeping ownership, modes, timestamps and holes. It copies to a temporary
// name first, so dst either is complete or does not exist.
func copyData(src, dst string) error {
	tmp := filepath.Join(filepath.Dir(dst), tmpPrefix+filepath.Base(dst))
	_ = os.RemoveAll(tmp)
	out, err := exec.Command("cp", "-a", "--sparse=always", "--", src, tmp).CombinedOutput()
	if err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("cp %s: %v: %s", src, err, strings.TrimSpace(string(out)))
	}
	return os.Rename(tmp, dst)
}

// growImage extends a copied block image to the size a new volume asked for.
func growImage(path string, size int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() >= size {
		return nil
	}
	return os.Truncate(path, size)
}

func removeData(path string) error {
	return os.RemoveAll(path)
}

// takeSnapshot copies volume v into a new snapshot with the given handle.
func (s *store) takeSnapshot(id, name, group string, v *volumeMeta) (*snapshotMeta, error) {
	sn := &snapshotMeta{ID: id, Name: name, SourceVolume: v.ID, Group: group, Block: v.Block,
		// The restore size: a volume made from the snapshot needs this much.
		SizeBytes: v.CapacityBytes, CreatedAt: now()}
	dst := s.snapshotData(sn)
	if err := copyData(s.volumeData(v), dst); err != nil {
		return nil, err
	}
	if err := s.writeMeta("snapshots", id, sn); err != nil {
		_ = removeData(dst)
		return nil, err
	}
	return sn, nil
}

// deleteSnapshot removes a snapshot's data and metadata; a missing
// snapshot is not an error. Both data forms are tried, so a delete
// interrupted after the metadata was read but before it was removed
// finishes on retry.
func (s *store) deleteSnapshot(id string) error {
	if !validID(id) {
		return nil
	}
	base := filepath.Join(s.root, "snapshots", id)
	for _, p := range []string{base, base + ".img"} {
		if err := removeData(p); err != nil {
			return err
		}
	}
	return s.removeMeta("snapshots", id)
}

func now() time.Time { return time.Now().UTC() }

// --- fault injection (see main.go) ---

// snapshotFault returns the message of STATE/control/H/fail-snapshot, or
// ok=false when the file does not exist.
func (s *store) snapshotFault(volID string) (msg string, ok bool) {
	if !validID(volID) {
		return "", false
	}
	b, err := os.ReadFile(filepath.Join(s.root, "control", volID, "fail-snapshot"))
	if err != nil {
		return "", false
	}
	msg = strings.TrimSpace(string(b))
	if msg == "" {
		msg = "injected snapshot failure for volume " + volID
	}
	return msg, true
}

// snapshotReady is false while STATE/control/H/snapshot-never-ready exists.
func (s *store) snapshotReady(volID string) bool {
	if !validID(volID) {
		return true
	}
	_, err := os.Stat(filepath.Join(s.root, "control", volID, "snapshot-never-ready"))
	return err != nil
}

// publishBlocked is true while STATE/control/publish-blocked/NS exists for
// the namespace of the pod being mounted (the kubelet passes it because the
// CSIDriver object sets podInfoOnMount).
func (s *store) publishBlocked(namespace string) bool {
	if namespace == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(s.root, "control", "publish-blocked", namespace))
	return err == nil
}
