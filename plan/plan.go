package plan

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vmbackup/vmbackup/compress"
	"github.com/vmbackup/vmbackup/retention"
	"github.com/vmbackup/vmbackup/schedule"
)

// Plan is a backup plan: what to back up (Objects), where (Repository),
// when (Incremental, Full, Window), how (Compression, Consistency,
// Limits) and how long to keep it (Retention). It is a plain value that
// round-trips through JSON unchanged; Validate lists everything wrong
// with it.
type Plan struct {
	// ID names the plan in its Store: 1–128 of [A-Za-z0-9._-], not
	// starting or ending with a dot (it is part of object keys and paths).
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	Description string  `json:"description,omitempty"`
	Objects     Objects `json:"objects"`
	// Repository is the URL of the repository the plan writes to
	// ("s3://bucket/prefix", "file:///srv/backup", "mem://").
	Repository string `json:"repository"`
	// Incremental is when the plan runs.
	Incremental schedule.Schedule `json:"incremental"`
	// Full, if set, says which runs are full backups: its times are added
	// to Incremental's and a run at one of them reads every block. Runs
	// that are not full are incremental.
	Full *schedule.Schedule `json:"full,omitempty"`
	// Window, if set, is when runs may start and, with Overrun stop,
	// must finish. Every time of Incremental and Full must fall inside.
	Window *schedule.Window `json:"window,omitempty"`
	// OutsideWindow is what happens to a run due while the window is
	// closed; "" means wait.
	OutsideWindow schedule.OutsideWindow `json:"outsideWindow,omitempty"`
	// Overrun is what happens to a run still going when its window
	// closes; "" means stop.
	Overrun     schedule.Overrun `json:"overrun,omitempty"`
	Retention   Retention        `json:"retention"`
	Compression Compression      `json:"compression"`
	Consistency Consistency      `json:"consistency"`
	Limits      Limits           `json:"limits"`
	// State is whether the plan runs by itself; "" means enabled.
	State State `json:"state,omitempty"`
	// Version is the plan's version in its Store, set by Get, List and
	// Put; Put takes it as the version the change is based on.
	Version int64 `json:"version,omitempty"`
}

// Objects are the VMs a plan backs up: those listed by ID plus those
// whose labels match any selector, resolved at each run.
type Objects struct {
	VMIDs     []string   `json:"vmIDs,omitempty"`
	Selectors []Selector `json:"selectors,omitempty"`
}

// Selector matches VMs by labels: a VM matches when it has every key
// with the given value (AND within one selector). Objects match a VM
// that any of their selectors matches (OR across selectors).
type Selector map[string]string

// Matches reports whether labels contain every key=value of s. An empty
// selector matches nothing (Validate rejects it): a plan never backs up
// every VM by accident.
func (s Selector) Matches(labels map[string]string) bool {
	if len(s) == 0 {
		return false
	}
	for k, v := range s {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Matches reports whether the VM with this id and labels is an object of
// the plan.
func (o Objects) Matches(id string, labels map[string]string) bool {
	if slices.Contains(o.VMIDs, id) {
		return true
	}
	for _, s := range o.Selectors {
		if s.Matches(labels) {
			return true
		}
	}
	return false
}

// VM is what Resolve needs to know of a VM.
type VM struct {
	ID     string
	Labels map[string]string
}

// Resolve returns the IDs of the plan's VMs: every listed VMID first, in
// the plan's order, whether or not it is among vms (so a VM that vanished
// is reported as failed by the run, not silently dropped), then the
// VMs matched by a selector, in the order of vms; each ID once.
func (o Objects) Resolve(vms []VM) []string {
	var ids []string
	seen := map[string]bool{}
	for _, id := range o.VMIDs {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, vm := range vms {
		if seen[vm.ID] {
			continue
		}
		for _, s := range o.Selectors {
			if s.Matches(vm.Labels) {
				seen[vm.ID] = true
				ids = append(ids, vm.ID)
				break
			}
		}
	}
	return ids
}

// Retention says which of the plan's restore points to keep: the JSON
// form of retention.Policy (whose Location is not serialisable and comes
// from the plan's zone, Incremental.TZ). See the retention package for the
// semantics and rules; Plan.Validate applies retention.Policy.Validate.
// Zero means a rule is not used; at least one rule must be set.
type Retention struct {
	// KeepLast keeps the newest N points (ACOS COUNT).
	KeepLast int `json:"keepLast,omitempty"`
	// KeepWithin keeps points newer than this (ACOS TIME).
	KeepWithin Duration `json:"keepWithin,omitempty"`
	// KeepForever keeps every point (ACOS FOREVER); no other rule may be
	// set with it.
	KeepForever bool `json:"keepForever,omitempty"`
	// Hourly, Daily, Weekly, Monthly and Yearly keep the newest point of
	// each of the last N hours, days, ISO weeks, months and years that
	// have points (GFS).
	Hourly  int `json:"hourly,omitempty"`
	Daily   int `json:"daily,omitempty"`
	Weekly  int `json:"weekly,omitempty"`
	Monthly int `json:"monthly,omitempty"`
	Yearly  int `json:"yearly,omitempty"`
	// ForgetManual lets retention forget points made by hand, which are
	// otherwise kept.
	ForgetManual bool `json:"forgetManual,omitempty"`
}

// Policy returns the retention.Policy of r, with calendar buckets in loc
// (nil means UTC; a plan passes its Location()).
func (r Retention) Policy(loc *time.Location) retention.Policy {
	return retention.Policy{
		KeepLast:     r.KeepLast,
		KeepWithin:   time.Duration(r.KeepWithin),
		KeepForever:  r.KeepForever,
		Hourly:       r.Hourly,
		Daily:        r.Daily,
		Weekly:       r.Weekly,
		Monthly:      r.Monthly,
		Yearly:       r.Yearly,
		Location:     loc,
		ForgetManual: r.ForgetManual,
	}
}

// RetentionPolicy is the plan's retention in the plan's zone, ready for
// retention.Apply.
func (p *Plan) RetentionPolicy() retention.Policy { return p.Retention.Policy(p.Location()) }

// Compression says how chunks are compressed.
type Compression struct {
	Enabled bool `json:"enabled"`
	// Codec is a name from compress.Names(); "" means compress.Default.
	Codec string `json:"codec,omitempty"`
	// RecompressTo, if set, names a stronger codec that the chunks a
	// window's runs stored with a fast Codec (s2) are rewritten into once
	// the window closes (right after each run when the plan has no
	// window): backups inside the window go at the fast codec's speed and
	// the repository ends up the strong codec's size. Chunk ids do not
	// change, so deduplication and restore points are unaffected.
	RecompressTo string `json:"recompressTo,omitempty"`
}

// CodecName is the codec the plan stores chunks with: "none" when
// compression is disabled, else Codec or compress.Default.
func (c Compression) CodecName() string {
	switch {
	case !c.Enabled:
		return "none"
	case c.Codec == "":
		return compress.Default
	}
	return c.Codec
}

// ConsistencyMode is how a VM is frozen for its snapshot.
type ConsistencyMode string

// Consistency modes.
const (
	// CrashConsistent snapshots the disks as they are, like pulling the
	// power cord. The default.
	CrashConsistent ConsistencyMode = "crash"
	// ApplicationConsistent asks the guest agent to flush and freeze file
	// systems first.
	ApplicationConsistent ConsistencyMode = "application"
)

// Consistency says how VMs are snapshotted.
type Consistency struct {
	// Mode is "crash" or "application"; "" means crash.
	Mode ConsistencyMode `json:"mode,omitempty"`
	// FallbackToCrash makes a VM whose guest cannot quiesce be backed up
	// crash-consistent (recorded in its result) instead of failing.
	FallbackToCrash bool `json:"fallbackToCrash,omitempty"`
}

// Limits bound one run of the plan.
type Limits struct {
	// ParallelVMs is how many VMs are backed up at once; 0 means the
	// Service's default. At most MaxParallelVMs.
	ParallelVMs int `json:"parallelVMs,omitempty"`
	// Retries is how many times a failed VM is retried in a run, at most
	// MaxRetries.
	Retries int `json:"retries,omitempty"`
	// RetryInterval is the wait before each retry; 0 means the Service's
	// default.
	RetryInterval Duration `json:"retryInterval,omitempty"`
}

// Bounds of Limits.
const (
	MaxParallelVMs = 64
	MaxRetries     = 10
)

// State is whether a plan runs by itself (ACOS WORKING, PAUSED, STOPPED).
type State string

// Plan states.
const (
	// Enabled plans run on schedule. The default.
	Enabled State = "enabled"
	// Paused plans skip their due times, each recorded as skipped.
	Paused State = "paused"
	// Stopped plans are not scheduled at all.
	Stopped State = "stopped"
)

// Duration is a time.Duration whose JSON form is a string such as
// "1h30m" (time.ParseDuration), so plans read well and stay exact.
type Duration time.Duration

// MarshalText encodes d as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses a time.ParseDuration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("plan: duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// String is time.Duration's.
func (d Duration) String() string { return time.Duration(d).String() }

// FieldError is one rule a plan breaks. Field is the JSON path of the
// value ("incremental.every", "objects.selectors[1]").
type FieldError struct {
	Field string
	Rule  string
}

// Error returns "plan: <field>: <rule>".
func (e *FieldError) Error() string { return "plan: " + e.Field + ": " + e.Rule }

// ErrInvalid is wrapped by the error of Validate (and of Store.Put for an
// invalid plan), so callers can tell a rejected plan from a storage
// failure; errors.As with *FieldError finds the individual rules.
var ErrInvalid = errors.New("plan: invalid plan")

type invalid struct{ errs []error }

func (e *invalid) Error() string {
	msgs := make([]string, len(e.errs))
	for i, x := range e.errs {
		msgs[i] = x.Error()
	}
	return fmt.Sprintf("plan: invalid plan (%d problems):\n%s", len(e.errs), strings.Join(msgs, "\n"))
}
func (e *invalid) Unwrap() []error { return append([]error{ErrInvalid}, e.errs...) }

// Problems returns the FieldErrors inside an error of Validate or Put,
// in order; nil for other errors.
func Problems(err error) []*FieldError {
	var inv *invalid
	if !errors.As(err, &inv) {
		return nil
	}
	out := make([]*FieldError, 0, len(inv.errs))
	for _, x := range inv.errs {
		var fe *FieldError
		if errors.As(x, &fe) {
			out = append(out, fe)
		}
	}
	return out
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]([A-Za-z0-9._-]{0,126}[A-Za-z0-9_-])?$`)

// Validate checks every field of the plan and returns all problems at
// once, each a *FieldError naming the field path and the rule, in an
// error wrapping ErrInvalid; nil if the plan is valid.
func (p *Plan) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Rule: fmt.Sprintf(format, args...)})
	}
	// sub re-roots the schedule package's field errors under path.
	sub := func(path string, err error) {
		for _, x := range flatten(err) {
			var fe *schedule.FieldError
			if errors.As(x, &fe) {
				f := fe.Field
				if path != "" {
					f = path + "." + f
				}
				add(f, "%s", fe.Rule)
			} else if x != nil {
				add(path, "%v", x)
			}
		}
	}

	if !idPattern.MatchString(p.ID) {
		add("id", "%q must be 1–128 characters of A-Z a-z 0-9 . _ - not starting or ending with a dot", p.ID)
	}
	if strings.TrimSpace(p.Name) == "" {
		add("name", "is required")
	}

	o := p.Objects
	if len(o.VMIDs) == 0 && len(o.Selectors) == 0 {
		add("objects", "no backup objects: list vmIDs or selectors")
	}
	seen := map[string]bool{}
	for i, id := range o.VMIDs {
		switch {
		case id == "":
			add(fmt.Sprintf("objects.vmIDs[%d]", i), "is empty")
		case seen[id]:
			add(fmt.Sprintf("objects.vmIDs[%d]", i), "%q is listed twice", id)
		}
		seen[id] = true
	}
	for i, s := range o.Selectors {
		f := fmt.Sprintf("objects.selectors[%d]", i)
		if len(s) == 0 {
			add(f, "is empty and would match no VM")
		}
		for _, k := range sortedKeys(s) {
			if k == "" {
				add(f, "has an empty label key")
			}
		}
	}

	if p.Repository == "" {
		add("repository", "is required (a URL such as s3://bucket/prefix)")
	} else if u, err := url.Parse(p.Repository); err != nil || u.Scheme == "" {
		add("repository", "%q is not a URL with a scheme", p.Repository)
	}

	sub("incremental", p.Incremental.Validate())
	if p.Full != nil {
		sub("full", p.Full.Validate())
	}
	if p.Window != nil {
		sub("window", p.Window.Validate())
		if p.Window.Validate() == nil {
			if p.Incremental.Validate() == nil {
				sub("incremental", p.Incremental.CheckWindow(*p.Window))
			}
			if p.Full != nil && p.Full.Validate() == nil {
				sub("full", p.Full.CheckWindow(*p.Window))
			}
		}
	} else {
		if p.OutsideWindow != "" {
			add("outsideWindow", "is set but the plan has no window")
		}
		if p.Overrun != "" {
			add("overrun", "is set but the plan has no window")
		}
	}
	sub("", p.OutsideWindow.Validate())
	sub("", p.Overrun.Validate())

	// Retention rules live in the retention package; re-root its errors.
	for _, x := range flatten(p.Retention.Policy(nil).Validate()) {
		var pe *retention.PolicyError
		if errors.As(x, &pe) {
			f := "retention"
			if pe.Field != "" {
				f += "." + strings.ToLower(pe.Field[:1]) + pe.Field[1:]
			}
			add(f, "%s", pe.Rule)
		} else {
			add("retention", "%v", x)
		}
	}

	if c := p.Compression.Codec; c != "" && !slices.Contains(compress.Names(), c) {
		add("compression.codec", "%q is unknown, must be one of %s", c, strings.Join(compress.Names(), ", "))
	}
	switch c := p.Compression.RecompressTo; {
	case c == "":
	case !slices.Contains(compress.Names(), c):
		add("compression.recompressTo", "%q is unknown, must be one of %s", c, strings.Join(compress.Names(), ", "))
	case !p.Compression.Enabled:
		add("compression.recompressTo", "is set but compression is disabled")
	case c == p.Compression.CodecName():
		add("compression.recompressTo", "is %q, the codec chunks are stored with already", c)
	}

	switch p.Consistency.Mode {
	case "", CrashConsistent, ApplicationConsistent:
	default:
		add("consistency.mode", "%q is unknown, must be crash or application", string(p.Consistency.Mode))
	}
	if p.Consistency.FallbackToCrash && p.Consistency.Mode != ApplicationConsistent {
		add("consistency.fallbackToCrash", "only applies to mode application")
	}

	l := p.Limits
	if l.ParallelVMs < 0 || l.ParallelVMs > MaxParallelVMs {
		add("limits.parallelVMs", "is %d, must be 1–%d (or 0 for the default)", l.ParallelVMs, MaxParallelVMs)
	}
	if l.Retries < 0 || l.Retries > MaxRetries {
		add("limits.retries", "is %d, must be 0–%d", l.Retries, MaxRetries)
	}
	if l.RetryInterval < 0 {
		add("limits.retryInterval", "is %s, must be ≥ 0", l.RetryInterval)
	}

	switch p.State {
	case "", Enabled, Paused, Stopped:
	default:
		add("state", "%q is unknown, must be enabled, paused or stopped", string(p.State))
	}
	if p.Version < 0 {
		add("version", "is %d, must be ≥ 0", p.Version)
	}
	if len(errs) == 0 {
		return nil
	}
	return &invalid{errs: errs}
}

// Entry returns what the Scheduler needs of the plan; lastRun is the Due
// of its last run (from the job history), zero if none.
func (p *Plan) Entry(lastRun time.Time) schedule.Entry {
	return schedule.Entry{
		PlanID:        p.ID,
		Incremental:   p.Incremental,
		Full:          p.Full,
		Window:        p.Window,
		OutsideWindow: p.OutsideWindow,
		Overrun:       p.Overrun,
		LastRun:       lastRun,
		Paused:        p.State == Paused,
	}
}

// Location is the plan's time zone (that of Incremental), for the
// calendar buckets of retention; UTC if the zone is unknown.
func (p *Plan) Location() *time.Location {
	loc, err := schedule.LoadLocation(p.Incremental.TZ)
	if err != nil {
		return time.UTC
	}
	return loc
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// flatten lists the errors inside an errors.Join result.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, x := range j.Unwrap() {
			out = append(out, flatten(x)...)
		}
		return out
	}
	return []error{err}
}

// ApplyTo brings the plan's scheduling in s in line with its State:
// enabled plans are started (or their timing replaced), paused plans are
// started paused (their due times, and a catch-up, are recorded as
// skipped), stopped plans are removed. lastRun is the Due of the plan's last run, for the
// Scheduler's catch-up; run performs a run. The plan should be valid.
func (p *Plan) ApplyTo(s schedule.Scheduler, lastRun time.Time, run schedule.RunFunc) error {
	if p.State == Stopped {
		if err := s.Stop(p.ID); err != nil && !errors.Is(err, schedule.ErrUnknownPlan) {
			return fmt.Errorf("plan: stop %q: %w", p.ID, err)
		}
		return nil
	}
	if err := s.Start(p.Entry(lastRun), run); err != nil {
		return fmt.Errorf("plan: schedule %q: %w", p.ID, err)
	}
	return nil
}
