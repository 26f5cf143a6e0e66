package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// A peer is another backup program run through its command line on the
// same image: restic and borg.
type peer struct {
	name string
	bin  string
	pkg  string // Debian package that provides bin
	// env returns the environment for a run in dir (repository, cache).
	env func(dir string) []string
	// init creates the repository (not timed).
	init []string
	// backup returns the arguments that back up disk.raw (in the working
	// directory) as archive name.
	backup func(name string) []string
	// restore returns the arguments that restore archive name; the
	// working directory is the restore directory.
	restore func(dir, name string) []string
	note    string
}

var peers = map[string]peer{
	"restic": {
		name: "restic", bin: "restic", pkg: "restic",
		env: func(dir string) []string {
			return []string{
				"RESTIC_REPOSITORY=" + filepath.Join(dir, "repo"),
				"RESTIC_PASSWORD=vmbackup-bench",
				"RESTIC_CACHE_DIR=" + filepath.Join(dir, "cache"),
			}
		},
		// Compression needs repository format 2.
		init: []string{"init", "--repository-version", "2"},
		backup: func(string) []string {
			return []string{"--compression", "auto", "--quiet", "backup", "disk.raw"}
		},
		restore: func(dir, _ string) []string {
			return []string{"--quiet", "restore", "latest", "--target", dir}
		},
		note: "restic: --compression auto, content-defined chunks; restore writes every byte (restic 0.14 has no --sparse)",
	},
	"borg": {
		name: "borg", bin: "borg", pkg: "borgbackup",
		env: func(dir string) []string {
			return []string{
				"BORG_REPO=" + filepath.Join(dir, "repo"),
				"BORG_BASE_DIR=" + filepath.Join(dir, "base"),
				"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
				"BORG_RELOCATED_REPO_ACCESS_IS_OK=yes",
			}
		},
		init: []string{"init", "--encryption=none"},
		backup: func(name string) []string {
			return []string{"create", "--compression", "zstd,3", "::" + name, "disk.raw"}
		},
		restore: func(_, name string) []string {
			return []string{"extract", "--sparse", "::" + name}
		},
		note: "borg: --compression zstd,3, default (buzhash) chunker, no encryption; extract --sparse",
	},
}

// available reports whether the peer's program is installed.
func (p peer) available() bool {
	_, err := exec.LookPath(p.bin)
	return err == nil
}

// runPeer runs one round of a peer in a new directory under ws.dir: full
// backup of the image, a second backup after the mutation (the peers have
// no change tracking: each backup reads the whole file), and a restore of
// the second one, checked against the mutated image.
func runPeer(ctx context.Context, ws *workspace, p peer, run int) ([]Phase, error) {
	dir := filepath.Join(ws.dir, fmt.Sprintf("%s-%d", p.name, run))
	defer os.RemoveAll(dir)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "restore")
	for _, d := range []string{src, dst} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	env := p.env(dir)
	repo := filepath.Join(dir, "repo")
	if _, err := runTool(ctx, dir, env, p.bin, p.init...); err != nil {
		return nil, err
	}
	disk := filepath.Join(src, "disk.raw")
	var out []Phase
	var before int64
	// The image is hard-linked as src/disk.raw: same path for both
	// backups (so each peer finds its previous one), another inode after
	// the mutation (so neither trusts its file cache).
	for _, s := range []struct{ step, image, archive string }{
		{stepFull, ws.base, "full"},
		{stepIncr, ws.mut, "incr"},
	} {
		os.Remove(disk)
		if err := os.Link(s.image, disk); err != nil {
			return nil, err
		}
		if err := ws.settle(); err != nil {
			return nil, err
		}
		ph, err := runTool(ctx, src, env, p.bin, p.backup(s.archive)...)
		if err != nil {
			return nil, err
		}
		ph.Step = s.step
		if ph.RepoBytes, ph.RepoFiles, err = dirUsage(repo); err != nil {
			return nil, err
		}
		ph.Growth, before = ph.RepoBytes-before, ph.RepoBytes
		out = append(out, ph)
	}
	if err := ws.settle(); err != nil {
		return nil, err
	}
	ph, err := runTool(ctx, dst, env, p.bin, p.restore(dst, "incr")...)
	if err != nil {
		return nil, err
	}
	ph.Step = stepRestore
	got, err := findFile(dst, "disk.raw")
	if err != nil {
		return nil, fmt.Errorf("%s restore: %w", p.name, err)
	}
	if err := sameContent(ws.mut, got); err != nil {
		return nil, fmt.Errorf("%s restore is wrong: %w", p.name, err)
	}
	ph.Verified = true
	return append(out, ph), nil
}
