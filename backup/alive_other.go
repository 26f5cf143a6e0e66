//go:build !unix

package backup

// processAlive cannot tell here, so it says yes: records of ended
// processes then stay as they are rather than being marked by mistake.
func processAlive(pid int) bool { return true }
