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
// # Chunk size and codec
//
// The chunk size is fixed per repository at Init (a power of two, 64 KiB
// to 16 MiB); the default, DefaultChunkSize, is 256 KiB. The codec is the
// repository's default for writes and may change per writer (every object
// names its codec). The choice was measured with internal/bench -matrix on
// its synthetic 1 GiB image (593 MiB allocated: 30 % log and database
// pages, 30 % random, the rest holes), a 1 % scattered rewrite of 64 KiB
// blocks, 2 shared cores, the fake hypervisor and a file:// repository,
// beside restic 0.14 (--compression auto), runs interleaved, medians:
//
//	go run ./internal/bench -matrix -size 1GiB -runs 3 -tools vmbackup,restic \
//	    -matrix-chunks 256KiB,1MiB -matrix-codecs zstd-fastest,zstd,s2
//
//	chunk   codec          full s  full CPU s  incr-cbt s  incr-hash s  restore s  repo MiB  growth MiB  objects/GiB
//	restic  (auto)           7.03       12.14        3.19    (= incr)       3.89     367.2       +81.3           28
//	256KiB  zstd-fastest     4.09        5.98        0.25         1.11       1.06     365.8       +16.8         2570
//	256KiB  zstd             4.90        8.94        0.27         0.63       1.01     367.0       +17.0         2570
//	256KiB  s2               3.26        4.39        0.17         0.85       1.79     386.8       +18.0         2570
//	1MiB    zstd-fastest     2.98        5.01        0.46         1.13       1.30     366.3       +59.2          818
//	1MiB    zstd             3.52        6.62        0.61         1.07       1.46     367.1       +59.5          818
//	1MiB    s2               1.90        3.41        0.32         0.78       1.40     388.9       +62.9          818
//
// (restic has no change tracking: its incremental is a second backup that
// reads everything, 3.19 s.) The machine was shared and loaded, so single
// times spread by up to 2x; CPU seconds and sizes are steadier. On the
// same machine when idle, one run with zstd: 256 KiB full 3.41 s,
// incr-cbt 0.16 s, incr-hash 0.46 s, restore 0.86 s; 1 MiB 3.50, 0.43,
// 1.07 and 1.00 s. The wider matrix (all six codecs, 2 runs, busier
// machine) had 4 MiB chunks at +180 MiB growth (2.2 times restic's) and
// 1.2-3.6 s incrementals with every codec, and "zstd-better" and
// "s2-better" no smaller than "zstd" and "s2" by more than 1 %, at up to
// 1.8 times the CPU.
//
// Chunk size: 256 KiB, because the incremental is what runs every night.
// A 1 % scattered rewrite grows the repository by 17 MiB at 256 KiB, 59
// MiB at 1 MiB and 180 MiB at 4 MiB (restic: 81 MiB), since every chunk
// a write touches is stored again whole; only 256 KiB stays within 70 %
// of restic's growth (21 %; 1 MiB is at 73 %). An incremental with change
// tracking reads, hashes and compresses a quarter as much: 0.16-0.27 s
// against 0.43-0.61 s, about 12 times faster than restic's second backup
// (5 to 7 times at 1 MiB). The costs: about 3 times the objects (2570 per
// GiB of image against 818), each a file here and a request on object
// stores; 20-35 % more CPU for the full backup with compression, most of
// it the codecs' work per call (with "none" the difference was 3 %); and
// 32 bytes of index per 256 KiB of disk (128 KiB per GiB, 128 MiB per TiB
// of disk for each copy of an index in memory, against 32 MiB at 1 MiB;
// an Index in memory skips pages whose slots are all zero, so only the
// parts of a disk that hold data count), which a large, full disk feels.
// A repository for few, huge, rarely changing disks can still be made
// with InitOptions.ChunkSize = 1 MiB.
//
// Codec: the repository default stays compress.Default ("zstd"), which
// keeps the repository as small as restic's (1.000x here). On this image
// "zstd-fastest" stored the same size (365.8 against 367.0 MiB) for a
// quarter to a third less CPU in the full backup, but the image's
// compressible part is synthetic. On real files cut into 256 KiB chunks
// (internal/bench -codecs FILE), a tar of a Debian system's /usr/bin and
// /usr/lib (1231 MiB) took 449.4 MiB with "zstd", 474.6 MiB (+5.6 %) with
// "zstd-fastest" and 617.5 MiB (+37 %) with "s2"; Go's source tree (195
// MiB) 55.7, 58.7 (+5.5 %) and 78.9 MiB (+42 %). So the default stays at
// restic's level, and "zstd-fastest" is for those who trade those 5 % for
// speed. "s2" is the fast setting: the fastest full backup and
// incremental, for a repository about 5 % larger on the benchmark's image
// (386.8 MiB) and about 40 % on real files, with the restore not
// measurably faster: SHA-256 verification and the kernel's copies remain
// whatever the codec. "none" is only for data known to be incompressible.
// A plan can have both: s2 inside its backup window and "zstd" after it
// (Recompress rewrites the window's new chunks in place, ids unchanged).
//
// These figures predate durable file:// commits (next section): on this
// VM the flush adds about 1.5 s to the 1 GiB full backup, a cost per file
// that grows with the object count, so it weighs more at 256 KiB.
//
// # Durability on file://
//
// Object stores acknowledge a write once the object is durable. A local
// filesystem does so only when told, so for repositories opened by a
// file:// URL a PointWriter flushes the filesystem (syncfs(2) on Linux)
// before it writes the manifest, and starts such a flush in the background
// every 32 MiB it stores, so that write-back overlaps the backup's work;
// manifests, leases and the config are synced, with their directory, as
// they are published. A power loss therefore never leaves a manifest that
// names chunks or index pages the disk did not keep (restic and borg sync
// their files too).
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
