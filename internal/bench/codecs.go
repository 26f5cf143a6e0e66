package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/vmbackup/vmbackup/compress"
)

// codecTable cuts the file at path into chunk-sized pieces, as a backup
// would, and prints for every codec the stored size against "zstd"'s and
// the speed of one core: the benchmark's image has a synthetic
// compressible part, and a codec's cost in repository size is better
// judged on real files (a tar of /usr, a source tree, a VM image).
func codecTable(w io.Writer, path string, chunk int64, codecs []string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var chunks [][]byte
	var plain int64
	for {
		b := make([]byte, chunk)
		n, err := io.ReadFull(f, b)
		if n > 0 {
			chunks = append(chunks, b[:n])
			plain += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
	}
	if plain == 0 {
		return fmt.Errorf("%s is empty", path)
	}
	// The default codec goes first: every other is compared with it.
	order := []string{compress.Default}
	for _, c := range codecs {
		if c != compress.Default {
			order = append(order, c)
		}
	}
	var base int64
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "%s: %s MiB in %s chunks, one core\n", path, mibNum(plain), formatSize(chunk))
	fmt.Fprintf(tw, "codec\tstored MiB\tratio\tvs %s\tMB/s\t\n", compress.Default)
	for _, name := range order {
		c, err := compress.Lookup(name)
		if err != nil {
			return err
		}
		var out int64
		var dst []byte
		start := time.Now()
		for _, p := range chunks {
			dst = compress.Encode(dst[:0], c, p)
			out += int64(len(dst))
		}
		el := time.Since(start)
		if base == 0 {
			base = out
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%+.1f %%\t%.0f\t\n", name, mibNum(out), float64(plain)/float64(out), 100*(float64(out)/float64(base)-1), float64(plain)/1e6/el.Seconds())
	}
	return tw.Flush()
}
