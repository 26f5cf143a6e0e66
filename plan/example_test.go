package plan_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/vmbackup/vmbackup/plan"
	"github.com/vmbackup/vmbackup/schedule"
)

// Two editors change one plan: the second, still holding the version it
// read, gets ErrConflict instead of overwriting the first one's change.
func ExampleBlobStore() {
	ctx := context.Background()
	store := plan.NewMemStore()
	p, err := store.Put(ctx, plan.Plan{
		ID: "web", Name: "Web servers",
		Objects:     plan.Objects{Selectors: []plan.Selector{{"role": "web"}}},
		Repository:  "mem://",
		Incremental: schedule.Schedule{Kind: schedule.KindHours, Every: 4},
		Retention:   plan.Retention{KeepLast: 7},
	})
	if err != nil {
		log.Fatal(err)
	}
	alice, bob := p, p
	alice.Retention.KeepLast = 14
	if _, err := store.Put(ctx, alice); err != nil {
		log.Fatal(err)
	}
	bob.Description = "nightly"
	_, err = store.Put(ctx, bob)
	fmt.Println(errors.Is(err, plan.ErrConflict))
	cur, _ := store.Get(ctx, "web")
	fmt.Println(cur.Version, cur.Retention.KeepLast)
	// Output:
	// true
	// 2 14
}

// Validate lists every problem, each with its field path.
func ExamplePlan_Validate() {
	p := plan.Plan{ID: "db", Name: "DB", Repository: "s3://b",
		Incremental: schedule.Schedule{Kind: schedule.KindMinutes, Every: 5},
		Compression: plan.Compression{Enabled: true, Codec: "lz4"},
	}
	for _, fe := range plan.Problems(p.Validate()) {
		fmt.Printf("%s: %s\n", fe.Field, fe.Rule)
	}
	// Output:
	// objects: no backup objects: list vmIDs or selectors
	// incremental.every: is 5, must be 15–59 minutes
	// retention: no rule: set KeepLast, KeepWithin, a GFS count (Hourly, Daily, Weekly, Monthly, Yearly) or KeepForever
	// compression.codec: "lz4" is unknown, must be one of none, zstd-fastest, zstd, zstd-better, s2, s2-better
}
