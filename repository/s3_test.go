package repository_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"gocloud.dev/blob"
	"gocloud.dev/blob/s3blob"

	"github.com/vmbackup/vmbackup/repository/repositorytest"
)

// TestConformanceS3 runs the suite through s3blob, the production S3
// driver, against an in-process gofakes3 server (one per test).
func TestConformanceS3(t *testing.T) {
	repositorytest.Run(t, func(t *testing.T) *blob.Bucket {
		backend := s3mem.New()
		srv := httptest.NewServer(gofakes3.New(backend).Server())
		t.Cleanup(srv.Close)
		if err := backend.CreateBucket("repo"); err != nil {
			t.Fatal(err)
		}
		client := s3.New(s3.Options{
			Region:       "us-east-1",
			BaseEndpoint: aws.String(srv.URL),
			UsePathStyle: true,
			Credentials:  credentials.NewStaticCredentialsProvider("id", "secret", ""),
			// gofakes3 does not take the SDK's default trailing checksums.
			RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
			ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		})
		b, err := s3blob.OpenBucket(context.Background(), client, "repo", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	})
}

// S3URLEnv names the environment variable that points the suite at a real
// S3 server: a gocloud s3:// URL of an existing bucket, for example
// s3://test?endpoint=http://127.0.0.1:7070&use_path_style=true&region=us-east-1
// (credentials from the usual AWS_* variables). .ci/run sets it for a
// local versitygw. Each test works under its own random prefix.
const S3URLEnv = "VMBACKUP_TEST_S3_URL"

func TestConformanceS3Server(t *testing.T) {
	url := os.Getenv(S3URLEnv)
	if url == "" {
		t.Skipf("%s not set", S3URLEnv)
	}
	repositorytest.Run(t, func(t *testing.T) *blob.Bucket {
		b, err := blob.OpenBucket(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 8)
		rand.Read(p)
		pb := blob.PrefixedBucket(b, "test-"+hex.EncodeToString(p)+"/")
		t.Cleanup(func() { pb.Close() })
		return pb
	})
}
