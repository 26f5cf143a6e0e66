package compress_test

import (
	"bytes"
	"fmt"
	"log"

	"github.com/vmbackup/vmbackup/compress"
)

func Example() {
	codec, err := compress.Lookup(compress.Default)
	if err != nil {
		log.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("a line of a log file\n"), 1000)

	// Encode and Decode append to a buffer the caller can reuse.
	encoded := compress.Encode(nil, codec, chunk)
	decoded, err := compress.Decode(nil, encoded, len(chunk))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(compress.Tag(encoded[0]), len(encoded) < len(chunk)/100, bytes.Equal(decoded, chunk))

	// Too short to gain anything: stored raw.
	fmt.Println(compress.Tag(compress.Encode(nil, codec, []byte("tiny"))[0]))
	// Output:
	// zstd true true
	// none
}
