// Package repository stores restore points of virtual machines in a
// gocloud.dev bucket (file://, mem://, s3://, gs://, azblob://): a
// content-addressed chunk store, one paged index per disk and one manifest
// per restore point, plus verification, statistics and garbage collection
// that is safe while backups run in other processes.
//
// # Terms
//
//   - Chunk: ChunkSize bytes of a disk at an aligned offset (the last one
//     of a disk may be short). Its id (ChunkID) is the SHA-256 of its
//     plaintext. All-zero chunks are never stored: their slots hold
//     ZeroChunk.
//   - Index: one chunk id per slot of a disk, cut into pages of PageSlots
//     ids; pages and the root listing them are stored content-addressed,
//     like chunks, so an incremental point that changed a few chunks writes
//     a few pages and one small root, and points share unchanged pages.
//   - Restore point: a manifest (JSON) naming the VM, its configuration and,
//     per disk, the key of the disk's index root. It exists once its
//     manifest is written, and is self-contained: reading or deleting one
//     never needs another.
//   - Lease: an object by which an in-flight PointWriter tells garbage
//     collection what it may reference.
//
// # On-bucket format (version 1)
//
//	config                     JSON Config: {"version":1, "id", "chunk_size", "codec"}; written once, by Init, if absent
//	chunks/<hh>/<id>           a chunk: compress.Encode(plaintext) (1 codec tag byte + payload); id = SHA-256(plaintext) in hex, hh its first byte
//	pages/<hh>/<id>            an index page: compress.Encode of up to 4096 ids of 32 bytes; id = SHA-256(the ids)
//	index/<id>                 an index root: compress.Encode of
//	                             "VMBIDX\x00\x01" | disk size u64 | chunk size u32 | slots per page u32 | page count u32 | page ids (32 bytes each)
//	                           (big-endian); id = SHA-256(that plaintext)
//	points/<point id>          a manifest: {"sha256": hex SHA-256 of the manifest JSON, "manifest": Manifest}; written last, if absent
//	leases/<lease id>          a PointWriter's lease (JSON: id, host, pid, started, base point), rewritten every LeaseTTL/3
//	leases/<lease id>.refs     ids the writer uses but neither wrote nor got from its base (32 bytes each)
//	gc/lock                    the running garbage collection's claim (like a lease)
//	gc/last                    rewritten when a garbage collection ends
//
// Point ids are "<UTC creation time as 20060102T150405Z>-<8 hex digits>",
// so they sort by creation time. Every object is verified when read: chunks,
// pages and roots are re-hashed against the id in their key, manifests
// against the checksum beside them; a mismatch is an error wrapping
// ErrCorrupt that names the object (and for chunks read through a
// DiskReader, the point, disk and offset). The config's version is the
// format version: Open refuses a newer one with ErrVersion; manifests carry
// their own version likewise. Readers ignore keys they do not know, so
// other stores may keep objects beside the repository under their own
// prefixes.
//
// Writes are ordered so that a crash leaves only garbage: chunks, then
// index pages and roots, then the manifest. The manifest, the config and
// leases are created with a conditional write (If-None-Match on object
// stores). gocloud's fileblob implements that condition as a stat and a
// rename guarded by a mutex of its own process, which two processes can
// pass at once (TestFileInitTwoProcesses shows it), so for repositories
// opened by a file:// URL the repository writes these objects itself: a
// temp file beside the target, then link(2), which fails if the target
// exists. file:// URLs are opened with metadata=skip (no .attrs sidecar per
// object) and no_tmp_dir (temp files beside their target, so the final
// rename never crosses filesystems) unless the URL sets them.
//
// # Deduplication
//
// A PointWriter keeps the ids of its base point's indexes in memory (about
// 80 bytes per distinct chunk) and asks the bucket (Exists) only about ids
// it does not know. Commit refuses an index that names a chunk that is not
// stored, so a committed point never references a missing chunk.
//
// # Garbage collection
//
// GC marks every chunk, page and root that a committed manifest references
// and removes the rest, except what an in-flight PointWriter may use. All
// times are the bucket's clock (object ModTimes), never a machine's:
//
//  1. GC takes gc/lock (ErrLocked if another GC holds it); the lock's
//     ModTime is the GC's start S.
//  2. It reads the live leases (written less than LeaseTTL before S), then
//     every manifest, then the live leases again. A lease is written before
//     its writer reads its base or writes anything.
//  3. It marks what the manifests reference, plus each live lease's base
//     point and refs. If a live lease's base point is gone, GC removes
//     nothing this time (GCReport.Skipped says why).
//  4. It removes unmarked objects whose ModTime is before
//     min(S, the oldest live lease's start) - Grace, re-reading the ModTime
//     just before each delete.
//  5. It writes gc/last and releases the lock.
//
// A PointWriter, at Commit, after its indexes and before its manifest,
// writes its refs object and then looks at gc/lock and gc/last: if a GC ran
// since the writer's lease started, it waits for that GC to end and checks
// that everything it took from the bucket (and, if its base point is gone,
// everything it references) is still there, failing with ErrNotFound
// otherwise (the backup is then simply run again). Either the GC saw the
// refs, or the writer saw the GC: an object a committed point references is
// never removed. Grace (default one hour) must exceed the clock skew between
// the store's servers; stores with one-second ModTimes (S3) keep what was
// written in the GC's own second.
//
// Memory: marking keeps sorted arrays of ids, 32 bytes per distinct
// referenced chunk or page (plus transient duplicates, at most as many
// again), and each distinct index page is read once.
//
// # Errors and retries
//
// Errors wrap ErrNotFound, ErrCorrupt, ErrNoRepository, ErrExists,
// ErrVersion, ErrConflict or ErrLocked where callers may branch on them.
// Transient bucket errors (gcerrors ResourceExhausted, Internal, and
// DeadlineExceeded while the caller's context is live) are retried with
// backoff in one place (internal/retry); everything else fails at once.
// Every call honours its context.
package repository
