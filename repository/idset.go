package repository

import (
	"bytes"
	"slices"
)

// idSet is a compact set of ids: a sorted slice, 32 bytes per id and no
// per-entry overhead (a Go map would take about 80). Ids are appended
// unsorted and compacted (sorted, duplicates dropped) whenever the unsorted
// tail outgrows the sorted part, so duplicates never cost more than the set
// itself.
type idSet struct {
	ids    []ChunkID
	sorted int // ids[:sorted] is sorted and free of duplicates
}

func compareIDs(a, b ChunkID) int { return bytes.Compare(a[:], b[:]) }

func (s *idSet) add(id ChunkID) {
	s.ids = append(s.ids, id)
	if len(s.ids)-s.sorted > max(s.sorted, 1<<16) {
		s.compact()
	}
}

func (s *idSet) compact() {
	slices.SortFunc(s.ids, compareIDs)
	s.ids = slices.Compact(s.ids)
	s.sorted = len(s.ids)
}

// has reports whether id is in the set; call compact after the last add.
func (s *idSet) has(id ChunkID) bool {
	_, ok := slices.BinarySearchFunc(s.ids[:s.sorted], id, compareIDs)
	return ok
}

func (s *idSet) len() int { return s.sorted }
