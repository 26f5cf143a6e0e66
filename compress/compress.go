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
// Incompressible data (encrypted or already compressed files) is common on
// disks, so Encode spots it before compressing, for the zstd codecs, with
// two cheap tests that must both agree: eight 4 KiB
// samples that all look random to compress.Estimate, and an s2 match search
// over the whole chunk (s2.EstimateBlockSize) that finds too few repeats.
// The second test keeps chunks that are random in every sample but repeat
// elsewhere (a random 4 KiB block written many times) from being stored raw.
// Measured with BenchmarkIncompressible on 1 MiB chunks (2 shared cores):
// random chunks encode at 4.1 to 6.8 GB/s with the pre-check against 0.6 to
// 1.4 GB/s without it, text and database pages cost the same either way, and
// only the rare repeated-random chunk pays about 0.1 ms more. The s2 codecs
// skip the pre-check: s2 itself bails out of random data at about 5 GB/s,
// as fast as the check would be. Whatever the path, Encode compresses at
// most once, compares the sizes, and when it saved under 3 % overwrites the
// payload in place with the plaintext: no second buffer.
//
// Pooling: each zstd level has one *zstd.Encoder, created on first use,
// whose EncodeAll is safe for concurrent use and keeps up to GOMAXPROCS
// encoder states in its own pool; one *zstd.Decoder (and one for
// DecodeWithoutChecksum) serves every Decode the same way. s2 block coding
// keeps no state between calls. No encoder or decoder state is allocated
// per chunk, and both Encode and Decode append to the caller's dst so
// buffers can be reused.
//
// zstd frames carry a content checksum (xxhash64, 4 bytes): it costs
// nothing measurable when encoding, and it lets Decode itself report most
// corruption of zstd chunks as ErrCorrupt. s2 blocks carry no checksum, so
// a flipped byte inside an s2 literal run decodes to wrong bytes without
// error. The repository re-hashes every plaintext against its chunk id
// anyway, so it decodes with DecodeWithoutChecksum: checking the frame
// checksum too cost 10-15 % of zstd's decoding time (BenchmarkDecode,
// zstd/mix 1130 against 1275 MB/s).
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

	kcompress "github.com/klauspost/compress"
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

// Names lists the codec names Lookup accepts: "none", then the zstd and s2
// levels, fastest first within each family. The caller may modify the
// returned slice.
func Names() []string {
	names := make([]string, len(codecs))
	for i, c := range codecs {
		names[i] = c.name
	}
	return names
}

// Encode appends tag+payload for src to dst and returns the extended slice.
// src may be any chunk size (s2 limits a block to about 4 GiB).
// If c saves too little (under 3 % of len(src)) the chunk is stored raw under
// TagNone instead, so an empty src always encodes to the single byte TagNone.
// For the zstd codecs a cheap test first spots chunks that zstd cannot
// shrink and stores them raw without compressing (see the package doc).
// c must not be nil.
func Encode(dst []byte, c Codec, src []byte) []byte {
	return encode(dst, c, src, true)
}

// encode is Encode with the incompressibility pre-check optional, so the
// benchmark can compare both ways.
func encode(dst []byte, c Codec, src []byte, precheck bool) []byte {
	start := len(dst)
	if c.Tag() == TagNone || len(src) == 0 || (precheck && c.Tag() == TagZstd && incompressible(src)) {
		dst = append(dst, byte(TagNone))
		return append(dst, src...)
	}
	dst = append(dst, byte(c.Tag()))
	dst = c.Compress(dst, src)
	if payload := len(dst) - start - 1; (len(src)-payload)*100 >= minSavingPercent*len(src) {
		return dst
	}
	// Saved too little: reuse the space for the plaintext.
	dst = append(dst[:start], byte(TagNone))
	return append(dst, src...)
}

// Parameters of incompressible, calibrated with BenchmarkIncompressible and
// TestIncompressible.
const (
	// Chunks shorter than this are simply compressed.
	precheckMinSize = 64 << 10
	// Samples taken, evenly spread, and their size.
	precheckSamples, precheckSampleSize = 8, 4 << 10
	// compress.Estimate of a random sample is about 0.05 at most; text
	// and database pages give 0.3 and more; data that entropy coding
	// alone could shrink by 3 % gives more than 0.1.
	precheckMaxEstimate = 0.1
)

// incompressible reports whether src is very likely to compress by less
// than 3 %. It must not say so of compressible data (that would lose
// savings); a wrong "no" costs only time. Two tests must agree:
//   - every sample looks random to compress.Estimate (byte histogram and
//     order-1 prediction), so entropy coding has nothing to gain; the
//     first sample that does not ends the test, so compressible chunks
//     pay for one 4 KiB sample;
//   - s2.EstimateBlockSize, a match search over the whole chunk without
//     output, finds too few repeats: this catches chunks that are random
//     in every sample but repeat at long distances.
func incompressible(src []byte) bool {
	if len(src) < precheckMinSize {
		return false
	}
	step := len(src) / precheckSamples
	for i := range precheckSamples {
		if kcompress.Estimate(src[i*step:i*step+precheckSampleSize]) >= precheckMaxEstimate {
			return false
		}
	}
	n := s2.EstimateBlockSize(src)
	return n < 0 || (len(src)-n)*100 < minSavingPercent*len(src)
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
	return decode(dst, encoded, maxSize, false)
}

// DecodeWithoutChecksum is Decode without checking the codec's own
// checksum of the content (zstd's frame checksum), for callers that verify
// the decoded content themselves, as the repository does with every
// object's SHA-256: hashing it twice is wasted work (10-15 % of zstd's
// decoding time). Malformed input is still an error wrapping ErrCorrupt,
// never a panic, but altered input that still decodes is the caller's to
// catch.
func DecodeWithoutChecksum(dst, encoded []byte, maxSize int) ([]byte, error) {
	return decode(dst, encoded, maxSize, true)
}

func decode(dst, encoded []byte, maxSize int, skipChecksum bool) ([]byte, error) {
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
		out, err = zstdDecode(dst, payload, maxSize, skipChecksum)
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
			// A 1 MiB window (the default is 8 MiB) halves each
			// state's memory (to about 5, 7 and 13 MiB for fastest,
			// default and better) with the same output on 1 MiB chunks
			// and no loss on 16 MiB database-like chunks (measured).
			zstd.WithWindowSize(zstdWindow),
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

// zstdWindow is the match window of the encoders.
const zstdWindow = 1 << 20

// zstdMaxWindow bounds the window of frames Decode accepts. Encode writes
// single-segment frames, whose window is their content size, so this only
// limits what foreign or corrupt frames could make the decoder allocate.
const zstdMaxWindow = 1 << 26

// zstdDecoders are the shared decoders: [0] checks frame checksums, [1]
// skips them (DecodeWithoutChecksum).
var zstdDecoders = [2]func() *zstd.Decoder{
	sync.OnceValue(func() *zstd.Decoder { return newZstdDecoder(false) }),
	sync.OnceValue(func() *zstd.Decoder { return newZstdDecoder(true) }),
}

func newZstdDecoder(ignoreChecksum bool) *zstd.Decoder {
	d, err := zstd.NewReader(nil,
		// DecodeAll may run this many decodes at once.
		zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
		// Decode never lets a frame grow dst past the capacity it set up
		// from the checked frame header.
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
		zstd.IgnoreChecksum(ignoreChecksum),
	)
	if err != nil {
		panic(fmt.Sprintf("compress: zstd decoder: %v", err))
	}
	return d
}

func zstdDecode(dst, payload []byte, maxSize int, skipChecksum bool) ([]byte, error) {
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
	dec := zstdDecoders[0]
	if skipChecksum {
		dec = zstdDecoders[1]
	}
	out, err := dec().DecodeAll(payload, grown[:n:n+limit])
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
