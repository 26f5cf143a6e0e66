package nbd

import "time"

func unixEpoch() time.Time { return time.Unix(1, 0) }
func zeroTime() time.Time  { return time.Time{} }
