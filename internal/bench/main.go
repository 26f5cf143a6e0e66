// Command bench times vmbackup against restic, borg and a minimal
// reference pipeline on the same deterministic disk image, on this machine,
// in one run:
//
//	go run ./internal/bench                          # 4 GiB image, 3 runs, all tools
//	go run ./internal/bench -size 256MiB -runs 1     # smoke check
//	go run ./internal/bench -matrix -size 1GiB       # chunk size × codec matrix
//
// It needs the Debian packages restic and borgbackup for the peers; it
// installs nothing, and skips (with a message) a peer whose program is
// missing.
//
// # What it does
//
// It generates a raw image with package testimage (sparse: 40 % holes,
// 30 % compressible log and database pages, 30 % random, in extents of
// 0.5–1.5 MiB at 64 KiB granularity) and the same image after a guest
// rewrote 1 % of its 64 KiB blocks (scattered, or clustered in runs with
// -clustered). Then, run after run, each tool in turn (run 1 of every tool,
// then run 2, ..., so slow drifts of the machine hit every tool alike):
//
//   - vmbackup: full backup through backup.Service of a VM on the fake
//     hypervisor whose disk is the image file, into a new file://
//     repository; the mutation written by the guest through the fake
//     (WriteDisk), and an incremental with change tracking (incr-cbt);
//     change tracking turned off, another 1 % mutation and an incremental
//     that must read and hash everything allocated (incr-hash); then a
//     restore of the incr-cbt point onto a new sparse file attached as a
//     stopped VM (Service.RestoreInPlace).
//   - restic and borg: full backup of the image file, a second backup
//     after the mutation (incr: they have no change tracking), restore of
//     the second one.
//   - ref: the reference pipeline (see ref.go): the same work done as
//     plainly as possible on all cores, with vmbackup's chunk size and
//     codec, so the distance to what the machine allows is measured; its
//     restore is timed twice, through the page cache (restore) and with
//     O_DIRECT writes (restore-direct).
//
// Every restore is compared byte for byte with the image it must equal.
//
// # How it measures
//
// Each step runs in a child process (this program again, with the hidden
// -step flag, or the peer's program), and its user and system CPU and peak
// RSS come from the child's rusage (wait4). vmbackup's three backups are
// the exception: the fake hypervisor's change tokens name the fake's
// instance, so they do not survive a process restart, and the three
// backups run in one child that measures each phase itself with
// getrusage(RUSAGE_SELF) deltas and a peak RSS reset through
// /proc/self/clear_refs (after returning the heap to the OS); they are
// marked "*" in the table. Wall times of those phases do not include the
// program's start-up or the repository's creation; the restore's does.
//
// The page cache is not dropped unless -drop-caches is given (root only):
// without it the image is read from memory, which favours no tool, and
// the output says so.
//
// After the table come vmbackup's ratios against every other tool and the
// targets of issue 8, each marked met or NOT MET; with -cpuprofile, the
// top functions of vmbackup's first run of the step -profile-step (the
// full backup by default). -matrix replaces all that
// with a table of vmbackup (and ref) at every chunk size and codec.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmbackup/vmbackup/compress"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/repository"
)

// config is the benchmark's command line.
type config struct {
	size      int64
	pad       int64 // logical size of the images, holes after size; 0 means size
	runs      int
	dir       string
	keep      bool
	chunk     int64
	codec     string
	recomp    string // -recompress: codec vmbackup's full is rewritten to after it
	tools     []string
	seed      int64
	fraction  float64
	clustered bool
	drop      bool
	matrix    bool
	mChunks   []int64
	mCodecs   []string
	profile   string
	profStep  string // the step -cpuprofile profiles
	out       io.Writer
}

// step are the flags of a child step (hidden from -help's prose).
type step struct {
	name, image, repo, target, point, index, base, changed, phases string
}

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run parses args and runs the benchmark, or one step of it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ctx, cancel := signal.NotifyContext(ctx, os.Interrupt)
	defer cancel()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                                            = config{out: stdout}
		size, pad, chunk, tools, mChunks, mCodecs, dir string
		st                                             step
		codecsOf                                       string
	)
	fs.StringVar(&size, "size", "4GiB", "logical size of the image")
	fs.StringVar(&pad, "pad", "", "grow the images to this logical size with a hole at the end (e.g. 64GiB, for vmbackup's memory at scale; the mutations stay in the first -size bytes)")
	fs.IntVar(&cfg.runs, "runs", 3, "runs of every tool (medians are reported)")
	fs.StringVar(&dir, "dir", "", "work directory (default: a new directory under $TMPDIR, removed at the end)")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the work directory")
	fs.StringVar(&chunk, "chunk", formatSize(repository.DefaultChunkSize), "vmbackup and ref chunk size")
	fs.StringVar(&cfg.codec, "codec", compress.Default, "vmbackup and ref codec: "+strings.Join(compress.Names(), ", "))
	fs.StringVar(&cfg.recomp, "recompress", "", "after vmbackup's full backup, rewrite its chunks with this codec and time it (the backup-window mode: -codec s2 -recompress zstd)")
	fs.StringVar(&tools, "tools", "vmbackup,restic,borg,ref", "tools to run, comma-separated")
	fs.Int64Var(&cfg.seed, "seed", 1, "image seed")
	fs.Float64Var(&cfg.fraction, "fraction", 0.01, "fraction of 64 KiB blocks the mutation rewrites")
	fs.BoolVar(&cfg.clustered, "clustered", false, "mutation writes come in runs of adjacent blocks")
	fs.BoolVar(&cfg.drop, "drop-caches", false, "drop the page cache before every step (root)")
	fs.BoolVar(&cfg.matrix, "matrix", false, "run vmbackup (and ref, if in -tools) for every chunk size × codec, and restic and borg (if in -tools) once per run for comparison, instead")
	fs.StringVar(&mChunks, "matrix-chunks", "256KiB,1MiB,4MiB", "chunk sizes of -matrix")
	fs.StringVar(&mCodecs, "matrix-codecs", strings.Join(compress.Names(), ","), "codecs of -matrix")
	fs.StringVar(&codecsOf, "codecs", "", "instead of the benchmark, cut this file into -chunk pieces and print each of -matrix-codecs' stored size and speed (real files judge a codec better than the synthetic image)")
	fs.StringVar(&cfg.profile, "cpuprofile", "", "write a CPU profile of vmbackup's first run of -profile-step to this file")
	fs.StringVar(&cfg.profStep, "profile-step", stepFull, "the vmbackup step -cpuprofile profiles: "+strings.Join(profileSteps, ", "))
	fs.StringVar(&st.name, "step", "", "internal: run one step in this process")
	fs.StringVar(&st.image, "image", "", "internal: step's image")
	fs.StringVar(&st.repo, "repo", "", "internal: step's repository directory")
	fs.StringVar(&st.target, "target", "", "internal: step's restore target")
	fs.StringVar(&st.point, "point", "", "internal: step's restore point")
	fs.StringVar(&st.index, "index", "", "internal: ref index to write or read")
	fs.StringVar(&st.base, "base", "", "internal: ref index the incremental starts from")
	fs.StringVar(&st.changed, "changed", "", "internal: file of changed block offsets (ref incr-cbt)")
	fs.StringVar(&st.phases, "phases", "", "internal: vmbackup chain phases")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if cfg.size, err = parseSize(size); err != nil {
		return err
	}
	if cfg.chunk, err = parseSize(chunk); err != nil {
		return err
	}
	if pad != "" {
		if cfg.pad, err = parseSize(pad); err != nil {
			return fmt.Errorf("-pad: %w", err)
		}
	}
	if _, err := compress.Lookup(cfg.codec); err != nil {
		return err
	}
	if cfg.recomp != "" {
		if _, err := compress.Lookup(cfg.recomp); err != nil {
			return fmt.Errorf("-recompress: %w", err)
		}
		if cfg.recomp == cfg.codec {
			return fmt.Errorf("-recompress %s: the same as -codec; give the fast codec with -codec (e.g. -codec s2 -recompress zstd)", cfg.recomp)
		}
	}
	if st.name != "" {
		return runStep(ctx, cfg, st, stdout)
	}
	if cfg.profile != "" {
		if cfg.profile, err = filepath.Abs(cfg.profile); err != nil {
			return err
		}
	}
	if !slices.Contains(profileSteps, cfg.profStep) {
		return fmt.Errorf("-profile-step %q: want one of %s", cfg.profStep, strings.Join(profileSteps, ", "))
	}
	if cfg.matrix && cfg.recomp != "" {
		return fmt.Errorf("-recompress: not with -matrix")
	}
	if cfg.pad != 0 && cfg.pad < cfg.size {
		return fmt.Errorf("-pad %s: smaller than -size %s", formatSize(cfg.pad), formatSize(cfg.size))
	}
	if cfg.runs < 1 {
		return fmt.Errorf("-runs %d: want at least 1", cfg.runs)
	}
	if cfg.fraction <= 0 || cfg.fraction > 1 {
		return fmt.Errorf("-fraction %v: want a fraction in (0, 1]", cfg.fraction)
	}
	for _, t := range strings.Split(tools, ",") {
		t = strings.TrimSpace(t)
		if _, ok := peers[t]; !ok && t != "vmbackup" && t != "ref" {
			return fmt.Errorf("-tools: unknown tool %q (known: vmbackup, restic, borg, ref)", t)
		}
		if !slices.Contains(cfg.tools, t) {
			cfg.tools = append(cfg.tools, t)
		}
	}
	for _, s := range strings.Split(mChunks, ",") {
		n, err := parseSize(s)
		if err != nil {
			return fmt.Errorf("-matrix-chunks: %w", err)
		}
		cfg.mChunks = append(cfg.mChunks, n)
	}
	for _, c := range strings.Split(mCodecs, ",") {
		if _, err := compress.Lookup(strings.TrimSpace(c)); err != nil {
			return fmt.Errorf("-matrix-codecs: %w", err)
		}
		cfg.mCodecs = append(cfg.mCodecs, strings.TrimSpace(c))
	}
	if codecsOf != "" {
		return codecTable(stdout, codecsOf, cfg.chunk, cfg.mCodecs)
	}
	if cfg.dir, err = workDir(dir); err != nil {
		return err
	}
	if !cfg.keep {
		defer os.RemoveAll(cfg.dir)
	}
	return bench(ctx, cfg)
}

// workDir makes the directory the benchmark works in.
func workDir(dir string) (string, error) {
	if dir == "" {
		return os.MkdirTemp("", "vmbackup-bench-")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(dir, "vmbackup-bench-")
}

// workspace holds the images that every tool reads.
type workspace struct {
	dir     string
	base    string // the generated image
	mut     string // base after the mutation
	mut2    string // mut after the second mutation (vmbackup's and ref's incr-hash)
	changed string // block offsets of the first mutation, one a line
	drop    bool

	size   int64 // logical size of the images
	gen    int64 // the part generated and mutated (-size)
	alloc  int64
	blocks int // blocks rewritten by the first mutation
}

// Mutation seeds (the image has its own, -seed).
const (
	mutSeed  = 1001
	hashSeed = 1002
)

// settle calls settle with the workspace's -drop-caches setting.
func (ws *workspace) settle() error {
	return settle(ws.drop)
}

// prepare generates the images.
func prepare(ctx context.Context, cfg config) (*workspace, error) {
	ws := &workspace{
		dir:     cfg.dir,
		base:    filepath.Join(cfg.dir, "base.raw"),
		mut:     filepath.Join(cfg.dir, "mut.raw"),
		mut2:    filepath.Join(cfg.dir, "mut2.raw"),
		changed: filepath.Join(cfg.dir, "changed.txt"),
		drop:    cfg.drop,
		size:    max(cfg.size, cfg.pad),
		gen:     cfg.size,
	}
	if err := testimage.GenerateFile(ctx, ws.base, cfg.size, cfg.seed); err != nil {
		return nil, err
	}
	if err := os.Truncate(ws.base, ws.size); err != nil {
		return nil, err
	}
	if err := sparseCopy(ws.base, ws.mut); err != nil {
		return nil, err
	}
	offs, err := mutateFile(ctx, ws.mut, cfg.size, cfg.fraction, mutSeed, cfg.clustered)
	if err != nil {
		return nil, err
	}
	ws.blocks = len(offs)
	var b strings.Builder
	for _, o := range offs {
		b.WriteString(strconv.FormatInt(o, 10))
		b.WriteByte('\n')
	}
	if err := os.WriteFile(ws.changed, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	if err := sparseCopy(ws.mut, ws.mut2); err != nil {
		return nil, err
	}
	if _, err := mutateFile(ctx, ws.mut2, cfg.size, cfg.fraction, hashSeed, cfg.clustered); err != nil {
		return nil, err
	}
	_, ext, err := fileExtents(ws.base)
	if err != nil {
		return nil, err
	}
	ws.alloc = allocated(ext)
	return ws, nil
}

// mutateFile is testimage.Mutate on the first size bytes of the file at
// path.
func mutateFile(ctx context.Context, path string, size int64, fraction float64, seed int64, clustered bool) (offs []int64, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return testimage.Mutate(ctx, f, size, fraction, seed, clustered)
}

// bench runs the benchmark and prints its report.
func bench(ctx context.Context, cfg config) error {
	w := cfg.out
	var tools []string
	for _, t := range cfg.tools {
		if p, ok := peers[t]; ok && !p.available() {
			fmt.Fprintf(w, "%s: not installed (Debian package %s), skipped\n", t, p.pkg)
			continue
		}
		tools = append(tools, t)
	}
	if cfg.drop {
		if err := dropCaches(); err != nil {
			return err
		}
	}
	start := time.Now()
	fmt.Fprintf(w, "generating a %s image in %s ...\n", formatSize(cfg.size), cfg.dir)
	ws, err := prepare(ctx, cfg)
	if err != nil {
		return fmt.Errorf("prepare images: %w", err)
	}
	fmt.Fprintf(w, "images ready in %.1fs\n", time.Since(start).Seconds())
	if cfg.matrix {
		return runMatrix(ctx, cfg, ws, tools)
	}
	res := newResults()
	for r := 1; r <= cfg.runs; r++ {
		for _, t := range tools {
			t0 := time.Now()
			phases, err := runToolRound(ctx, cfg, ws, t, r, cfg.chunk, cfg.codec, true)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", t, r, err)
			}
			res.add(t, phases)
			fmt.Fprintf(w, "run %d/%d %-8s done in %.1fs:%s\n", r, cfg.runs, t, time.Since(t0).Seconds(), phaseTimes(phases))
		}
	}
	fmt.Fprintln(w)
	report(w, cfg, ws, tools, res)
	if cfg.profile != "" && slices.Contains(tools, "vmbackup") {
		printProfile(ctx, w, cfg.profile, cfg.profStep)
	}
	return nil
}

// printProfile prints the top functions of a CPU profile with the go
// tool, if there is one (go run has it).
func printProfile(ctx context.Context, w io.Writer, path, step string) {
	abs, _ := filepath.Abs(path)
	fmt.Fprintf(w, "\nCPU profile of vmbackup's first %s: %s (go tool pprof -top %s)\n", step, abs, abs)
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=30", path).CombinedOutput()
	if err != nil {
		fmt.Fprintf(w, "(go tool pprof: %v)\n", err)
		return
	}
	w.Write(out)
	out, err = exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=30", path).CombinedOutput()
	if err == nil {
		fmt.Fprintf(w, "\nby cumulative time:\n%s", out)
	}
}

// phaseTimes lists the phases' wall times, for progress lines.
func phaseTimes(phases []Phase) string {
	var b strings.Builder
	for _, p := range phases {
		fmt.Fprintf(&b, " %s %.2fs", p.Step, p.Wall.Seconds())
	}
	return b.String()
}

// runToolRound runs one round of tool t (all its steps) and returns its
// phases.
func runToolRound(ctx context.Context, cfg config, ws *workspace, t string, run int, chunk int64, codec string, restore bool) ([]Phase, error) {
	switch t {
	case "vmbackup":
		return vmbackupRound(ctx, cfg, ws, run, chunk, codec, restore)
	case "ref":
		return refRound(ctx, ws, run, chunk, codec, restore)
	}
	return runPeer(ctx, ws, peers[t], run)
}

// common returns the child flags every step needs.
func common(ws *workspace, chunk int64, codec string) []string {
	return []string{"-size", strconv.FormatInt(ws.gen, 10), "-pad", strconv.FormatInt(ws.size, 10), "-chunk", strconv.FormatInt(chunk, 10), "-codec", codec}
}

func vmbackupRound(ctx context.Context, cfg config, ws *workspace, run int, chunk int64, codec string, restore bool) ([]Phase, error) {
	dir := filepath.Join(ws.dir, fmt.Sprintf("vmbackup-%d", run))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	work, repo, target := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "repo"), filepath.Join(dir, "restored.raw")
	if err := sparseCopy(ws.base, work); err != nil {
		return nil, err
	}
	phases := []string{stepFull, stepIncrCBT, stepIncrHash}
	if !restore {
		phases = phases[:2]
	}
	args := append(common(ws, chunk, codec), "-step", "vmbackup-chain", "-image", work, "-repo", repo,
		"-phases", strings.Join(phases, ","), "-fraction", strconv.FormatFloat(cfg.fraction, 'g', -1, 64))
	want := len(phases)
	if cfg.recomp != "" {
		args = append(args, "-recompress", cfg.recomp)
		want++
	}
	if cfg.clustered {
		args = append(args, "-clustered")
	}
	if cfg.drop {
		args = append(args, "-drop-caches")
	}
	if cfg.profile != "" && run == 1 && cfg.profStep != stepRestore {
		args = append(args, "-cpuprofile", cfg.profile, "-profile-step", cfg.profStep)
	}
	out, err := runChild(ctx, args)
	if err != nil {
		return nil, err
	}
	if len(out) != want {
		return nil, fmt.Errorf("vmbackup chain gave %d phases, want %d", len(out), want)
	}
	if !restore {
		return out, nil
	}
	if run == 1 {
		// The guest's writes through the fake must be the mutations the
		// other tools see.
		if err := sameContent(ws.mut2, work); err != nil {
			return nil, fmt.Errorf("image after the guest's writes is not the mutated image: %w", err)
		}
	}
	os.Remove(work)
	if err := ws.settle(); err != nil {
		return nil, err
	}
	i := slices.IndexFunc(out, func(p Phase) bool { return p.Step == stepIncrCBT })
	if i < 0 {
		return nil, fmt.Errorf("vmbackup chain made no %s point", stepIncrCBT)
	}
	rargs := append(common(ws, chunk, codec), "-step", "vmbackup-restore", "-repo", repo, "-point", out[i].Point, "-target", target)
	if cfg.profile != "" && run == 1 && cfg.profStep == stepRestore {
		rargs = append(rargs, "-cpuprofile", cfg.profile)
	}
	rp, err := runChild(ctx, rargs)
	if err != nil {
		return nil, err
	}
	if err := sameContent(ws.mut, target); err != nil {
		return nil, fmt.Errorf("vmbackup restore is wrong: %w", err)
	}
	rp[0].Verified = true
	return append(out, rp[0]), nil
}

func refRound(ctx context.Context, ws *workspace, run int, chunk int64, codec string, restore bool) ([]Phase, error) {
	dir := filepath.Join(ws.dir, fmt.Sprintf("ref-%d", run))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	repo, target := filepath.Join(dir, "repo"), filepath.Join(dir, "restored.raw")
	packRepo := filepath.Join(dir, "packs")
	steps := []struct {
		step string
		args []string
	}{
		{stepFull, []string{"-step", "ref-full", "-image", ws.base, "-index", "full"}},
		{stepIncrCBT, []string{"-step", "ref-incr-cbt", "-image", ws.mut, "-base", "full", "-index", "cbt", "-changed", ws.changed}},
		{stepIncrHash, []string{"-step", "ref-incr-hash", "-image", ws.mut2, "-base", "cbt", "-index", "hash"}},
		{stepRestore, []string{"-step", "ref-restore", "-index", "cbt", "-target", target}},
		{stepRestoreDirect, []string{"-step", "ref-restore-direct", "-index", "cbt", "-target", target}},
		// Its own repository: this -repo comes after the common one, and
		// the last of a repeated flag wins.
		{stepFullPacks, []string{"-step", "ref-full-packs", "-image", ws.base, "-repo", packRepo}},
	}
	if !restore {
		steps = steps[:2]
	}
	var out []Phase
	var before int64
	for _, s := range steps {
		if err := ws.settle(); err != nil {
			return nil, err
		}
		ph, err := runChild(ctx, append(append(common(ws, chunk, codec), "-repo", repo), s.args...))
		if err != nil {
			return nil, err
		}
		p := ph[0]
		if s.step == stepRestore || s.step == stepRestoreDirect {
			if err := sameContent(ws.mut, target); err != nil {
				return nil, fmt.Errorf("ref restore is wrong: %w", err)
			}
			p.Verified = true
		} else if s.step == stepFullPacks {
			if p.RepoBytes, p.RepoFiles, err = dirUsage(packRepo); err != nil {
				return nil, err
			}
		} else {
			if p.RepoBytes, p.RepoFiles, err = dirUsage(repo); err != nil {
				return nil, err
			}
			p.Growth, before = p.RepoBytes-before, p.RepoBytes
		}
		out = append(out, p)
	}
	return out, nil
}

// runStep runs one step in this process and prints its phases as JSON.
func runStep(ctx context.Context, cfg config, st step, stdout io.Writer) error {
	var phases []Phase
	switch st.name {
	case "vmbackup-chain":
		a := chainArgs{
			image: st.image, repo: st.repo, chunk: cfg.chunk, codec: cfg.codec, recompress: cfg.recomp, mutSize: cfg.size,
			fraction: cfg.fraction, clustered: cfg.clustered, mutSeed: mutSeed, hashSeed: hashSeed,
			phases: strings.Split(st.phases, ","), cpuProfile: cfg.profile, profileStep: cfg.profStep, drop: cfg.drop,
		}
		ph, err := vmbackupChain(ctx, a)
		if err != nil {
			return err
		}
		phases = ph
	case "vmbackup-restore":
		ph, err := vmbackupRestore(ctx, st.repo, st.point, st.target, max(cfg.size, cfg.pad), cfg.profile)
		if err != nil {
			return err
		}
		phases = []Phase{ph}
	case "ref-full", "ref-incr-cbt", "ref-incr-hash":
		var s refBackupStats
		var err error
		switch st.name {
		case "ref-full":
			s, err = refFull(ctx, st.repo, st.image, st.index, cfg.chunk, cfg.codec, false)
		case "ref-incr-cbt":
			var offs []int64
			if offs, err = readOffsets(st.changed); err == nil {
				s, err = refIncremental(ctx, st.repo, st.image, st.base, st.index, cfg.chunk, cfg.codec, offs, testimage.Granularity, true)
			}
		default:
			s, err = refIncremental(ctx, st.repo, st.image, st.base, st.index, cfg.chunk, cfg.codec, nil, 0, false)
		}
		if err != nil {
			return err
		}
		phases = []Phase{{Step: strings.TrimPrefix(st.name, "ref-"), Read: s.read, Stored: s.stored}}
	case "ref-full-packs":
		s, err := refFull(ctx, st.repo, st.image, "full", cfg.chunk, cfg.codec, true)
		if err != nil {
			return err
		}
		phases = []Phase{{Step: stepFullPacks, Read: s.read, Stored: s.stored}}
	case "ref-restore", "ref-restore-direct":
		n, err := refRestore(ctx, st.repo, st.index, st.target, cfg.chunk, st.name == "ref-restore-direct")
		if err != nil {
			return err
		}
		phases = []Phase{{Step: strings.TrimPrefix(st.name, "ref-"), Read: n}}
	default:
		return fmt.Errorf("-step: unknown step %q", st.name)
	}
	return writeJSON(stdout, phases)
}

// readOffsets reads a file of decimal offsets, one a line.
func readOffsets(path string) ([]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []int64
	for _, l := range strings.Fields(string(b)) {
		n, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// machine describes where the benchmark ran.
func machine() string {
	return fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
