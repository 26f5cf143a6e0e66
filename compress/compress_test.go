package compress

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/golden and the FuzzDecode seed corpus")

const chunkSize = 1 << 20

// Test inputs. All are deterministic, so failures reproduce.

func zeros(n int) []byte { return make([]byte, n) }

func random(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

// text is log-like lines: repeated structure, varying fields (about 4x
// smaller with zstd).
func text(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	levels := []string{"INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"}
	paths := []string{"/v1/vms", "/v1/vms/%d/disks", "/v1/backups/%d", "/healthz", "/v1/plans/%d/run"}
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		path := paths[r.IntN(len(paths))]
		if strings.Contains(path, "%d") {
			path = fmt.Sprintf(path, r.IntN(5000))
		}
		fmt.Fprintf(&b, "2026-11-25T06:%02d:%02d.%03dZ %-5s service=api req=%08x path=%s status=%d dur=%dms\n",
			i/3600%60, i/60%60, r.IntN(1000), levels[r.IntN(len(levels))], r.Uint32(), path,
			[]int{200, 200, 200, 201, 404, 500}[r.IntN(6)], r.IntN(900))
	}
	return b.Bytes()[:n]
}

// dbPages is 8 KiB database-like pages: a header with a random checksum,
// rows of integers, names from a small dictionary and random floats, and
// free space left zero at the end of each page.
func dbPages(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	names := []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}
	b := make([]byte, n)
	for page := 0; page < n; page += 8192 {
		p := b[page:min(page+8192, n)]
		if len(p) < 64 {
			break
		}
		binary.LittleEndian.PutUint64(p[0:], uint64(page/8192))
		binary.LittleEndian.PutUint32(p[8:], r.Uint32())
		off := 24
		fill := 8192 * (40 + r.IntN(50)) / 100
		for row := 0; off+48 < min(fill, len(p)); row++ {
			binary.LittleEndian.PutUint64(p[off:], uint64(page*10+row))
			binary.LittleEndian.PutUint64(p[off+8:], rand.Uint64N(1000))
			copy(p[off+16:off+24], names[r.IntN(len(names))])
			binary.LittleEndian.PutUint64(p[off+24:], uint64(r.Float64()*1e6))
			binary.LittleEndian.PutUint32(p[off+32:], 1)
			off += 40
		}
	}
	return b
}

func inputs() []struct {
	name string
	data []byte
} {
	return []struct {
		name string
		data []byte
	}{
		{"empty", []byte{}},
		{"one byte", []byte{'x'}},
		{"tiny text", []byte("hello, hello, hello, hello")}, // frame overhead eats the savings
		{"short text", bytes.Repeat([]byte("hello, "), 30)},
		{"short random", random(100, 1)},
		{"zeros", zeros(chunkSize)},
		{"text", text(chunkSize, 1)},
		{"db pages", dbPages(chunkSize, 1)},
		{"random", random(chunkSize, 2)},
		{"odd size text", text(chunkSize-12345, 3)},
		{"64 KiB text", text(64<<10, 4)},
	}
}

func allCodecs(t testing.TB) []Codec {
	var cs []Codec
	for _, name := range Names() {
		c, err := Lookup(name)
		if err != nil {
			t.Fatalf("Lookup(%q): %v", name, err)
		}
		cs = append(cs, c)
	}
	return cs
}

func TestRoundTrip(t *testing.T) {
	for _, c := range allCodecs(t) {
		for _, in := range inputs() {
			t.Run(c.Name()+"/"+in.name, func(t *testing.T) {
				enc := Encode(nil, c, in.data)
				got, err := Decode(nil, enc, max(len(in.data), 1))
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if !bytes.Equal(got, in.data) {
					t.Fatalf("round trip changed the data: got %d bytes, want %d", len(got), len(in.data))
				}

				if got, err := DecodeWithoutChecksum(nil, enc, max(len(in.data), 1)); err != nil || !bytes.Equal(got, in.data) {
					t.Fatalf("DecodeWithoutChecksum: %d bytes, %v; want the data", len(got), err)
				}

				// Both append to what the caller passes in.
				enc2 := Encode([]byte("head"), c, in.data)
				if !bytes.Equal(enc2, append([]byte("head"), enc...)) {
					t.Fatalf("Encode with a non-empty dst differs from Encode(nil) after the prefix")
				}
				got2, err := Decode([]byte("head"), enc2[4:], max(len(in.data), 1))
				if err != nil {
					t.Fatalf("Decode into non-empty dst: %v", err)
				}
				if !bytes.Equal(got2, append([]byte("head"), in.data...)) {
					t.Fatalf("Decode into non-empty dst lost the prefix or changed the data")
				}

				// Compress alone gives a payload that decodes under the codec's tag.
				payload := c.Compress(nil, in.data)
				got3, err := Decode(nil, append([]byte{byte(c.Tag())}, payload...), max(len(in.data), 1))
				if err != nil {
					t.Fatalf("Decode(tag+Compress): %v", err)
				}
				if !bytes.Equal(got3, in.data) {
					t.Fatalf("Compress round trip changed the data")
				}
			})
		}
	}
}

// TestEncodeChoosesTag checks which chunks are stored raw: random and tiny
// ones, and never a compressed payload that saves under 3 %.
func TestEncodeChoosesTag(t *testing.T) {
	for _, c := range allCodecs(t) {
		for _, in := range inputs() {
			enc := Encode(nil, c, in.data)
			tag, payload := Tag(enc[0]), enc[1:]
			wantRaw := c.Tag() == TagNone || in.name == "empty" || in.name == "one byte" || in.name == "tiny text" ||
				in.name == "short random" || in.name == "random"
			if wantRaw && tag != TagNone {
				t.Errorf("%s/%s: tag %s, want none", c.Name(), in.name, tag)
			}
			if !wantRaw && tag != c.Tag() {
				t.Errorf("%s/%s: tag %s, want %s (payload %d of %d bytes)", c.Name(), in.name, tag, c.Tag(), len(payload), len(in.data))
			}
			if tag == TagNone && len(payload) != len(in.data) {
				t.Errorf("%s/%s: raw payload of %d bytes for %d bytes of input", c.Name(), in.name, len(payload), len(in.data))
			}
			if tag != TagNone && len(payload)*100 > len(in.data)*97 {
				t.Errorf("%s/%s: kept a payload of %d bytes for %d bytes of input (saves under 3 %%)", c.Name(), in.name, len(payload), len(in.data))
			}
		}
	}
}

// TestEncodeThreshold builds chunks that compress to just over and just
// under 3 % savings: random data followed by a run of zeros, which every
// codec shrinks to almost nothing.
func TestEncodeThreshold(t *testing.T) {
	for _, tc := range []struct {
		zeroPercent int
		wantRaw     bool
	}{
		{zeroPercent: 0, wantRaw: true},
		{zeroPercent: 2, wantRaw: true}, // saves about 2 %
		{zeroPercent: 5, wantRaw: false},
		{zeroPercent: 50, wantRaw: false},
	} {
		src := random(chunkSize, 7)
		clear(src[chunkSize-chunkSize*tc.zeroPercent/100:])
		for _, c := range allCodecs(t) {
			if c.Tag() == TagNone {
				continue
			}
			enc := Encode(nil, c, src)
			if gotRaw := Tag(enc[0]) == TagNone; gotRaw != tc.wantRaw {
				t.Errorf("%s with %d %% zeros: raw=%v, want %v (encoded %d of %d bytes)", c.Name(), tc.zeroPercent, gotRaw, tc.wantRaw, len(enc), len(src))
			}
			got, err := Decode(nil, enc, len(src))
			if err != nil || !bytes.Equal(got, src) {
				t.Fatalf("%s with %d %% zeros: round trip failed: %v", c.Name(), tc.zeroPercent, err)
			}
		}
	}
}

func TestEncodeEmpty(t *testing.T) {
	for _, c := range allCodecs(t) {
		if got := Encode(nil, c, nil); !bytes.Equal(got, []byte{byte(TagNone)}) {
			t.Errorf("%s: Encode(empty) = %x, want 00", c.Name(), got)
		}
	}
}

func TestLookup(t *testing.T) {
	want := []string{"none", "zstd-fastest", "zstd", "zstd-better", "s2", "s2-better"}
	if diff := cmp.Diff(want, Names()); diff != "" {
		t.Fatalf("Names() mismatch (-want +got):\n%s", diff)
	}
	wantTags := map[string]Tag{
		"none": TagNone, "zstd-fastest": TagZstd, "zstd": TagZstd, "zstd-better": TagZstd, "s2": TagS2, "s2-better": TagS2,
	}
	for _, name := range want {
		c, err := Lookup(name)
		if err != nil {
			t.Fatalf("Lookup(%q): %v", name, err)
		}
		if c.Name() != name || c.Tag() != wantTags[name] {
			t.Errorf("Lookup(%q) = codec %q tag %s, want tag %s", name, c.Name(), c.Tag(), wantTags[name])
		}
	}
	if _, err := Lookup(Default); err != nil {
		t.Errorf("Lookup(Default=%q): %v", Default, err)
	}
	for _, bad := range []string{"", "gzip", "ZSTD", "zstd "} {
		_, err := Lookup(bad)
		if !errors.Is(err, ErrUnknownCodec) {
			t.Errorf("Lookup(%q) error = %v, want ErrUnknownCodec", bad, err)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) || !strings.Contains(err.Error(), "zstd-better") {
			t.Errorf("Lookup(%q) error %q does not name the value and the known codecs", bad, err)
		}
	}
	// Names returns a copy.
	Names()[0] = "changed"
	if Names()[0] != "none" {
		t.Error("changing Names()'s result changed the package's list")
	}
}

// TestTagValues pins the on-disk tag bytes: changing one makes every stored
// chunk unreadable.
func TestTagValues(t *testing.T) {
	got := map[string]byte{"none": byte(TagNone), "zstd": byte(TagZstd), "s2": byte(TagS2)}
	want := map[string]byte{"none": 0x00, "zstd": 0x01, "s2": 0x02}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("tag values changed (-want +got):\n%s", diff)
	}
	for tag, name := range map[Tag]string{TagNone: "none", TagZstd: "zstd", TagS2: "s2", 0x7f: "tag(0x7f)"} {
		if tag.String() != name {
			t.Errorf("Tag(0x%02x).String() = %q, want %q", byte(tag), tag.String(), name)
		}
	}
}

// TestGolden decodes chunks encoded by an earlier version (testdata/golden),
// so a change of format or of the library's decoder shows up here. -update
// rewrites them from the current encoder.
func TestGolden(t *testing.T) {
	plain := text(64<<10, 99)
	for _, c := range allCodecs(t) {
		path := filepath.Join("testdata", "golden", c.Name()+".bin")
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, Encode(nil, c, plain), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		enc, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -update once)", err)
		}
		if Tag(enc[0]) != c.Tag() {
			t.Errorf("%s: golden chunk has tag %s, want %s", c.Name(), Tag(enc[0]), c.Tag())
		}
		got, err := Decode(nil, enc, len(plain))
		if err != nil {
			t.Fatalf("%s: Decode(golden): %v", c.Name(), err)
		}
		if !bytes.Equal(got, plain) {
			t.Errorf("%s: golden chunk decodes to different bytes", c.Name())
		}
	}
}

func mustEncode(t testing.TB, name string, src []byte) []byte {
	c, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	enc := Encode(nil, c, src)
	if Tag(enc[0]) != c.Tag() {
		t.Fatalf("test input stored as %s, not %s", Tag(enc[0]), c.Tag())
	}
	return enc
}

func TestDecodeCorrupt(t *testing.T) {
	src := text(64<<10, 5)
	zs := mustEncode(t, "zstd", src)
	s2b := mustEncode(t, "s2", src)
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x40
		return b
	}
	// 4 MiB of zeros make a tiny zstd frame whose header claims 4 MiB.
	big := mustEncode(t, "zstd-fastest", zeros(4<<20))
	// What DecodeWithoutChecksum does with each: the same error as Decode
	// unless noted.
	const (
		sameError    = ""
		decodes      = "decodes"        // to src: only the checksum was hit
		errOrAltered = "err or altered" // an error, or content that differs
	)
	for _, tc := range []struct {
		name    string
		in      []byte
		maxSize int
		want    string // in the message
		nocrc   string
	}{
		{"empty", nil, chunkSize, "no tag", sameError},
		{"unknown tag 0x03", append([]byte{0x03}, src[:100]...), chunkSize, "unknown tag 0x03", sameError},
		{"unknown tag 0xff", []byte{0xff}, chunkSize, "unknown tag 0xff", sameError},
		{"raw over limit", append([]byte{0}, src...), len(src) - 1, "exceeds limit", sameError},
		{"zstd tag only", []byte{byte(TagZstd)}, chunkSize, "zstd chunk", sameError},
		{"zstd garbage", append([]byte{byte(TagZstd)}, random(1000, 9)...), chunkSize, "zstd chunk", sameError},
		{"zstd truncated", zs[:len(zs)/2], chunkSize, "zstd chunk", sameError},
		{"zstd truncated header", zs[:4], chunkSize, "zstd chunk", sameError},
		{"zstd flipped byte", flip(zs, len(zs)/2), chunkSize, "zstd chunk", errOrAltered},
		{"zstd flipped checksum", flip(zs, len(zs)-1), chunkSize, "zstd chunk", decodes},
		{"zstd trailing garbage", append(bytes.Clone(zs), 1, 2, 3, 4, 5, 6, 7, 8), chunkSize, "zstd chunk", sameError},
		{"zstd two frames", append(bytes.Clone(zs), zs[1:]...), chunkSize, "zstd chunk", sameError},
		{"zstd over limit", big, chunkSize, "limit is 1048576", sameError},
		{"zstd skippable frame", append([]byte{byte(TagZstd), 0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0}, 1, 2, 3, 4), chunkSize, "skippable", sameError},
		{"s2 tag only", []byte{byte(TagS2)}, chunkSize, "s2 chunk", sameError},
		{"s2 garbage", append([]byte{byte(TagS2)}, random(1000, 10)...), chunkSize, "s2 chunk", sameError},
		{"s2 truncated", s2b[:len(s2b)/2], chunkSize, "s2 chunk", sameError},
		{"s2 over limit", s2b, len(src) - 1, "limit is 65535", sameError},
		{"s2 huge length", []byte{byte(TagS2), 0xff, 0xff, 0xff, 0xff, 0x0f}, chunkSize, "s2 chunk", sameError},
		{"s2 length overflow", []byte{byte(TagS2), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, chunkSize, "s2 chunk", sameError},
		{"s2 trailing garbage", append(bytes.Clone(s2b), 1, 2, 3), chunkSize, "s2 chunk", sameError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte("keep")
			got, err := Decode(dst, tc.in, tc.maxSize)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode error = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if string(got) != "keep" {
				t.Errorf("Decode returned %q on error, want dst unchanged", got)
			}

			got, err = DecodeWithoutChecksum(dst, tc.in, tc.maxSize)
			switch {
			case tc.nocrc == decodes:
				if err != nil || !bytes.Equal(got, append([]byte("keep"), src...)) {
					t.Errorf("DecodeWithoutChecksum: %d bytes, %v; want the content", len(got), err)
				}
			case tc.nocrc == errOrAltered && err == nil:
				if bytes.Equal(got, append([]byte("keep"), src...)) {
					t.Errorf("DecodeWithoutChecksum of altered input gave the original content")
				}
			case !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want):
				t.Errorf("DecodeWithoutChecksum error = %v, want ErrCorrupt with %q", err, tc.want)
			}
		})
	}
}

func TestDecodeBadMaxSize(t *testing.T) {
	for _, n := range []int{0, -1} {
		_, err := Decode(nil, []byte{0, 'x'}, n)
		if err == nil || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(n)) {
			t.Errorf("Decode(maxSize=%d) error = %v, want a non-corrupt error naming %d", n, err, n)
		}
	}
}

// TestDecodeExactLimit: a chunk exactly maxSize long decodes.
func TestDecodeExactLimit(t *testing.T) {
	src := text(4096, 6)
	for _, c := range allCodecs(t) {
		got, err := Decode(nil, Encode(nil, c, src), len(src))
		if err != nil || !bytes.Equal(got, src) {
			t.Errorf("%s: Decode with maxSize == len: %v", c.Name(), err)
		}
	}
}

// TestDecodeReusesBuffer: decoding into a buffer with room allocates no new
// array, and the capacity is handed back whole.
func TestDecodeReusesBuffer(t *testing.T) {
	src := text(chunkSize, 8)
	for _, c := range allCodecs(t) {
		enc := Encode(nil, c, src)
		buf := make([]byte, 0, 2*chunkSize)
		got, err := Decode(buf, enc, chunkSize)
		if err != nil {
			t.Fatal(err)
		}
		if &got[0] != &buf[:1][0] || cap(got) != cap(buf) {
			t.Errorf("%s: Decode did not decode into the caller's buffer (cap %d, want %d)", c.Name(), cap(got), cap(buf))
		}
	}
}

// TestNoAllocs: with reused buffers, encoding and decoding allocate nothing
// per chunk once the pools are warm (no encoder or decoder state per chunk).
func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	src := dbPages(chunkSize, 9)
	for _, c := range allCodecs(t) {
		ebuf := make([]byte, 0, 2*chunkSize)
		dbuf := make([]byte, 0, chunkSize)
		enc := Encode(ebuf, c, src)
		if a := testing.AllocsPerRun(20, func() { enc = Encode(ebuf[:0], c, src) }); a > 0 {
			t.Errorf("%s: Encode allocates %.1f times per chunk", c.Name(), a)
		}
		if a := testing.AllocsPerRun(20, func() { _, _ = Decode(dbuf[:0], enc, chunkSize) }); a > 0 {
			t.Errorf("%s: Decode allocates %.1f times per chunk", c.Name(), a)
		}
	}
}

func TestConcurrent(t *testing.T) {
	ins := inputs()
	cs := allCodecs(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Go(func() {
			for i := range 12 {
				c := cs[(g+i)%len(cs)]
				in := ins[(g*3+i)%len(ins)]
				got, err := Decode(nil, Encode(nil, c, in.data), max(len(in.data), 1))
				if err != nil || !bytes.Equal(got, in.data) {
					errs <- fmt.Errorf("%s/%s: round trip failed: %v", c.Name(), in.name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestIncompressible checks the pre-check against what zstd really does: it
// may only call a chunk incompressible when no zstd level saves 3 % on it,
// and it must spot plain random data (else it saves no time).
func TestIncompressible(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	limited := func(n int) []byte {
		b := make([]byte, chunkSize)
		for i := range b {
			b[i] = byte(r.IntN(n))
		}
		return b
	}
	withZeros := func(every int) []byte {
		b := random(chunkSize, uint64(every))
		for i := 0; i < len(b); i += every {
			b[i] = 0
		}
		return b
	}
	tail := func(percent int) []byte {
		b := random(chunkSize, 40)
		clear(b[chunkSize-chunkSize*percent/100:])
		return b
	}
	middle := random(chunkSize, 41)
	clear(middle[chunkSize/2-chunkSize/20 : chunkSize/2+chunkSize/20])
	halfRepeated := make([]byte, 0, chunkSize)
	unit := random(64, 42)
	for i := 0; len(halfRepeated) < chunkSize; i++ {
		halfRepeated = append(halfRepeated, unit...)
		halfRepeated = append(halfRepeated, random(64, uint64(100+i))...)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"random", random(chunkSize, 30), true},
		{"random 256 KiB", random(256<<10, 33), true},
		{"random 48 KiB (too short to check)", random(48<<10, 34), false},
		{"bytes below 250", limited(250), true},
		{"bytes below 200", limited(200), false},
		{"bytes below 16", limited(16), false},
		{"every 16th byte zero", withZeros(16), false},
		{"every 64th byte zero", withZeros(64), true},
		{"5 % zeros at the end", tail(5), false},
		{"10 % zeros in the middle", middle, false},
		{"hex of random", []byte(hex.EncodeToString(random(chunkSize/2, 35))), false},
		{"base64 of random", []byte(base64.StdEncoding.EncodeToString(random(chunkSize*3/4, 36))), false},
		{"text", text(chunkSize, 37), false},
		{"db pages", dbPages(chunkSize, 38), false},
		{"zeros", zeros(chunkSize), false},
		{"random 4 KiB repeated", bytes.Repeat(random(4096, 39), chunkSize/4096), false},
		{"random 64 B repeated every 128 B", halfRepeated, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := incompressible(tc.data)
			if got != tc.want {
				t.Errorf("incompressible = %v, want %v", got, tc.want)
			}
			if !got {
				return
			}
			for _, name := range []string{"zstd-fastest", "zstd", "zstd-better"} {
				c, _ := Lookup(name)
				if n := len(c.Compress(nil, tc.data)); (len(tc.data)-n)*100 >= minSavingPercent*len(tc.data) {
					t.Errorf("called incompressible, but %s saves %.1f %%", name, 100-100*float64(n)/float64(len(tc.data)))
				}
			}
		})
	}
}

// TestRoundTripLargestChunk: the largest chunk size a repository allows
// (16 MiB) round-trips, also past the 1 MiB zstd window.
func TestRoundTripLargestChunk(t *testing.T) {
	src := slices.Concat(dbPages(8<<20, 50), text(8<<20, 51))
	for _, name := range []string{"zstd-fastest", "s2"} {
		c, _ := Lookup(name)
		enc := Encode(nil, c, src)
		if Tag(enc[0]) != c.Tag() {
			t.Fatalf("%s: 16 MiB of pages and text stored as %s", name, Tag(enc[0]))
		}
		got, err := Decode(nil, enc, len(src))
		if err != nil || !bytes.Equal(got, src) {
			t.Fatalf("%s: 16 MiB round trip failed: %v", name, err)
		}
	}
}
