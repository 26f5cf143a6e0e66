package repositorytest

import "testing"

func testCorruption(t *testing.T, mk MakeBucket)          { t.Skip("TODO") }
func testMissing(t *testing.T, mk MakeBucket)             { t.Skip("TODO") }
func testGC(t *testing.T, mk MakeBucket)                  { t.Skip("TODO") }
func testGCConcurrentWriters(t *testing.T, mk MakeBucket) { t.Skip("TODO") }
func testStats(t *testing.T, mk MakeBucket)               { t.Skip("TODO") }
func testCancel(t *testing.T, mk MakeBucket)              { t.Skip("TODO") }
