// Package retention decides which restore points to keep and which to forget, with a reason for every point kept.
package retention
