package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/internal/pipeline"
	"github.com/vmbackup/vmbackup/plan"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/schedule"
)

// Defaults for the zero values of Config's fields.
const (
	// DefaultParallelVMs is how many VMs of a job are backed up at once.
	DefaultParallelVMs = 2
	// DefaultRetryDelay is the wait before retrying a failed VM.
	DefaultRetryDelay = time.Minute
	// DefaultMaxInFlightBytes bounds the chunk buffers of all jobs of a
	// Service: the pipeline's memory.
	DefaultMaxInFlightBytes = 64 << 20
	// DefaultMaxBackupJobs and DefaultMaxRestoreJobs bound the jobs of a
	// Service that run at once.
	DefaultMaxBackupJobs  = 4
	DefaultMaxRestoreJobs = 2
	// DefaultHistoryLimit is how many job records are kept per plan.
	DefaultHistoryLimit = 1000
	// DefaultGCInterval is the least time between two garbage collections
	// started by retention.
	DefaultGCInterval = time.Hour
	// DefaultJobHeartbeat is how often a pending or running job's record
	// is rewritten.
	DefaultJobHeartbeat = time.Minute
)

// DefaultWorkers is the number of chunks of one disk processed at once when
// Config.Workers is zero: enough to keep every core hashing and compressing
// while other workers wait for reads and uploads.
func DefaultWorkers() int { return 2*runtime.GOMAXPROCS(0) + 2 }

// ErrNoRestorePoint is returned by RPO for a VM without restore points.
var ErrNoRestorePoint = errors.New("backup: no restore point")

// Config configures a Service. Hypervisor and Repository are required;
// every other field has a default for its zero value. Negative numbers are
// rejected.
type Config struct {
	// Hypervisor is where VMs are snapshotted, read and restored.
	Hypervisor hypervisor.Hypervisor
	// Repository stores restore points. The Service does not close it.
	Repository *repository.Repository
	// Logger receives the Service's logs; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock (job times, RPO); nil means time.Now.
	Now func() time.Time

	// ParallelVMs is how many VMs of one job run at once; 0 means
	// DefaultParallelVMs.
	ParallelVMs int
	// Retries is how many times a failed VM is tried again within a job;
	// 0 means never.
	Retries int
	// RetryDelay is the wait before each retry; 0 means DefaultRetryDelay.
	RetryDelay time.Duration

	// ReadBytesPerSec limits reads from the hypervisor's disks during
	// backups, over all jobs of the Service; 0 means unlimited.
	ReadBytesPerSec int64
	// WriteBytesPerSec limits bytes stored into the repository during
	// backups, and bytes written to the hypervisor's disks during
	// restores, over all jobs; 0 means unlimited.
	WriteBytesPerSec int64

	// Workers is the number of chunks of one disk in flight at once; 0
	// means DefaultWorkers().
	Workers int
	// MaxInFlightBytes bounds the memory of all chunk buffers of the
	// Service (rounded down to whole chunks, at least one per job); 0 means
	// DefaultMaxInFlightBytes.
	MaxInFlightBytes int64

	// MaxBackupJobs is how many backup jobs of the Service run at once
	// (scheduled or not); further jobs wait, in state pending. 0 means
	// DefaultMaxBackupJobs.
	MaxBackupJobs int
	// MaxRestoreJobs is the same for restore and rebuild jobs; 0 means
	// DefaultMaxRestoreJobs.
	MaxRestoreJobs int

	// Plans keeps the backup plans; nil means a plan.BlobStore in the
	// repository's bucket (under plan.DefaultPrefix). The Service writes
	// every plan's restore points into Repository: a plan's Repository
	// field tells people and other tools where, and is not opened.
	Plans plan.Store
	// Scheduler fires the plans' runs once StartPlans is called. nil means
	// a schedule.Local on Clock made by the Service, limited to
	// MaxBackupJobs runs at once. A Scheduler of the embedder's should
	// pass its events to Service.ScheduleEvent, so that skipped and missed
	// runs enter the job history.
	Scheduler schedule.Scheduler
	// Clock drives the Scheduler the Service makes; nil means
	// schedule.SystemClock. When Now is nil, Now is Clock.Now, so a
	// schedule.FakeClock moves job times, retention and history too.
	Clock schedule.Clock
	// HistoryLimit is how many job records are kept per plan (and for jobs
	// of no plan); older ones are deleted. 0 means DefaultHistoryLimit.
	HistoryLimit int
	// GCInterval is the least time between two garbage collections that
	// the Service starts after retention forgot points; GC reads every
	// manifest and index, so it is batched. 0 means DefaultGCInterval.
	GCInterval time.Duration
	// JobHeartbeat is how often the record of a pending or running job is
	// rewritten (JobRecord.Updated), so that a Service started later, on
	// this host or another one, can tell a job whose process or host went
	// down: one not rewritten for 5 heartbeats is marked failed
	// ("interrupted"). Hosts' clocks must agree to well within that.
	// 0 means DefaultJobHeartbeat.
	JobHeartbeat time.Duration
}

// Service runs backup and restore jobs. It is safe for concurrent use: jobs
// may run at the same time, sharing the Service's limits.
type Service struct {
	cfg     Config
	hv      hypervisor.Hypervisor
	repo    *repository.Repository
	log     *slog.Logger
	now     func() time.Time
	pool    *pipeline.Pool
	readLim *rate.Limiter // nil: unlimited
	wrLim   *rate.Limiter // nil: unlimited

	// backupSlots and restoreSlots hold MaxBackupJobs and MaxRestoreJobs.
	backupSlots, restoreSlots *semaphore.Weighted

	plans   plan.Store
	history *history
	jobSeq  atomic.Uint64 // jobs and history records made

	mu   sync.Mutex
	subs []*subscriber

	// Scheduling (plans.go). plansMu guards the Scheduler's plans and is
	// held while calling it; schedMu guards what the Scheduler's events
	// change (ScheduleEvent runs under the Scheduler's lock, so it must
	// never wait for plansMu).
	plansMu  sync.Mutex
	sched    schedule.Scheduler // nil until StartPlans
	ownSched bool               // made by the Service: closed by Close
	started  map[string]int64   // plans handed to sched -> their version then
	closed   bool

	schedMu   sync.Mutex
	active    int                 // scheduled runs started and not finished
	writing   int                 // history records of scheduler events being written
	idle      *sync.Cond          // on schedMu: signalled when active or writing drop
	overrun   map[string]string   // plan id -> what the window's close did to its run
	waited    map[string]waitNote // plan id -> what its next run waited for
	lastGC    time.Time
	gcRunning bool
	// recompressQ holds, per plan, what its window's close will
	// recompress (recompress.go); stopping is set by Close.
	recompressQ   map[string]*recompressQueue
	recompressing int // recompress jobs going
	stopping      bool
}

// New validates cfg, fills in defaults and returns a Service. An invalid
// field gives an error naming it.
func New(cfg Config) (*Service, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("backup: config: %s %s", field, fmt.Sprintf(format, args...)))
	}
	if cfg.Hypervisor == nil {
		bad("Hypervisor", "is required")
	}
	if cfg.Repository == nil {
		bad("Repository", "is required")
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"ParallelVMs", int64(cfg.ParallelVMs)},
		{"Retries", int64(cfg.Retries)},
		{"RetryDelay", int64(cfg.RetryDelay)},
		{"ReadBytesPerSec", cfg.ReadBytesPerSec},
		{"WriteBytesPerSec", cfg.WriteBytesPerSec},
		{"Workers", int64(cfg.Workers)},
		{"MaxInFlightBytes", cfg.MaxInFlightBytes},
		{"MaxBackupJobs", int64(cfg.MaxBackupJobs)},
		{"MaxRestoreJobs", int64(cfg.MaxRestoreJobs)},
		{"HistoryLimit", int64(cfg.HistoryLimit)},
		{"GCInterval", int64(cfg.GCInterval)},
		{"JobHeartbeat", int64(cfg.JobHeartbeat)},
	} {
		if f.v < 0 {
			bad(f.name, "is %d, must be >= 0", f.v)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = schedule.SystemClock
	}
	if cfg.Now == nil {
		cfg.Now = cfg.Clock.Now
	}
	if cfg.MaxBackupJobs == 0 {
		cfg.MaxBackupJobs = DefaultMaxBackupJobs
	}
	if cfg.MaxRestoreJobs == 0 {
		cfg.MaxRestoreJobs = DefaultMaxRestoreJobs
	}
	if cfg.HistoryLimit == 0 {
		cfg.HistoryLimit = DefaultHistoryLimit
	}
	if cfg.GCInterval == 0 {
		cfg.GCInterval = DefaultGCInterval
	}
	if cfg.JobHeartbeat == 0 {
		cfg.JobHeartbeat = DefaultJobHeartbeat
	}
	if cfg.Plans == nil {
		cfg.Plans = plan.NewBlobStore(cfg.Repository.Bucket(), &plan.BlobStoreOptions{LocalDir: cfg.Repository.LocalDir()})
	}
	if cfg.ParallelVMs == 0 {
		cfg.ParallelVMs = DefaultParallelVMs
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers()
	}
	if cfg.MaxInFlightBytes == 0 {
		cfg.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	cs := cfg.Repository.Config().ChunkSize
	s := &Service{
		cfg:  cfg,
		hv:   cfg.Hypervisor,
		repo: cfg.Repository,
		log:  cfg.Logger,
		now:  cfg.Now,
		pool: pipeline.NewPool(cs, int(cfg.MaxInFlightBytes/int64(cs))),

		backupSlots:  semaphore.NewWeighted(int64(cfg.MaxBackupJobs)),
		restoreSlots: semaphore.NewWeighted(int64(cfg.MaxRestoreJobs)),
		plans:        cfg.Plans,
		history:      &history{bucket: cfg.Repository.Bucket(), limit: cfg.HistoryLimit, log: cfg.Logger, host: hostname(), now: cfg.Now},
		started:      map[string]int64{},
		overrun:      map[string]string{},
		waited:       map[string]waitNote{},
		recompressQ:  map[string]*recompressQueue{},
	}
	s.idle = sync.NewCond(&s.schedMu)
	if cfg.ReadBytesPerSec > 0 {
		s.readLim = rate.NewLimiter(rate.Limit(cfg.ReadBytesPerSec), int(max(cfg.ReadBytesPerSec, int64(cs))))
	}
	if cfg.WriteBytesPerSec > 0 {
		s.wrLim = rate.NewLimiter(rate.Limit(cfg.WriteBytesPerSec), int(max(cfg.WriteBytesPerSec, int64(cs))))
	}
	return s, nil
}

// Config returns the Service's configuration with defaults filled in.
func (s *Service) Config() Config { return s.cfg }

// RPO returns how old the VM's newest restore point is (now minus its
// creation time) and when it was created. A VM without restore points gives
// an error wrapping ErrNoRestorePoint.
func (s *Service) RPO(ctx context.Context, vmID string) (time.Duration, time.Time, error) {
	points, err := s.repo.ListPoints(ctx, repository.Filter{VMID: vmID})
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("backup: rpo of vm %q: %w", vmID, err)
	}
	if len(points) == 0 {
		return 0, time.Time{}, fmt.Errorf("backup: rpo of vm %q: %w", vmID, ErrNoRestorePoint)
	}
	newest := points[0].Created
	for _, p := range points[1:] {
		if p.Created.After(newest) {
			newest = p.Created
		}
	}
	return s.now().Sub(newest), newest, nil
}

// waitN waits until the limiter allows n more bytes (nil: no limit).
func waitN(ctx context.Context, lim *rate.Limiter, n int64) error {
	if lim == nil {
		return nil
	}
	for n > 0 {
		k := min(n, int64(lim.Burst()))
		if err := lim.WaitN(ctx, int(k)); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func newJobID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return "job-" + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// subscriber is one function registered with Subscribe.
type subscriber struct {
	mu   sync.Mutex // one call at a time
	fn   func(Event)
	gone atomic.Bool
}

// Subscribe registers fn to receive every event of every job from now on,
// and returns a function that unregisters it (a call already under way may
// still finish; unsubscribe may be called from fn). fn is called synchronously by
// the job's goroutines, one call at a time per subscriber, in order within
// each job; it must return quickly and must not start jobs itself. All
// events of a job are delivered before the job's method returns.
func (s *Service) Subscribe(fn func(Event)) (unsubscribe func()) {
	sub := &subscriber{fn: fn}
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.subs = slices.DeleteFunc(s.subs, func(x *subscriber) bool { return x == sub })
		s.mu.Unlock()
		sub.gone.Store(true)
	}
}

func (s *Service) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	s.mu.Lock()
	subs := slices.Clone(s.subs)
	s.mu.Unlock()
	for _, sub := range subs {
		sub.mu.Lock()
		if !sub.gone.Load() {
			sub.fn(e)
		}
		sub.mu.Unlock()
	}
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
