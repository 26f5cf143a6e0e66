package retention_test

import (
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/vmbackup/vmbackup/retention"
)

// The ACOS example: a daily full backup at 00:00 and hourly incrementals,
// keeping the last 3 points and the newest point of each of the last 2 days.
func ExampleApply() {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		log.Fatal(err)
	}
	var points []retention.Point
	start := time.Date(2026, 11, 23, 0, 0, 0, 0, berlin)
	for t := start; t.Before(start.Add(30 * time.Hour)); t = t.Add(6 * time.Hour) {
		points = append(points, retention.Point{ID: t.Format("Jan02-15h"), VMID: "vm-1", Time: t})
	}
	policy := retention.Policy{KeepLast: 3, Daily: 2, Location: berlin}
	decisions, err := retention.Apply(points, policy, start.Add(30*time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(policy)
	for _, d := range decisions {
		verdict := "forget"
		if d.Keep {
			verdict = "keep"
		}
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%-6s %s %s", verdict, d.Point.ID, strings.Join(d.Reasons, ", "))))
	}
	// Output:
	// last 3, daily 2 (Europe/Berlin)
	// forget Nov23-00h
	// forget Nov23-06h
	// keep   Nov23-12h last 3
	// keep   Nov23-18h last 3, daily 2026-11-23
	// keep   Nov24-00h newest of VM, last 3, daily 2026-11-24
}

func ExamplePolicy_Validate() {
	err := retention.Policy{KeepLast: -1, Daily: 7}.Validate()
	fmt.Println(err)
	// Output:
	// retention: KeepLast: is -1, must be > 0 (or 0 for unused)
}
