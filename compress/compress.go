// Package compress holds the codecs that chunks are stored with, behind one
// small interface. Every encoded chunk starts with a one-byte tag naming its
// codec, so a repository may mix codecs and a reader needs no outside
// knowledge.
//
// # Terms
//
//   - Codec: a named way to compress ("zstd", "s2-better", ...), found with
//     Lookup. Several codecs share one on-disk format: every zstd level is
//     decoded by the same zstd decoder, so the levels share a tag.
//   - Tag: the first byte of an encoded chunk; it names the format of the
//     payload that follows (raw, zstd frame, s2 block). Tags are an on-disk
//     format: their byte values below are fixed forever.
//   - Encoded chunk: tag byte + payload, as produced by Encode.
//
// # On-disk format
//
//	tag 0x00 (TagNone)  payload is the plaintext itself
//	tag 0x01 (TagZstd)  payload is exactly one zstd frame (RFC 8878) with
//	                    Frame_Content_Size and a content checksum
//	tag 0x02 (TagS2)    payload is one s2 block (github.com/klauspost/compress/s2,
//	                    a Snappy-compatible superset), which starts with the
//	                    uvarint decoded length
//
// Any other tag byte is corrupt input. New formats take new tag values;
// existing values are never renumbered or reused.
//
// # Decisions
//
// Raw fallback: Encode stores a chunk raw (TagNone) when compression saves
// less than 3 % of its size, so reading it back costs a copy and no
// decompression.
//
// Incompressible data is detected by compressing once, not by a separate
// guess first: both zstd and s2 recognise random input quickly on their own
// (their match finders skip ahead ever faster when nothing matches, zstd's
// literal encoder bails out when a histogram shows nothing to gain), and a
// pre-check on samples would misjudge chunks that are random in places but
// repeat elsewhere (a 1 MiB chunk of a file copied twice). BenchmarkEncode's
// "random" cases measure the result; see the figures in compress_test.go.
// Encode therefore compresses into dst, compares the sizes, and, when it
// saved too little, overwrites the payload in place with the plaintext: one
// compression and at most one copy, no extra buffer.
//
// Pooling: each zstd level has one *zstd.Encoder, created on first use,
// whose EncodeAll is safe for concurrent use and keeps up to GOMAXPROCS
// encoder states in its own pool; one *zstd.Decoder serves every Decode
// the same way. s2 block coding keeps no state between calls. No encoder or
// decoder state is allocated per chunk, and both Encode and Decode append to
// the caller's dst so buffers can be reused.
//
// zstd frames carry a content checksum (xxhash64, 4 bytes): it costs a few
// per cent of decoding speed and lets Decode itself report most corruption
// of zstd chunks as ErrCorrupt. s2 blocks carry no checksum, so a flipped
// byte inside an s2 literal run decodes to wrong bytes without error; the
// repository detects that by re-hashing the plaintext against the chunk id.
//
// Bounded decoding: Decode takes the largest size a chunk may decode to and
// checks every claimed size (the zstd frame header, the s2 length prefix)
// against it before allocating, so garbage cannot make it allocate more than
// maxSize bytes.
package compress

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// ErrCorrupt is wrapped by Decode for input that is not a valid encoded chunk.
var ErrCorrupt = errors.New("compress: corrupt input")

// ErrUnknownCodec is wrapped by Lookup for a name it does not know.
var ErrUnknownCodec = errors.New("compress: unknown codec")

// Tag is the first byte of every encoded chunk; it names how the rest is stored.
type Tag byte

// The tags of the on-disk format. Never renumber them.
const (
	// TagNone: the payload is the plaintext.
	TagNone Tag = 0x00
	// TagZstd: the payload is one zstd frame (any level).
	TagZstd Tag = 0x01
	// TagS2: the payload is one s2 block (Encode or EncodeBetter).
	TagS2 Tag = 0x02
)

// String returns the format's name: "none", "zstd", "s2", or "tag(0xNN)"
// for a byte that is no known tag.
func (t Tag) String() string {
	switch t {
	case TagNone:
		return "none"
	case TagZstd:
		return "zstd"
	case TagS2:
		return "s2"
	}
	return fmt.Sprintf("tag(0x%02x)", byte(t))
}

// Codec compresses chunks. Implementations are safe for concurrent use and
// pool their encoder state: no per-call allocation of encoders.
//
// Only this package implements Codec (it has an unexported method): every
// tag a codec writes must be one that Decode can read back.
type Codec interface {
	// Name is the codec's name as Lookup accepts it.
	Name() string
	// Tag is written before the compressed payload.
	Tag() Tag
	// Compress appends the compressed form of src to dst (no tag).
	Compress(dst, src []byte) []byte

	sealed()
}

// Default is the name of the codec used when none is configured.
const Default = "zstd"

// minSavingPercent is how much smaller than the plaintext a compressed
// payload must be for Encode to keep it; otherwise the chunk is stored raw.
const minSavingPercent = 3

// codec is the one implementation of Codec; compress does the work.
type codec struct {
	name     string
	tag      Tag
	compress func(dst, src []byte) []byte
}

func (c *codec) Name() string                    { return c.name }
func (c *codec) Tag() Tag                        { return c.tag }
func (c *codec) Compress(dst, src []byte) []byte { return c.compress(dst, src) }
func (c *codec) sealed()                         {}

// codecs in the order Names reports them.
var codecs = []*codec{
	{name: "none", tag: TagNone, compress: func(dst, src []byte) []byte { return append(dst, src...) }},
	{name: "zstd-fastest", tag: TagZstd, compress: zstdCompress(zstd.SpeedFastest)},
	{name: "zstd", tag: TagZstd, compress: zstdCompress(zstd.SpeedDefault)},
	{name: "zstd-better", tag: TagZstd, compress: zstdCompress(zstd.SpeedBetterCompression)},
	{name: "s2", tag: TagS2, compress: s2Compress(s2.Encode)},
	{name: "s2-better", tag: TagS2, compress: s2Compress(s2.EncodeBetter)},
}

// Lookup returns the codec with the given name: "none", "zstd-fastest",
// "zstd" (default level), "zstd-better", "s2", "s2-better". An unknown name
// gives an error wrapping ErrUnknownCodec that lists the known ones.
func Lookup(name string) (Codec, error) {
	for _, c := range codecs {
		if c.name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownCodec, name, strings.Join(Names(), ", "))
}

// Names lists the codec names Lookup accepts, fastest-to-decode first within
// each family. The caller may modify the returned slice.
func Names() []string {
	names := make([]string, len(codecs))
	for i, c := range codecs {
		names[i] = c.name
	}
	return names
}

// Encode appends tag+payload for src to dst and returns the extended slice.
// If c saves too little (under 3 % of len(src)) the chunk is stored raw under
// TagNone instead, so an empty src always encodes to the single byte TagNone.
// c must not be nil.
func Encode(dst []byte, c Codec, src []byte) []byte {
	start := len(dst)
	dst = append(dst, byte(c.Tag()))
	if c.Tag() == TagNone {
		return append(dst, src...)
	}
	dst = c.Compress(dst, src)
	payload := len(dst) - start - 1
	if (len(src)-payload)*100 >= minSavingPercent*len(src) && len(src) > 0 {
		return dst
	}
	// Saved too little: reuse the space for the plaintext.
	dst = append(dst[:start], byte(TagNone))
	return append(dst, src...)
}

// Decode appends the decoded content of an encoded chunk to dst and returns
// the extended slice. Garbage gives an error wrapping ErrCorrupt, never a
// panic. maxSize bounds the decoded size (a chunk is never larger than the
// repository's chunk size): a chunk claiming more is corrupt, and Decode
// allocates at most maxSize bytes for it. maxSize must be positive.
//
// On error the returned slice is dst as passed in (its length unchanged);
// bytes between len(dst) and cap(dst) may have been overwritten.
func Decode(dst, encoded []byte, maxSize int) ([]byte, error) {
	if maxSize <= 0 {
		return dst, fmt.Errorf("compress: decode: maxSize %d is not positive", maxSize)
	}
	if len(encoded) == 0 {
		return dst, fmt.Errorf("%w: empty input has no tag", ErrCorrupt)
	}
	tag, payload := Tag(encoded[0]), encoded[1:]
	var (
		out []byte
		err error
	)
	switch tag {
	case TagNone:
		if len(payload) > maxSize {
			return dst, fmt.Errorf("%w: raw chunk of %d bytes exceeds limit %d", ErrCorrupt, len(payload), maxSize)
		}
		return append(dst, payload...), nil
	case TagZstd:
		out, err = zstdDecode(dst, payload, maxSize)
	case TagS2:
		out, err = s2Decode(dst, payload, maxSize)
	default:
		return dst, fmt.Errorf("%w: unknown tag 0x%02x", ErrCorrupt, byte(tag))
	}
	if err != nil {
		return dst, fmt.Errorf("%w: %s chunk: %w", ErrCorrupt, tag, err)
	}
	return out, nil
}

// zstd

// zstdCompress returns the compress func of one zstd level. Its encoder is
// made on first use: an encoder's states (hash tables, history) are large,
// so levels never used cost nothing.
func zstdCompress(level zstd.EncoderLevel) func(dst, src []byte) []byte {
	enc := sync.OnceValue(func() *zstd.Encoder {
		e, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(level),
			// EncodeAll takes one of this many states per call; more
			// concurrent callers wait, which is no loss on a busy CPU.
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
			// Always write Frame_Content_Size, so Decode can check the
			// size before it allocates, and decode into one buffer.
			zstd.WithSingleSegment(true),
			// The content checksum lets Decode detect corruption itself.
			zstd.WithEncoderCRC(true),
			// Empty input gives a frame too, so Compress's output always
			// decodes (Encode stores empty chunks raw anyway).
			zstd.WithZeroFrames(true),
		)
		if err != nil {
			// Only invalid options fail, and these are constant.
			panic(fmt.Sprintf("compress: zstd encoder: %v", err))
		}
		return e
	})
	return func(dst, src []byte) []byte { return enc().EncodeAll(src, dst) }
}

// zstdMaxWindow bounds the window of frames Decode accepts. Encode writes
// single-segment frames, whose window is their content size, so this only
// limits what foreign or corrupt frames could make the decoder allocate.
const zstdMaxWindow = 1 << 26

var zstdDecoder = sync.OnceValue(func() *zstd.Decoder {
	d, err := zstd.NewReader(nil,
		// DecodeAll may run this many decodes at once.
		zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
		// Decode never lets a frame grow dst past the capacity it set up
		// from the checked frame header.
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
	)
	if err != nil {
		panic(fmt.Sprintf("compress: zstd decoder: %v", err))
	}
	return d
})

func zstdDecode(dst, payload []byte, maxSize int) ([]byte, error) {
	var h zstd.Header
	if err := h.Decode(payload); err != nil {
		return nil, fmt.Errorf("frame header: %w", err)
	}
	if h.Skippable {
		return nil, errors.New("skippable frame where data was expected")
	}
	limit := maxSize
	if h.HasFCS {
		if h.FrameContentSize > uint64(maxSize) {
			return nil, fmt.Errorf("frame claims %d bytes, limit is %d", h.FrameContentSize, maxSize)
		}
		limit = int(h.FrameContentSize)
	}
	n := len(dst)
	grown := slices.Grow(dst, limit)
	// The three-index slice caps what DecodeAll may write (cap limit on).
	out, err := zstdDecoder().DecodeAll(payload, grown[:n:n+limit])
	if err != nil {
		return nil, err
	}
	if len(out) > n && cap(grown) > n && &out[n] == &grown[:n+1][n] {
		// Same array: give the caller back the whole capacity.
		out = grown[:len(out)]
	}
	return out, nil
}

// s2

func s2Compress(encode func(dst, src []byte) []byte) func(dst, src []byte) []byte {
	return func(dst, src []byte) []byte {
		n := len(dst)
		// s2 encodes into dst[n:] when its capacity fits the worst case,
		// which MaxEncodedLen gives; chunks are far below its limit.
		dst = slices.Grow(dst, s2.MaxEncodedLen(len(src)))
		out := encode(dst[n:], src)
		return dst[:n+len(out)]
	}
}

func s2Decode(dst, payload []byte, maxSize int) ([]byte, error) {
	size, err := s2.DecodedLen(payload)
	if err != nil {
		return nil, err
	}
	if size > maxSize {
		return nil, fmt.Errorf("block claims %d bytes, limit is %d", size, maxSize)
	}
	n := len(dst)
	dst = slices.Grow(dst, size)
	out, err := s2.Decode(dst[n:n+size], payload)
	if err != nil {
		return nil, err
	}
	return dst[:n+len(out)], nil
}
