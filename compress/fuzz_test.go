package compress

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// fuzzMaxSize is the limit FuzzDecode decodes under: small enough that the
// fuzzer quickly finds inputs that claim more.
const fuzzMaxSize = 1 << 16

// fuzzSeeds are valid chunks of every codec and a few broken ones. -update
// writes them to testdata/fuzz/FuzzDecode, the committed seed corpus.
func fuzzSeeds(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{
		"empty":          {},
		"unknown-tag":    {0x03, 1, 2, 3},
		"s2-huge-len":    {byte(TagS2), 0xff, 0xff, 0xff, 0xff, 0x0f},
		"zstd-skippable": {byte(TagZstd), 0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4},
	}
	for _, c := range allCodecs(t) {
		for name, src := range map[string][]byte{
			"text":   text(2048, 11),
			"db":     dbPages(8192, 12),
			"random": random(256, 13),
		} {
			seeds[fmt.Sprintf("%s-%s", c.Name(), name)] = Encode(nil, c, src)
		}
		if c.Tag() == TagNone {
			continue
		}
		// Payloads as Compress makes them, also where Encode would store
		// raw, and ones just at and just over the limit.
		for name, src := range map[string][]byte{
			"random-payload": random(256, 14),
			"empty-payload":  {},
			"at-limit":       zeros(fuzzMaxSize),
			"over-limit":     zeros(fuzzMaxSize + 1),
		} {
			seeds[fmt.Sprintf("%s-%s", c.Name(), name)] = append([]byte{byte(c.Tag())}, c.Compress(nil, src)...)
		}
	}
	return seeds
}

// FuzzDecode: Decode never panics, reports every failure as ErrCorrupt,
// never returns more than maxSize bytes, and whatever it accepts survives a
// round trip through a codec.
func FuzzDecode(f *testing.F) {
	seeds := fuzzSeeds(f)
	if *update {
		dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			f.Fatal(err)
		}
		for name, data := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				f.Fatal(err)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := Decode([]byte("prefix"), data, fuzzMaxSize)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if string(out) != "prefix" {
				t.Fatalf("dst changed on error: %q", out)
			}
			return
		}
		if !bytes.HasPrefix(out, []byte("prefix")) {
			t.Fatalf("Decode lost the dst prefix")
		}
		plain := out[len("prefix"):]
		if len(plain) > fuzzMaxSize {
			t.Fatalf("decoded %d bytes, over the limit %d", len(plain), fuzzMaxSize)
		}
		// One codec per input keeps each run cheap; the fuzzer varies it.
		cs := allCodecs(t)
		c := cs[len(data)%len(cs)]
		got, err := Decode(nil, Encode(nil, c, plain), max(len(plain), 1))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s: round trip of decoded data failed: %v", c.Name(), err)
		}
	})
}
