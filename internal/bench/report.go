package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vmbackup/vmbackup/compress"
)

// results collects the phases of every run, by tool and step, in the order
// they were first seen.
type results struct {
	tools []string
	steps map[string][]string
	runs  map[string]map[string][]Phase
}

func newResults() *results {
	return &results{steps: map[string][]string{}, runs: map[string]map[string][]Phase{}}
}

func (r *results) add(tool string, phases []Phase) {
	if r.runs[tool] == nil {
		r.tools = append(r.tools, tool)
		r.runs[tool] = map[string][]Phase{}
	}
	for _, p := range phases {
		if _, ok := r.runs[tool][p.Step]; !ok {
			r.steps[tool] = append(r.steps[tool], p.Step)
		}
		r.runs[tool][p.Step] = append(r.runs[tool][p.Step], p)
	}
}

// summary is the runs of one tool's step reduced to medians; PeakRSS is the
// largest of the runs.
type summary struct {
	n                  int
	wall, minW, maxW   time.Duration
	user, sys          time.Duration
	peakRSS            int64
	repo, growth       int64
	files              int
	inProcess, checked bool
	note               string
}

func (r *results) summary(tool, step string) (summary, bool) {
	ps := r.runs[tool][step]
	if len(ps) == 0 {
		return summary{}, false
	}
	s := summary{n: len(ps), checked: true, note: ps[0].Note}
	med := func(f func(Phase) int64) int64 {
		v := make([]int64, len(ps))
		for i, p := range ps {
			v[i] = f(p)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	s.wall = time.Duration(med(func(p Phase) int64 { return int64(p.Wall) }))
	s.user = time.Duration(med(func(p Phase) int64 { return int64(p.User) }))
	s.sys = time.Duration(med(func(p Phase) int64 { return int64(p.Sys) }))
	s.repo = med(func(p Phase) int64 { return p.RepoBytes })
	s.growth = med(func(p Phase) int64 { return p.Growth })
	s.files = int(med(func(p Phase) int64 { return int64(p.RepoFiles) }))
	s.minW, s.maxW = ps[0].Wall, ps[0].Wall
	for _, p := range ps {
		s.minW, s.maxW = min(s.minW, p.Wall), max(s.maxW, p.Wall)
		s.peakRSS = max(s.peakRSS, p.PeakRSS)
		s.inProcess = s.inProcess || p.InProcess
		s.checked = s.checked && p.Verified
	}
	return s, true
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func mibNum(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }

// mbps is the logical image size per second of wall time, in MB/s.
func mbps(size int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(size)/1e6/d.Seconds())
}

// header prints what was measured and how.
func header(w io.Writer, cfg config, ws *workspace) {
	holes := 100 * float64(ws.size-ws.alloc) / float64(ws.size)
	nblocks := (ws.gen + 64<<10 - 1) / (64 << 10)
	mode := "scattered"
	if cfg.clustered {
		mode = "clustered in runs"
	}
	fmt.Fprintf(w, "image: %s logical (seed %d), %s allocated, %.1f %% holes; mutation: %d of %d 64 KiB blocks rewritten (%.2g %%), %s\n",
		formatSize(ws.size), cfg.seed, mib(ws.alloc), holes, ws.blocks, nblocks, 100*cfg.fraction, mode)
	if ws.gen < ws.size {
		fmt.Fprintf(w, "padded: data and mutations in the first %s, a hole after\n", formatSize(ws.gen))
	}
	cache := "synced, not dropped, before every step (inputs are read from the page cache; -drop-caches to drop it)"
	if cfg.drop {
		cache = "synced and dropped before every step"
	}
	fmt.Fprintf(w, "machine: %s; page cache: %s\n", machine(), cache)
}

// report prints the main table and the ratios.
func report(w io.Writer, cfg config, ws *workspace, tools []string, res *results) {
	header(w, cfg, ws)
	codec := cfg.codec
	if cfg.recomp != "" {
		codec += fmt.Sprintf(" (vmbackup's full recompressed to %s after it)", cfg.recomp)
	}
	fmt.Fprintf(w, "vmbackup and ref: %s chunks, codec %s; %d run(s) interleaved; medians, wall [min–max], peak RSS the largest; MB/s = logical image size / wall\n\n",
		formatSize(cfg.chunk), codec, cfg.runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tool\tstep\twall s\t[min–max]\tMB/s\tuser s\tsys s\tpeak RSS MiB\trepo MiB\tgrowth MiB\tobjects\trestore\t")
	for _, t := range res.tools {
		for _, st := range res.steps[t] {
			s, _ := res.summary(t, st)
			mark := ""
			if s.inProcess {
				mark = "*"
			}
			repo, growth, files, check := "", "", "", ""
			switch {
			case st == stepRestore || st == stepRestoreDirect:
				check = "FAILED"
				if s.checked {
					check = "identical"
				}
			case st == stepFull || st == stepFullPacks:
				repo, files = mibNum(s.repo), fmt.Sprint(s.files)
			case st == stepRecompress: // shrinks the repository
				repo, growth, files = mibNum(s.repo), fmt.Sprintf("%+.1f", float64(s.growth)/(1<<20)), fmt.Sprint(s.files)
			default:
				repo, growth, files = mibNum(s.repo), "+"+mibNum(s.growth), fmt.Sprint(s.files)
			}
			fmt.Fprintf(tw, "%s\t%s%s\t%s\t[%s–%s]\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
				t, st, mark, secs(s.wall), secs(s.minW), secs(s.maxW), mbps(ws.size, s.wall),
				secs(s.user), secs(s.sys), mibNum(s.peakRSS), repo, growth, files, check)
		}
	}
	tw.Flush()
	if _, ok := res.runs["vmbackup"]; ok {
		fmt.Fprintln(w, "* measured inside the process that ran the three backups (getrusage deltas, VmHWM reset before the phase)")
		ratios(w, res)
		targets(w, cfg, res)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "notes:")
	for _, t := range res.tools {
		if p, ok := peers[t]; ok {
			fmt.Fprintln(w, "  "+p.note)
		}
	}
	if slices.Contains(res.tools, "ref") {
		fmt.Fprintln(w, "  ref: allocated extents, SHA-256, zero chunks skipped, same chunk size and codec as vmbackup, one file per chunk, all cores, synced (syncfs) at the end of each backup; restore through the page cache, restore-direct with O_DIRECT writes; full-packs: the full backup with chunks appended to 16 MiB pack files instead")
	}
	for _, t := range []string{"vmbackup"} {
		for _, st := range res.steps[t] {
			if s, _ := res.summary(t, st); s.note != "" {
				fmt.Fprintf(w, "  vmbackup %s: %s\n", st, s.note)
			}
		}
	}
}

// peerStep maps vmbackup's steps onto a peer's: restic and borg have one
// incremental, which reads everything.
func peerStep(peer, step string) string {
	if _, ok := peers[peer]; ok && (step == stepIncrCBT || step == stepIncrHash) {
		return stepIncr
	}
	return step
}

// ratios prints vmbackup against every other tool.
func ratios(w io.Writer, res *results) {
	var others []string
	for _, t := range res.tools {
		if t != "vmbackup" {
			others = append(others, t)
		}
	}
	if len(others) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "vmbackup against each tool: speed-up = tool's wall / vmbackup's wall (above 1: vmbackup is faster);")
	fmt.Fprintln(w, "size, growth and RSS = vmbackup's / tool's (below 1: vmbackup is smaller); restic and borg incr = their second backup")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\t%s\t\n", strings.Join(prefixAll("vs ", others), "\t"))
	for _, st := range res.steps["vmbackup"] {
		if st == stepRecompress { // no peer has one
			continue
		}
		v, _ := res.summary("vmbackup", st)
		row := []string{"speed-up " + st}
		for _, o := range others {
			s, ok := res.summary(o, peerStep(o, st))
			row = append(row, ratio(ok, float64(s.wall), float64(v.wall), "×"))
		}
		fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t"))
	}
	for _, m := range []struct {
		name string
		step string
		f    func(summary) int64
	}{
		{"repository size", stepFull, func(s summary) int64 { return s.repo }},
		{"growth (incr-cbt)", stepIncrCBT, func(s summary) int64 { return s.growth }},
		{"peak RSS full", stepFull, func(s summary) int64 { return s.peakRSS }},
		{"peak RSS restore", stepRestore, func(s summary) int64 { return s.peakRSS }},
	} {
		v, vok := res.summary("vmbackup", m.step)
		row := []string{m.name}
		for _, o := range others {
			s, ok := res.summary(o, peerStep(o, m.step))
			row = append(row, ratio(ok && vok, float64(m.f(v)), float64(m.f(s)), ""))
		}
		fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t"))
	}
	tw.Flush()
}

// targets prints the targets (issue 8) against this run's figures:
// with the default codec, full ≥ 2× restic with a repository at most 2 %
// larger; with another (fast) codec, full ≥ 3× restic, its repository size
// a cost, not a target; with -recompress, the backup-window mode's pair
// (the fast codec's full backup, the repository after recompression).
func targets(w io.Writer, cfg config, res *results) {
	type target struct {
		what  string
		ok    bool
		value string
		cost  bool // a figure to weigh, not a target
	}
	var ts []target
	speed := func(label, step, peer, peerStep string, want float64) {
		v, vok := res.summary("vmbackup", step)
		p, pok := res.summary(peer, peerStep)
		if !vok || !pok || v.wall == 0 {
			return
		}
		r := float64(p.wall) / float64(v.wall)
		ts = append(ts, target{fmt.Sprintf("%s ≥ %.1f× faster than %s", label, want, peer), r >= want, fmt.Sprintf("%.2f×", r), false})
	}
	repoVsRestic := func(label, step string, cost bool) {
		v, vok := res.summary("vmbackup", step)
		p, pok := res.summary("restic", stepFull)
		if vok && pok && p.repo > 0 {
			x := float64(v.repo) / float64(p.repo)
			ts = append(ts, target{label, x <= 1.02, fmt.Sprintf("%.3f× restic's", x), cost})
		}
	}
	fast := cfg.codec != compress.Default
	if fast {
		speed(fmt.Sprintf("full with the fast codec (%s)", cfg.codec), stepFull, "restic", stepFull, 3)
	} else {
		speed(stepFull, stepFull, "restic", stepFull, 2)
	}
	speed(stepIncrCBT, stepIncrCBT, "restic", stepIncr, 10)
	speed(stepIncrHash, stepIncrHash, "restic", stepIncr, 3.5)
	speed(stepRestore, stepRestore, "restic", stepRestore, 3.5)
	if v, ok := res.summary("vmbackup", stepFull); ok {
		if r, ok := res.summary("ref", stepFull); ok && r.wall > 0 {
			x := float64(v.wall) / float64(r.wall)
			ts = append(ts, target{"full within 1.2× of ref (same codec)", x <= 1.2, fmt.Sprintf("%.2f× ref's time", x), false})
		}
	}
	if fast {
		repoVsRestic(fmt.Sprintf("repository with %s (the fast codec's cost)", cfg.codec), stepFull, true)
	} else {
		repoVsRestic("repository at most 2 % larger than restic's", stepFull, false)
	}
	if _, ok := res.summary("vmbackup", stepRecompress); ok && cfg.recomp != "" {
		speed(fmt.Sprintf("window mode: full with %s", cfg.codec), stepFull, "restic", stepFull, 2)
		repoVsRestic(fmt.Sprintf("window mode: repository after recompressing to %s at most 2 %% larger than restic's", cfg.recomp), stepRecompress, false)
	}
	if v, ok := res.summary("vmbackup", stepIncrCBT); ok {
		if p, ok := res.summary("restic", stepIncr); ok && p.growth > 0 {
			x := float64(v.growth) / float64(p.growth)
			ts = append(ts, target{"growth from the mutation ≤ 70 % of restic's", x <= 0.7, fmt.Sprintf("%.0f %%", 100*x), false})
		}
	}
	var peak int64
	for _, st := range res.steps["vmbackup"] {
		s, _ := res.summary("vmbackup", st)
		peak = max(peak, s.peakRSS)
	}
	ts = append(ts, target{"peak RSS ≤ 200 MiB", peak <= 200<<20, mib(peak), false})
	fmt.Fprintln(w)
	fmt.Fprintln(w, "targets (issue 8):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range ts {
		verdict := "met"
		switch {
		case t.cost:
			verdict = "(cost)"
		case !t.ok:
			verdict = "NOT MET"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", t.what, t.value, verdict)
	}
	tw.Flush()
}

func prefixAll(p string, s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = p + v
	}
	return out
}

func ratio(ok bool, a, b float64, unit string) string {
	if !ok || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f%s", a/b, unit)
}

// runMatrix runs vmbackup (and ref) at every chunk size and codec, and the
// peers (restic, borg) once per run for comparison, all interleaved, and
// prints one row per configuration: full, incremental with change
// tracking, hash-only incremental and restore times, repository size,
// growth from the 1 % mutation, objects per GiB, and the speed-ups and
// growth relative to restic where it ran.
func runMatrix(ctx context.Context, cfg config, ws *workspace, tools []string) error {
	w := cfg.out
	type key struct {
		tool  string
		chunk int64
		codec string
	}
	res := map[key]*results{}
	var keys []key
	round := func(r int, k key) error {
		if res[k] == nil {
			res[k] = newResults()
			keys = append(keys, k)
		}
		t0 := time.Now()
		phases, err := runToolRound(ctx, cfg, ws, k.tool, r, k.chunk, k.codec, true)
		if err != nil {
			return fmt.Errorf("%s %s %s, run %d: %w", k.tool, formatSize(k.chunk), k.codec, r, err)
		}
		res[k].add(k.tool, phases)
		what := "(its own chunking and compression)"
		if k.chunk > 0 {
			what = fmt.Sprintf("%6s %-12s", formatSize(k.chunk), k.codec)
		}
		fmt.Fprintf(w, "run %d/%d %-8s %s done in %.1fs:%s\n", r, cfg.runs, k.tool, what, time.Since(t0).Seconds(), phaseTimes(phases))
		return nil
	}
	for r := 1; r <= cfg.runs; r++ {
		for _, t := range tools {
			if _, ok := peers[t]; ok {
				if err := round(r, key{tool: t}); err != nil {
					return err
				}
			}
		}
		for _, c := range cfg.mChunks {
			for _, codec := range cfg.mCodecs {
				for _, t := range tools {
					if t == "vmbackup" || t == "ref" {
						if err := round(r, key{t, c, codec}); err != nil {
							return err
						}
					}
				}
			}
		}
	}
	fmt.Fprintln(w)
	header(w, cfg, ws)
	fmt.Fprintf(w, "%d run(s) interleaved; medians of wall time; CPU = user + system; objects per GiB = repository files after the full backup per GiB of logical image;\n", cfg.runs)
	fmt.Fprintf(w, "restic and borg have no change tracking: their incremental (a second backup) is in the incr-cbt column; ×restic = restic's wall / this row's (above 1: faster); growth/restic below 1: smaller\n\n")
	rs, haveRestic := res[key{tool: "restic"}]
	var rFull, rIncr, rRestore summary
	if haveRestic {
		rFull, _ = rs.summary("restic", stepFull)
		rIncr, _ = rs.summary("restic", stepIncr)
		rRestore, _ = rs.summary("restic", stepRestore)
	}
	ratio := func(peer, own time.Duration) string {
		if !haveRestic || own <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", peer.Seconds()/own.Seconds())
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tool\tchunk\tcodec\tfull s\tfull CPU s\tincr-cbt s\tincr CPU s\tincr-hash s\trestore s\trepo MiB\tgrowth MiB\tobjects/GiB\tpeak RSS MiB\tfull ×restic\tincr-cbt ×restic\tincr-hash ×restic\trestore ×restic\tgrowth/restic\t")
	for _, k := range keys {
		r := res[k]
		f, _ := r.summary(k.tool, stepFull)
		i, ok := r.summary(k.tool, stepIncrCBT)
		if !ok {
			i, _ = r.summary(k.tool, stepIncr)
		}
		h, hasHash := r.summary(k.tool, stepIncrHash)
		rest, _ := r.summary(k.tool, stepRestore)
		chunk, codec, hash, hashRatio := "-", "-", "-", "-"
		if k.chunk > 0 {
			chunk, codec = formatSize(k.chunk), k.codec
		}
		if hasHash {
			hash, hashRatio = secs(h.wall), ratio(rIncr.wall, h.wall)
		}
		growth := "-"
		if haveRestic && rIncr.growth > 0 {
			growth = fmt.Sprintf("%.2f", float64(i.growth)/float64(rIncr.growth))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t+%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", k.tool, chunk, codec,
			secs(f.wall), secs(f.user+f.sys), secs(i.wall), secs(i.user+i.sys), hash, secs(rest.wall),
			mibNum(f.repo), mibNum(i.growth), float64(f.files)/(float64(ws.size)/(1<<30)), mibNum(max(f.peakRSS, i.peakRSS, h.peakRSS, rest.peakRSS)),
			ratio(rFull.wall, f.wall), ratio(rIncr.wall, i.wall), hashRatio, ratio(rRestore.wall, rest.wall), growth)
	}
	return tw.Flush()
}

// writeJSON prints v as JSON.
func writeJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
