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
	// The default codec goes first: every other is compared with it.
	order := []string{compress.Default}
	for _, c := range codecs {
		if c != compress.Default {
			order = append(order, c)
		}
	}
	var base int64
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for k, name := range order {
		c, err := compress.Lookup(name)
		if err != nil {
			return err
		}
		plain, out, el, err := encodeFile(path, chunk, c)
		if err != nil {
			return err
		}
		if k == 0 {
			base = out
			fmt.Fprintf(w, "%s: %s MiB in %s chunks, one core\n", path, mibNum(plain), formatSize(chunk))
			fmt.Fprintf(tw, "codec\tstored MiB\tratio\tvs %s\tMB/s\t\n", compress.Default)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%+.1f %%\t%.0f\t\n", name, mibNum(out), float64(plain)/float64(out), 100*(float64(out)/float64(base)-1), float64(plain)/1e6/el.Seconds())
	}
	return tw.Flush()
}

// encodeFile encodes the file at path chunk by chunk with c, reading it
// again for every codec so that a file of any size fits in memory; el
// counts only the encoding.
func encodeFile(path string, chunk int64, c compress.Codec) (plain, out int64, el time.Duration, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, chunk)
	var dst []byte
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			start := time.Now()
			dst = compress.Encode(dst[:0], c, buf[:n])
			el += time.Since(start)
			plain += int64(n)
			out += int64(len(dst))
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return 0, 0, 0, fmt.Errorf("read %s: %w", path, rerr)
		}
	}
	if plain == 0 {
		return 0, 0, 0, fmt.Errorf("%s is empty", path)
	}
	return plain, out, el, nil
}
