package repository

import "context"

func (r *Repository) gc(ctx context.Context, opts *GCOptions) (*GCReport, error) {
	panic("TODO")
}
