package main

import (
	"context"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// groupControllerServer implements VolumeGroupSnapshots: one snapshot of
// each source volume, taken while holding the driver lock, so no other
// RPC changes any of the volumes in between.
type groupControllerServer struct {
	csi.UnimplementedGroupControllerServer
	d *driver
}

func (s *groupControllerServer) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,
		}},
	}}}, nil
}

func (s *groupControllerServer) CreateVolumeGroupSnapshot(_ context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	name, sources := req.GetName(), req.GetSourceVolumeIds()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if len(sources) == 0 {
		return nil, status.Error(codes.InvalidArgument, "source_volume_ids are required")
	}
	for i, src := range sources {
		if slices.Contains(sources[:i], src) {
			return nil, status.Errorf(codes.InvalidArgument, "source volume %q listed twice", src)
		}
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	st := s.d.store

	for _, src := range sources {
		if msg, ok := st.snapshotFault(src); ok {
			return nil, status.Error(codes.Internal, msg)
		}
	}
	id := idFor(name)
	if g, err := st.getGroup(id); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	} else if g != nil {
		if g.Name != name || !sameSet(g.SourceVolumes, sources) {
			return nil, status.Errorf(codes.AlreadyExists, "group snapshot %q exists with other source volumes", name)
		}
		return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: st.groupProto(g)}, nil
	}

	vols := make([]*volumeMeta, len(sources))
	for i, src := range sources {
		v, err := st.getVolume(src)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if v == nil {
			return nil, status.Errorf(codes.NotFound, "source volume %q not found", src)
		}
		vols[i] = v
	}

	g := &groupMeta{ID: id, Name: name, SourceVolumes: sources, CreatedAt: now()}
	// On failure remove the members taken so far: no group id reaches the
	// caller, so nobody else could clean them up.
	fail := func(code codes.Code, format string, args ...any) (*csi.CreateVolumeGroupSnapshotResponse, error) {
		for _, sid := range g.Snapshots {
			_ = st.deleteSnapshot(sid)
		}
		return nil, status.Errorf(code, format, args...)
	}
	for _, v := range vols {
		sid := idFor(id + "-" + v.ID)
		// A member of this group left by an interrupted attempt (the group
		// file is written last) is replaced; anything else is a clash.
		if old, err := st.getSnapshot(sid); err != nil {
			return fail(codes.Internal, "%v", err)
		} else if old != nil && old.Group != id {
			return fail(codes.AlreadyExists, "snapshot handle %q already in use", sid)
		}
		if err := st.deleteSnapshot(sid); err != nil {
			return fail(codes.Internal, "%v", err)
		}
		if _, err := st.takeSnapshot(sid, "", id, v); err != nil {
			return fail(codes.Internal, "%v", err)
		}
		g.Snapshots = append(g.Snapshots, sid)
	}
	if err := st.writeMeta("groups", id, g); err != nil {
		return fail(codes.Internal, "%v", err)
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: st.groupProto(g)}, nil
}

func (s *groupControllerServer) DeleteVolumeGroupSnapshot(_ context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group_snapshot_id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	st := s.d.store
	g, err := st.getGroup(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if g == nil {
		return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
	}
	if err := checkMembers(g, req.GetSnapshotIds()); err != nil {
		return nil, err
	}
	for _, sid := range g.Snapshots {
		if err := st.deleteSnapshot(sid); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if err := st.removeMeta("groups", id); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

func (s *groupControllerServer) GetVolumeGroupSnapshot(_ context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group_snapshot_id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	g, err := s.d.store.getGroup(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if g == nil {
		return nil, status.Errorf(codes.NotFound, "group snapshot %q not found", id)
	}
	if err := checkMembers(g, req.GetSnapshotIds()); err != nil {
		return nil, err
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: s.d.store.groupProto(g)}, nil
}

// groupProto reports the members that still exist (one may have been
// deleted on its own); the group is ready when all of them are.
func (s *store) groupProto(g *groupMeta) *csi.VolumeGroupSnapshot {
	out := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.CreatedAt), ReadyToUse: true}
	for _, sid := range g.Snapshots {
		sn, err := s.getSnapshot(sid)
		if err != nil || sn == nil {
			continue
		}
		p := s.snapshotProto(sn)
		out.Snapshots = append(out.Snapshots, p)
		out.ReadyToUse = out.ReadyToUse && p.ReadyToUse
	}
	return out
}

// checkMembers rejects snapshot ids that the caller believes are in the
// group but are not (the spec asks SPs to detect such a mismatch).
func checkMembers(g *groupMeta, ids []string) error {
	for _, sid := range ids {
		if !slices.Contains(g.Snapshots, sid) {
			return status.Errorf(codes.InvalidArgument, "snapshot %q is not part of group snapshot %q", sid, g.ID)
		}
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
