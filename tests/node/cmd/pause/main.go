// Command pause is the process of a pod sandbox image, like Kubernetes'
// pause: it holds the pod's namespaces open by doing nothing until it is
// told to stop. As PID 1 of the pod's PID namespace it also reaps orphaned
// children, which would otherwise stay zombies.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1")
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Signals coalesce, so one SIGCHLD may stand for several exits:
		// reap until there is nothing left to reap.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
