// Package exclusive creates files that must not already exist, atomically
// between processes. It exists because gocloud's fileblob implements
// IfNotExist as a stat followed by a rename, which two processes can both
// win; link(2) fails for exactly one of them.
package exclusive

import (
	"os"
	"path/filepath"
)

// Create creates path holding data, failing with an error that wraps
// fs.ErrExist if it exists. Readers never see a partial file: the data is
// complete and synced before link(2) makes it visible. The temporary file's
// name starts with a dot, so listings that skip dot files never see it.
func Create(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Link(tmp, path)
}
