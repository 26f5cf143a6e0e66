package repository_test

import (
	"context"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/vmbackup/vmbackup/repository/repositorytest"
)

func TestConformanceMem(t *testing.T) {
	repositorytest.Run(t, func(t *testing.T) *blob.Bucket {
		b := memblob.OpenBucket(nil)
		t.Cleanup(func() { b.Close() })
		return b
	})
}

func TestConformanceFile(t *testing.T) {
	repositorytest.Run(t, func(t *testing.T) *blob.Bucket {
		b, err := blob.OpenBucket(context.Background(), "file://"+t.TempDir()+"?metadata=skip&no_tmp_dir=1")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	})
}
