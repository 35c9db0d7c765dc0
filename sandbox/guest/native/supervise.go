// Supervise mode: the container's main process, which keeps a serving guest alive.
//
// The model cannot kill the guest (it runs as root, the model as another user), but the
// kernel's OOM killer can, and a guest that died would otherwise take the container with it
// (docker's init exits with its only child). So the container runs
//
//	sandbox-guest supervise --socket PATH --user USER --workdir DIR
//
// which starts `sandbox-guest serve` with the same options and starts it again 0.2 s after
// it dies; between the death and the restart the worker's `docker exec` fallback serves the
// calls. It replaces a `/bin/sh` loop, so that an image without a shell still works. While
// the guest lives the supervisor blocks in wait4: no timer, no wake-up, no CPU.
package main

import (
	"os"
	"os/signal"
	"syscall"
	"time"
)

const restartNap = 200 * time.Millisecond

// supervise never returns while it is wanted: it exits on SIGTERM/SIGINT (docker stop),
// after passing the signal on to the guest.
func supervise(serveArgs []string) int {
	self, err := os.Executable()
	if err != nil {
		return fatal(err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	for {
		child, err := os.StartProcess(self, append([]string{self, "serve"}, serveArgs...), &os.ProcAttr{
			Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		})
		if err != nil {
			os.Stderr.WriteString("guest supervisor: cannot start the guest: " + err.Error() + "\n")
		} else {
			exited := make(chan *os.ProcessState, 1)
			go func() {
				state, _ := child.Wait()
				exited <- state
			}()
			select {
			case sig := <-stop:
				child.Signal(sig)
				<-exited
				return 0
			case state := <-exited:
				if state != nil {
					os.Stderr.WriteString("guest supervisor: the guest ended (" + state.String() + "); starting it again\n")
				}
			}
		}
		select {
		case <-stop:
			return 0
		case <-time.After(restartNap):
		}
	}
}
