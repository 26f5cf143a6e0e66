// Package exclusive creates files that must not already exist, atomically
// between processes. It exists because gocloud's fileblob implements
// IfNotExist as a stat followed by a rename, which two processes can both
// win; link(2) fails for exactly one of them.
package exclusive

import (
	"os"
	"path/filepath"
	"runtime"
)

// Create creates path holding data, failing with an error that wraps
// fs.ErrExist if it exists. Readers never see a partial file: the data is
// complete and synced before link(2) makes it visible, and the directory is
// synced after, so the file survives a power loss once Create returns. The temporary file's
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
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes the directory's entries durable, so that a file Create
// reported does not vanish in a power loss.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be opened for syncing there
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
