package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Phase is what one timed step cost. Steps measured as a whole child
// process take their CPU times and peak RSS from the process's rusage
// (wait4); steps measured inside a longer child (InProcess) take CPU from
// getrusage(RUSAGE_SELF) deltas and peak RSS from VmHWM, reset before the
// phase through /proc/self/clear_refs.
type Phase struct {
	Step      string        `json:"step"`
	Wall      time.Duration `json:"wall"`
	User      time.Duration `json:"user"`
	Sys       time.Duration `json:"sys"`
	PeakRSS   int64         `json:"peak_rss"` // bytes
	InProcess bool          `json:"in_process,omitempty"`
	// RepoBytes and RepoFiles: the repository after the step (0 for a
	// restore); Growth is RepoBytes minus the repository before it.
	RepoBytes int64 `json:"repo_bytes,omitempty"`
	RepoFiles int   `json:"repo_files,omitempty"`
	Growth    int64 `json:"growth,omitempty"`
	// Read and Stored are the tool's own counts where it reports them.
	Read   int64  `json:"read,omitempty"`
	Stored int64  `json:"stored,omitempty"`
	Point  string `json:"point,omitempty"` // vmbackup restore point made
	Note   string `json:"note,omitempty"`  // e.g. how the engine chose to work
	// Verified is set on restores whose output equalled the image.
	Verified bool `json:"verified,omitempty"`
}

// childEnv marks a process started by the benchmark to run one step; a test
// binary's TestMain looks for it too.
const childEnv = "VMBACKUP_BENCH_CHILD"

// runChild runs this program again with args as a step and returns the
// phases it printed as JSON on stdout. A child that printed exactly one
// phase is measured as a process: wall from start to exit, CPU and peak RSS
// from wait4's rusage, which include the program's start-up.
func runChild(ctx context.Context, args []string) ([]Phase, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("step %s: %w\n%s", strings.Join(args, " "), err, tail(stderr.String(), 40))
	}
	var phases []Phase
	if err := json.Unmarshal(stdout.Bytes(), &phases); err != nil {
		return nil, fmt.Errorf("step %s: bad output %q: %w", strings.Join(args, " "), tail(stdout.String(), 5), err)
	}
	if len(phases) == 1 && !phases[0].InProcess {
		ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		phases[0].Wall = wall
		phases[0].User = time.Duration(ru.Utime.Nano())
		phases[0].Sys = time.Duration(ru.Stime.Nano())
		phases[0].PeakRSS = ru.Maxrss << 10
	}
	return phases, nil
}

// runTool runs an external program (restic, borg) as one step, measured
// through its rusage. dir is its working directory.
func runTool(ctx context.Context, dir string, env []string, name string, args ...string) (Phase, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return Phase{}, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 40))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return Phase{
		Wall:    wall,
		User:    time.Duration(ru.Utime.Nano()),
		Sys:     time.Duration(ru.Stime.Nano()),
		PeakRSS: ru.Maxrss << 10,
	}, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// meter measures one phase inside this process.
type meter struct {
	start time.Time
	ru    syscall.Rusage
}

// startPhase returns the heap to the OS and resets the peak RSS, so that a
// phase is not charged for the memory of the ones before it, and starts
// the clocks.
func startPhase() *meter {
	runtime.GC()
	debug.FreeOSMemory()
	// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux).
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	m := &meter{start: time.Now()}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &m.ru)
	return m
}

// stop ends the phase.
func (m *meter) stop(step string) Phase {
	wall := time.Since(m.start)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	p := Phase{
		Step:      step,
		Wall:      wall,
		User:      time.Duration(ru.Utime.Nano() - m.ru.Utime.Nano()),
		Sys:       time.Duration(ru.Stime.Nano() - m.ru.Stime.Nano()),
		PeakRSS:   ru.Maxrss << 10,
		InProcess: true,
	}
	if hwm, err := vmHWM(); err == nil {
		p.PeakRSS = hwm
	}
	return p
}

// vmHWM reads the process's peak RSS since the last reset.
func vmHWM() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

// settle is called before every timed step, of every tool. It writes back
// what the harness or an earlier step left dirty (image copies, removed
// work directories), so that no step pays for another's I/O: on file://
// vmbackup's syncfs(2) would otherwise write back the harness's copy of
// the image, and file creation slows while ext4 commits a large removal.
// With drop it also drops the page cache.
func settle(drop bool) error {
	if drop {
		return dropCaches()
	}
	syscall.Sync()
	return nil
}

// dropCaches writes dirty pages and drops the page cache, dentries and
// inodes (needs root). Every step's input then comes from the disk.
func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("drop page cache (needs root): %w", err)
	}
	return nil
}
