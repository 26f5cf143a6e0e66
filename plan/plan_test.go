package plan

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmbackup/vmbackup/retention"
	"github.com/vmbackup/vmbackup/schedule"
)

// valid is a plan that uses every field.
func valid() Plan {
	return Plan{
		ID:          "nightly-db",
		Name:        "Nightly databases",
		Description: "every 15 minutes at night, full on Sundays",
		Objects: Objects{
			VMIDs:     []string{"vm-1", "vm-2"},
			Selectors: []Selector{{"role": "db", "env": "prod"}, {"backup": "gold"}},
		},
		Repository:  "s3://backups/cluster-a",
		Incremental: schedule.Schedule{Kind: schedule.KindMinutes, Every: 15, TZ: "Europe/Berlin"},
		Full:        &schedule.Schedule{Kind: schedule.KindWeekly, Weekdays: []schedule.Weekday{schedule.Sunday}, Times: []string{"01:00"}, TZ: "Europe/Berlin"},
		Window: &schedule.Window{TZ: "Europe/Berlin", Ranges: []schedule.Range{
			{Weekdays: []schedule.Weekday{0, 1, 2, 3, 4, 5, 6}, Start: "22:00", End: "06:00"},
		}},
		OutsideWindow: schedule.OutsideSkip,
		Overrun:       schedule.OverrunContinue,
		Retention:     Retention{KeepLast: 7, KeepWithin: Duration(36 * time.Hour), Daily: 7, Weekly: 4, Monthly: 12, Yearly: 3, ForgetManual: true},
		Compression:   Compression{Enabled: true, Codec: "s2", RecompressTo: "zstd-better"},
		Consistency:   Consistency{Mode: ApplicationConsistent, FallbackToCrash: true},
		Limits:        Limits{ParallelVMs: 3, Retries: 2, RetryInterval: Duration(90 * time.Second)},
		State:         Paused,
		Version:       4,
	}
}

func TestJSONRoundTrip(t *testing.T) {
	for name, p := range map[string]Plan{"full": valid(), "minimal": {ID: "m", Name: "m", Objects: Objects{VMIDs: []string{"a"}}}} {
		t.Run(name, func(t *testing.T) {
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			var got Plan
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(p, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			b2, _ := json.Marshal(got)
			if string(b) != string(b2) {
				t.Errorf("re-encoding differs:\n%s\n%s", b, b2)
			}
		})
	}
	b, _ := json.Marshal(valid())
	for _, want := range []string{`"keepWithin":"36h0m0s"`, `"retryInterval":"1m30s"`, `"weekdays":["Sun"]`, `"times":["01:00"]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"soon"`), &d); err == nil {
		t.Error(`duration "soon" decoded without error`)
	}
}

func TestValidate(t *testing.T) {
	if err := (&Plan{}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty plan: %v", err)
	}
	p := valid()
	if err := p.Validate(); err != nil {
		t.Fatalf("valid plan: %v", err)
	}
	tests := []struct {
		name   string
		change func(p *Plan)
		want   []string
	}{
		{"id empty", func(p *Plan) { p.ID = "" }, []string{`id: "" must be 1–128 characters of A-Z a-z 0-9 . _ - not starting or ending with a dot`}},
		{"id with slash", func(p *Plan) { p.ID = "a/b" }, []string{`id: "a/b" must be 1–128 characters of A-Z a-z 0-9 . _ - not starting or ending with a dot`}},
		{"id dot dot", func(p *Plan) { p.ID = ".." }, []string{`id: ".." must be 1–128 characters of A-Z a-z 0-9 . _ - not starting or ending with a dot`}},
		{"id ending with a dot", func(p *Plan) { p.ID = "a.." }, []string{`id: "a.." must be 1–128 characters of A-Z a-z 0-9 . _ - not starting or ending with a dot`}},
		{"no name", func(p *Plan) { p.Name = " " }, []string{"name: is required"}},
		{"no objects", func(p *Plan) { p.Objects = Objects{} }, []string{"objects: no backup objects: list vmIDs or selectors"}},
		{"bad vm ids", func(p *Plan) { p.Objects.VMIDs = []string{"a", "", "a"} }, []string{"objects.vmIDs[1]: is empty", `objects.vmIDs[2]: "a" is listed twice`}},
		{"empty selector", func(p *Plan) { p.Objects.Selectors = []Selector{{}, {"": "x"}} }, []string{
			"objects.selectors[0]: is empty and would match no VM", "objects.selectors[1]: has an empty label key"}},
		{"no repository", func(p *Plan) { p.Repository = "" }, []string{"repository: is required (a URL such as s3://bucket/prefix)"}},
		{"repository not a URL", func(p *Plan) { p.Repository = "backups" }, []string{`repository: "backups" is not a URL with a scheme`}},
		{"interval out of range", func(p *Plan) { p.Incremental.Every = 10 }, []string{"incremental.every: is 10, must be 15–59 minutes"}},
		{"full schedule invalid", func(p *Plan) { p.Full.Times = []string{"25:00"} }, []string{`full.times[0]: "25:00" is not a time of day (00:00–23:59)`}},
		{"window too short", func(p *Plan) { p.Window.Ranges[0].End = "22:10" }, []string{"window.ranges[0].end: range 22:00–22:10 lasts 10 minutes, must be at least 15"}},
		{"time outside the window", func(p *Plan) { p.Full.Times = []string{"12:00"} }, []string{"full.times[0]: 12:00 on [Sun] is outside the window"}},
		{"window zone differs", func(p *Plan) { p.Window.TZ = "UTC" }, []string{
			`incremental.tz: is "Europe/Berlin" but the window's is "UTC": they must be the same zone`,
			`full.tz: is "Europe/Berlin" but the window's is "UTC": they must be the same zone`}},
		{"policies without window", func(p *Plan) { p.Window = nil }, []string{"outsideWindow: is set but the plan has no window", "overrun: is set but the plan has no window"}},
		{"unknown policies", func(p *Plan) { p.OutsideWindow, p.Overrun = "later", "pause" }, []string{
			`outsideWindow: "later" is unknown, must be wait or skip`, `overrun: "pause" is unknown, must be stop or continue`}},
		{"retention negative", func(p *Plan) {
			p.Retention = Retention{KeepLast: -1, KeepWithin: Duration(-time.Hour), Hourly: -1, Daily: -2, Weekly: -3, Monthly: -4, Yearly: -5}
		}, []string{
			"retention.keepLast: is -1, must be > 0 (or 0 for unused)", "retention.hourly: is -1, must be > 0 (or 0 for unused)",
			"retention.daily: is -2, must be > 0 (or 0 for unused)", "retention.weekly: is -3, must be > 0 (or 0 for unused)",
			"retention.monthly: is -4, must be > 0 (or 0 for unused)", "retention.yearly: is -5, must be > 0 (or 0 for unused)",
			"retention.keepWithin: is -1h0m0s, must be > 0 (or 0 for unused)",
			"retention: no rule: set KeepLast, KeepWithin, a GFS count (Hourly, Daily, Weekly, Monthly, Yearly) or KeepForever"}},
		{"retention none", func(p *Plan) { p.Retention = Retention{} }, []string{"retention: no rule: set KeepLast, KeepWithin, a GFS count (Hourly, Daily, Weekly, Monthly, Yearly) or KeepForever"}},
		{"retention forever and count", func(p *Plan) { p.Retention = Retention{KeepForever: true, KeepLast: 3} }, []string{"retention.keepForever: cannot be combined with other rules"}},
		{"unknown codec", func(p *Plan) { p.Compression.Codec = "lz4" }, []string{
			`compression.codec: "lz4" is unknown, must be one of none, zstd-fastest, zstd, zstd-better, s2, s2-better`}},
		{"unknown recompress codec", func(p *Plan) { p.Compression.RecompressTo = "lz4" }, []string{
			`compression.recompressTo: "lz4" is unknown, must be one of none, zstd-fastest, zstd, zstd-better, s2, s2-better`}},
		{"recompress without compression", func(p *Plan) { p.Compression = Compression{RecompressTo: "zstd"} }, []string{
			"compression.recompressTo: is set but compression is disabled"}},
		{"recompress to the same codec", func(p *Plan) { p.Compression = Compression{Enabled: true, RecompressTo: "zstd"} }, []string{
			`compression.recompressTo: is "zstd", the codec chunks are stored with already`}},
		{"unknown consistency", func(p *Plan) { p.Consistency.Mode = "fs" }, []string{
			`consistency.mode: "fs" is unknown, must be crash or application`, "consistency.fallbackToCrash: only applies to mode application"}},
		{"limits", func(p *Plan) { p.Limits = Limits{ParallelVMs: 65, Retries: 11, RetryInterval: Duration(-time.Second)} }, []string{
			"limits.parallelVMs: is 65, must be 1–64 (or 0 for the default)", "limits.retries: is 11, must be 0–10", "limits.retryInterval: is -1s, must be ≥ 0"}},
		{"negative limits", func(p *Plan) { p.Limits = Limits{ParallelVMs: -1, Retries: -1} }, []string{
			"limits.parallelVMs: is -1, must be 1–64 (or 0 for the default)", "limits.retries: is -1, must be 0–10"}},
		{"unknown state", func(p *Plan) { p.State = "working" }, []string{`state: "working" is unknown, must be enabled, paused or stopped`}},
		{"negative version", func(p *Plan) { p.Version = -1 }, []string{"version: is -1, must be ≥ 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := valid()
			tt.change(&p)
			err := p.Validate()
			var got []string
			for _, fe := range Problems(err) {
				got = append(got, fe.Field+": "+fe.Rule)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), "plan: "+tt.want[0]) {
				t.Errorf("message %q lacks the first problem", err)
			}
		})
	}
}

func TestSelectors(t *testing.T) {
	o := Objects{VMIDs: []string{"gone", "vm-3"}, Selectors: []Selector{{"role": "db", "env": "prod"}, {"backup": "gold"}}}
	vms := []VM{
		{ID: "vm-1", Labels: map[string]string{"role": "db", "env": "prod", "x": "y"}},
		{ID: "vm-2", Labels: map[string]string{"role": "db", "env": "test"}},
		{ID: "vm-3", Labels: map[string]string{"backup": "gold"}},
		{ID: "vm-4", Labels: map[string]string{"backup": "gold"}},
		{ID: "vm-5", Labels: map[string]string{"role": "db"}},
		{ID: "vm-6"},
	}
	if diff := cmp.Diff([]string{"gone", "vm-3", "vm-1", "vm-4"}, o.Resolve(vms)); diff != "" {
		t.Errorf("Resolve (-want +got):\n%s", diff)
	}
	for _, tt := range []struct {
		id     string
		labels map[string]string
		want   bool
	}{
		{"vm-3", nil, true},
		{"x", map[string]string{"role": "db", "env": "prod"}, true},
		{"x", map[string]string{"role": "db", "env": "Prod"}, false},
		{"x", map[string]string{"backup": "gold"}, true},
		{"x", nil, false},
	} {
		if got := o.Matches(tt.id, tt.labels); got != tt.want {
			t.Errorf("Matches(%q, %v) = %v", tt.id, tt.labels, got)
		}
	}
	if (Selector{}).Matches(map[string]string{"a": "b"}) {
		t.Error("empty selector matched")
	}
}

func TestHelpers(t *testing.T) {
	p := valid()
	e := p.Entry(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
	if err := e.Validate(); err != nil {
		t.Errorf("entry of a valid plan: %v", err)
	}
	if e.PlanID != p.ID || e.Full != p.Full || e.Window != p.Window || e.Overrun != p.Overrun || e.OutsideWindow != p.OutsideWindow {
		t.Errorf("entry %+v does not carry the plan's timing", e)
	}
	if got := p.Location().String(); got != "Europe/Berlin" {
		t.Errorf("location %s", got)
	}
	for _, tt := range []struct {
		c    Compression
		want string
	}{{Compression{}, "none"}, {Compression{Codec: "s2"}, "none"}, {Compression{Enabled: true}, "zstd"}, {Compression{Enabled: true, Codec: "s2"}, "s2"}} {
		if got := tt.c.CodecName(); got != tt.want {
			t.Errorf("%+v.CodecName() = %s, want %s", tt.c, got, tt.want)
		}
	}
}

func TestRetentionPolicy(t *testing.T) {
	p := valid()
	got := p.RetentionPolicy()
	if got.Location == nil || got.Location.String() != "Europe/Berlin" {
		t.Errorf("location %v, want the plan's zone", got.Location)
	}
	got.Location = nil
	want := retention.Policy{KeepLast: 7, KeepWithin: 36 * time.Hour, Daily: 7, Weekly: 4, Monthly: 12, Yearly: 3, ForgetManual: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}
}
