package main

import (
	"context"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type controllerServer struct {
	csi.UnimplementedControllerServer
	d *driver
}

func (s *controllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t},
		}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (s *controllerServer) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	block, err := volumeKind(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	size, err := capacityFor(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	srcVol := req.GetVolumeContentSource().GetVolume().GetVolumeId()
	srcSnap := req.GetVolumeContentSource().GetSnapshot().GetSnapshotId()

	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	st := s.d.store
	id := idFor(req.GetName())

	// Idempotency: the same name must mean the same volume.
	if v, err := st.getVolume(id); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	} else if v != nil {
		if v.Name != req.GetName() || v.Block != block || !fits(v.CapacityBytes, req.GetCapacityRange()) ||
			v.SourceVolume != srcVol || v.SourceSnap != srcSnap {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with different parameters", req.GetName())
		}
		return &csi.CreateVolumeResponse{Volume: volumeProto(v)}, nil
	}

	v := &volumeMeta{ID: id, Name: req.GetName(), Block: block, CapacityBytes: size,
		SourceVolume: srcVol, SourceSnap: srcSnap, CreatedAt: now()}
	dst := st.volumeData(v)

	// Find what to copy from, if anything.
	var src string
	var srcBlock bool
	var srcSize int64
	switch {
	case srcSnap != "":
		sn, err := st.getSnapshot(srcSnap)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if sn == nil {
			return nil, status.Errorf(codes.NotFound, "snapshot %q not found", srcSnap)
		}
		src, srcBlock, srcSize = st.snapshotData(sn), sn.Block, sn.SizeBytes
	case srcVol != "":
		sv, err := st.getVolume(srcVol)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if sv == nil {
			return nil, status.Errorf(codes.NotFound, "volume %q not found", srcVol)
		}
		src, srcBlock, srcSize = st.volumeData(sv), sv.Block, sv.CapacityBytes
	}

	if src == "" {
		err = createData(dst, block, size)
	} else {
		if srcBlock != block {
			return nil, status.Error(codes.InvalidArgument, "content source and new volume differ in access type (block vs mount)")
		}
		if size < srcSize {
			return nil, status.Errorf(codes.OutOfRange, "requested %d bytes, content source has %d", size, srcSize)
		}
		err = copyData(src, dst)
		if err == nil && block {
			err = growImage(dst, size)
		}
	}
	if err == nil {
		err = st.writeMeta("volumes", id, v)
	}
	if err != nil {
		_ = removeData(dst)
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.CreateVolumeResponse{Volume: volumeProto(v)}, nil
}

func (s *controllerServer) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	st := s.d.store
	v, err := st.getVolume(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if v == nil {
		return &csi.DeleteVolumeResponse{}, nil // already gone: success
	}
	// Deleting data that is still bind-mounted into a pod would hide a
	// test's mistake; refuse instead. Targets that are no longer mounted
	// (say, after a reboot) do not count.
	if still := stillMounted(v.Published); len(still) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %v", id, still)
	}
	data := st.volumeData(v)
	if v.Block {
		if err := detachLoops(data); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	// Data first, metadata last: an interrupted delete is retried in full.
	if err := removeData(data); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := st.removeMeta("volumes", id); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (s *controllerServer) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities are required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	v, err := s.d.store.getVolume(req.GetVolumeId())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
	}
	// Unsupported capabilities are answered without confirmation, not
	// with an error (CSI spec).
	block, err := volumeKind(req.GetVolumeCapabilities())
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	if block != v.Block {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: "access type (block vs mount) does not match the volume"}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (s *controllerServer) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	vols, err := s.d.store.listVolumes()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	vols, next, err := page(vols, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: volumeProto(v)})
	}
	return resp, nil
}

func (s *controllerServer) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name, source := req.GetName(), req.GetSourceVolumeId()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if source == "" {
		return nil, status.Error(codes.InvalidArgument, "source_volume_id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	st := s.d.store

	// The injected fault wins over everything, retries included.
	if msg, ok := st.snapshotFault(source); ok {
		return nil, status.Error(codes.Internal, msg)
	}
	id := idFor(name)
	if sn, err := st.getSnapshot(id); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	} else if sn != nil {
		if sn.Name != name || sn.SourceVolume != source {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists for another source volume", name)
		}
		return &csi.CreateSnapshotResponse{Snapshot: st.snapshotProto(sn)}, nil
	}
	v, err := st.getVolume(source)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "source volume %q not found", source)
	}
	sn, err := st.takeSnapshot(id, name, "", v)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.CreateSnapshotResponse{Snapshot: st.snapshotProto(sn)}, nil
}

// DeleteSnapshot also deletes a member of a group snapshot on its own.
// The spec allows refusing that, but a permissive driver cannot wedge a
// test's cleanup; DeleteVolumeGroupSnapshot skips members already gone.
func (s *controllerServer) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot_id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if err := s.d.store.deleteSnapshot(req.GetSnapshotId()); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (s *controllerServer) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	st := s.d.store
	var snaps []*snapshotMeta
	if id := req.GetSnapshotId(); id != "" {
		sn, err := st.getSnapshot(id)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if sn != nil {
			snaps = append(snaps, sn)
		}
	} else {
		all, err := st.listSnapshots()
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		snaps = all
	}
	if src := req.GetSourceVolumeId(); src != "" {
		var kept []*snapshotMeta
		for _, sn := range snaps {
			if sn.SourceVolume == src {
				kept = append(kept, sn)
			}
		}
		snaps = kept
	}
	snaps, next, err := page(snaps, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, sn := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: st.snapshotProto(sn)})
	}
	return resp, nil
}

func (s *controllerServer) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot_id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	sn, err := s.d.store.getSnapshot(req.GetSnapshotId())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if sn == nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %q not found", req.GetSnapshotId())
	}
	return &csi.GetSnapshotResponse{Snapshot: s.d.store.snapshotProto(sn)}, nil
}

// --- helpers ---

// volumeKind reads the access type from the requested capabilities: a
// volume is either a directory (mount) or an image file (block), not both.
func volumeKind(caps []*csi.VolumeCapability) (block bool, err error) {
	if len(caps) == 0 {
		return false, status.Error(codes.InvalidArgument, "volume_capabilities are required")
	}
	var mount bool
	for _, c := range caps {
		switch {
		case c.GetBlock() != nil:
			block = true
		case c.GetMount() != nil:
			mount = true
		default:
			return false, status.Error(codes.InvalidArgument, "capability without access type")
		}
		if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN {
			return false, status.Error(codes.InvalidArgument, "capability without access mode")
		}
	}
	if block && mount {
		return false, status.Error(codes.InvalidArgument, "cannot mix block and mount access types")
	}
	return block, nil
}

// capacityFor picks the size of a new volume: the required bytes, or the
// default (capped by the limit) when none are required.
func capacityFor(r *csi.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 || (lim > 0 && req > lim) {
		return 0, status.Errorf(codes.InvalidArgument, "invalid capacity range %d..%d", req, lim)
	}
	size := req
	if size == 0 {
		size = defaultCapacity
		if lim > 0 && lim < size {
			size = lim
		}
	}
	return size, nil
}

// fits reports whether an existing volume's size satisfies a request.
func fits(size int64, r *csi.CapacityRange) bool {
	return size >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size <= r.GetLimitBytes())
}

func volumeProto(v *volumeMeta) *csi.Volume {
	vol := &csi.Volume{VolumeId: v.ID, CapacityBytes: v.CapacityBytes}
	switch {
	case v.SourceSnap != "":
		vol.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceSnap}}}
	case v.SourceVolume != "":
		vol.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolume}}}
	}
	return vol
}

// snapshotProto reports readiness afresh on every call, so the
// snapshot-never-ready control file takes effect (and lifts) at once.
func (s *store) snapshotProto(sn *snapshotMeta) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:      sn.ID,
		SourceVolumeId:  sn.SourceVolume,
		CreationTime:    timestamppb.New(sn.CreatedAt),
		SizeBytes:       sn.SizeBytes,
		ReadyToUse:      s.snapshotReady(sn.SourceVolume),
		GroupSnapshotId: sn.Group,
	}
}

// page applies CSI pagination: the token is the index of the next entry.
func page[T any](items []T, token string, max int32) ([]T, string, error) {
	if max < 0 {
		return nil, "", status.Error(codes.InvalidArgument, "max_entries must not be negative")
	}
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", status.Errorf(codes.Aborted, "invalid starting_token %q", token)
		}
		start = n
	}
	end := len(items)
	if max > 0 && start+int(max) < end {
		end = start + int(max)
	}
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return items[start:end], next, nil
}
