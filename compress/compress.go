// Package compress holds the codecs that chunks are stored with, behind one
// small interface. Every encoded chunk starts with a one-byte tag naming its
// codec, so a repository may mix codecs and a reader needs no outside
// knowledge.
package compress

import "errors"

// ErrCorrupt is wrapped by Decode for input that is not a valid encoded chunk.
var ErrCorrupt = errors.New("compress: corrupt input")

// Tag is the first byte of every encoded chunk; it names how the rest is stored.
type Tag byte

// Codec compresses chunks. Implementations are safe for concurrent use and
// pool their encoder state: no per-call allocation of encoders.
type Codec interface {
	// Name is the codec's name as Lookup accepts it.
	Name() string
	// Tag is written before the compressed payload.
	Tag() Tag
	// Compress appends the compressed form of src to dst (no tag).
	Compress(dst, src []byte) []byte
}

// Default is the name of the codec used when none is configured.
const Default = "zstd"

// Lookup returns the codec with the given name: "none", "zstd-fastest",
// "zstd" (default level), "zstd-better", "s2", "s2-better".
func Lookup(name string) (Codec, error) { panic("TODO") }

// Names lists the codec names Lookup accepts.
func Names() []string { panic("TODO") }

// Encode appends tag+payload for src to dst. If c saves too little
// (under 3 %) the chunk is stored raw under the "none" tag.
func Encode(dst []byte, c Codec, src []byte) []byte { panic("TODO") }

// Decode appends the decoded content of an encoded chunk to dst. Garbage
// gives an error wrapping ErrCorrupt, never a panic. maxSize bounds the
// decoded size (a chunk is never larger than the repository's chunk size).
func Decode(dst, encoded []byte, maxSize int) ([]byte, error) { panic("TODO") }
