package repository

import "context"

func (r *Repository) verify(ctx context.Context, opts *VerifyOptions) (*VerifyReport, error) {
	panic("TODO")
}
