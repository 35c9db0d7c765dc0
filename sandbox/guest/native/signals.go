// Signal dispositions the guest hands on to commands.
package main

import (
	"syscall"
	"unsafe"
)

// defaultIgnoredSignals sets every signal the guest was started with ignored back to its default
// action. An ignored signal stays ignored across fork and exec, so without this a command would
// inherit whatever its guest's parent ignored: docker's init leaves none, but a guest started by
// another program (a test harness, a shell's background job) can be handed signal 32 or SIGINT
// ignored, and a command would then behave otherwise than in a sandbox. Signals the Go runtime
// handles are left alone (their handlers are reset at exec anyway); the serve loop installs its
// own SIGTERM and SIGINT handling afterwards.
func defaultIgnoredSignals() {
	const sigIgn, nsig = 1, 64
	for sig := uintptr(1); sig <= nsig; sig++ {
		if sig == uintptr(syscall.SIGKILL) || sig == uintptr(syscall.SIGSTOP) {
			continue
		}
		// The kernel's struct sigaction starts with the handler on every architecture; a zeroed
		// one is SIG_DFL with no flags and an empty mask whatever follows the handler.
		var old, dfl [4]uint64
		if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, sig, 0, uintptr(unsafe.Pointer(&old[0])), 8, 0, 0); e != 0 {
			continue
		}
		if old[0] == sigIgn {
			syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, sig, uintptr(unsafe.Pointer(&dfl[0])), 0, 8, 0, 0)
		}
	}
}
