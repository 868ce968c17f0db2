package main

import (
	"context"
	"log"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// registrationServer answers the kubelet's plugin watcher, which finds
// <registration-dir>/<driver>-reg.sock, asks GetInfo for the CSI socket and
// then talks to the driver directly. This is all node-driver-registrar
// does, and that sidecar is not available to the tests.
type registrationServer struct {
	registerapi.UnimplementedRegistrationServer
	driverName string
	endpoint   string // absolute path of the CSI socket
}

func newRegistrationServer(driverName, endpoint string) *grpc.Server {
	s := grpc.NewServer(grpc.UnaryInterceptor(logRPC))
	registerapi.RegisterRegistrationServer(s, &registrationServer{driverName: driverName, endpoint: endpoint})
	return s
}

func (r *registrationServer) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

// NotifyRegistrationStatus only logs: a driver the kubelet refused keeps
// serving, and the log says why (node-driver-registrar would exit instead).
func (r *registrationServer) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.GetPluginRegistered() {
		log.Printf("kubelet registered driver %q", r.driverName)
	} else {
		log.Printf("kubelet did NOT register driver %q: %s", r.driverName, st.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
