package compress

import (
	"bytes"
	"fmt"
	"testing"
)

// benchData are 1 MiB chunks of the kinds a VM disk holds: log-like text,
// database pages, and random bytes (encrypted or already compressed data).
// "mix" cycles through one chunk of each.
func benchData() map[string][][]byte {
	t, d, r := text(chunkSize, 21), dbPages(chunkSize, 22), random(chunkSize, 23)
	return map[string][][]byte{
		"text":   {t},
		"db":     {d},
		"random": {r},
		"mix":    {t, d, r},
	}
}

var benchKinds = []string{"text", "db", "random", "mix"}

// BenchmarkEncode reports MB/s of plaintext encoded per codec and data kind,
// and the stored size in per cent of the plaintext ("stored%").
//
//	go test -run '^$' -bench . -benchtime 20x ./compress
func BenchmarkEncode(b *testing.B) {
	data := benchData()
	for _, c := range allCodecs(b) {
		for _, kind := range benchKinds {
			chunks := data[kind]
			b.Run(c.Name()+"/"+kind, func(b *testing.B) {
				buf := make([]byte, 0, 2*chunkSize)
				var in, out int
				b.SetBytes(chunkSize)
				for i := 0; b.Loop(); i++ {
					src := chunks[i%len(chunks)]
					buf = Encode(buf[:0], c, src)
					in += len(src)
					out += len(buf)
				}
				b.ReportMetric(100*float64(out)/float64(in), "stored%")
			})
		}
	}
}

// BenchmarkDecode reports MB/s of plaintext decoded per codec and data kind.
func BenchmarkDecode(b *testing.B) {
	data := benchData()
	for _, c := range allCodecs(b) {
		for _, kind := range benchKinds {
			var encoded [][]byte
			for _, src := range data[kind] {
				encoded = append(encoded, Encode(nil, c, src))
			}
			b.Run(c.Name()+"/"+kind, func(b *testing.B) {
				buf := make([]byte, 0, chunkSize)
				b.SetBytes(chunkSize)
				for i := 0; b.Loop(); i++ {
					var err error
					buf, err = Decode(buf[:0], encoded[i%len(encoded)], chunkSize)
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkIncompressible compares Encode with and without its pre-check
// for incompressible chunks (see incompressible), on the zstd codecs where
// it is used: "random" is what it saves, the others what it costs.
//
//	go test -run '^$' -bench Incompressible -benchtime 30x ./compress
func BenchmarkIncompressible(b *testing.B) {
	data := benchData()
	repeated := bytes.Repeat(random(4096, 24), chunkSize/4096)
	for _, name := range []string{"zstd-fastest", "zstd", "zstd-better"} {
		c, _ := Lookup(name)
		for _, kind := range []string{"random", "text", "db", "repeated-random"} {
			src := repeated
			if kind != "repeated-random" {
				src = data[kind][0]
			}
			for _, precheck := range []bool{false, true} {
				b.Run(fmt.Sprintf("%s/%s/precheck=%v", name, kind, precheck), func(b *testing.B) {
					buf := make([]byte, 0, 2*chunkSize)
					b.SetBytes(chunkSize)
					for b.Loop() {
						buf = encode(buf[:0], c, src, precheck)
					}
				})
			}
		}
	}
}
