package ave

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// Defaults for the zero fields of Options.
const (
	DefaultRequestTimeout   = 60 * time.Second
	DefaultTaskPollInterval = time.Second
	DefaultTaskTimeout      = 30 * time.Minute
	DefaultMaxConcurrency   = 8
	DefaultPageSize         = 100
	DefaultDownloadRetries  = 5
	// DefaultDownloadIdleTimeout is Options.DownloadIdleTimeout's default.
	DefaultDownloadIdleTimeout = 2 * time.Minute
	DefaultSource              = "LOCAL"
)

// Options configures New. BaseURL and either Username+Password or Token are
// required; everything else has a default.
type Options struct {
	// BaseURL is AOC's address, e.g. "https://aoc.example.com"; the API
	// lives under BaseURL + "/v2/api".
	BaseURL string
	// Username, Password and Source (LOCAL, LDAP, ...; default LOCAL)
	// log in; the token is renewed once when AOC answers 401.
	Username, Password, Source string
	// Token is an API key used as is instead of logging in.
	Token string

	// HTTPClient makes the requests. Nil means a client with TLS
	// verification on, trusting the system roots plus CABundle. Give
	// either HTTPClient or CABundle/InsecureSkipVerify, not both.
	HTTPClient *http.Client
	// CABundle is PEM certificates to trust besides the system roots
	// (AOC's self-signed certificate).
	CABundle []byte
	// InsecureSkipVerify turns TLS verification off. It is logged as a
	// warning, since anyone on the path can then read the credentials.
	InsecureSkipVerify bool

	// RequestTimeout bounds one API call (not a download); default
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// TaskPollInterval is how often get-tasks is asked; default
	// DefaultTaskPollInterval.
	TaskPollInterval time.Duration
	// TaskTimeout bounds the wait for one task; default
	// DefaultTaskTimeout.
	TaskTimeout time.Duration
	// MaxConcurrency bounds the API calls in flight; default
	// DefaultMaxConcurrency. Downloads are not counted: there is one per
	// open disk.
	MaxConcurrency int
	// PageSize is the "first" of paged queries; default DefaultPageSize.
	PageSize int

	// DataPath reads snapshot disks; nil means ExportDataPath (export +
	// HTTP download).
	DataPath DataPath
	// TempDir holds the sparse staging files of downloads and restores;
	// default os.TempDir().
	TempDir string
	// DownloadRetries is how many times a download that fails without
	// progress is retried (resumed with Range where AOC honours it);
	// default DefaultDownloadRetries.
	DownloadRetries int
	// DownloadIdleTimeout ends a download that receives nothing for
	// this long (it is then retried like a dropped one), so that a
	// stalled connection cannot keep ReadAt waiting for ever; default
	// DefaultDownloadIdleTimeout.
	DownloadIdleTimeout time.Duration

	// StoragePolicy is the elf_storage_policy of volumes this backend
	// creates; empty means the replaced volume's policy on restore and
	// AOC's default on create.
	StoragePolicy string
	// DeleteReplacedVolumes deletes a disk's old volume after a restore
	// in place swapped the new one in. By default it is kept (detached),
	// for the administrator to delete once the restore is checked.
	DeleteReplacedVolumes bool

	// Logger receives the backend's logs; nil means slog.Default(). It
	// never receives credentials or tokens.
	Logger *slog.Logger
}

// String describes the options without credentials, so that printing them
// (%v, %+v) does not leak the password or token.
func (o Options) String() string {
	red := func(s string) string {
		if s == "" {
			return `""`
		}
		return "<redacted>"
	}
	return fmt.Sprintf("ave.Options{BaseURL: %q, Username: %q, Password: %s, Source: %q, Token: %s, InsecureSkipVerify: %v}",
		o.BaseURL, o.Username, red(o.Password), o.Source, red(o.Token), o.InsecureSkipVerify)
}

// Hypervisor is the AVE backend. It implements hypervisor.Hypervisor,
// PowerController, DiskWriter and Creator, and is safe for concurrent use.
type Hypervisor struct {
	c    *client
	opts Options
	log  *slog.Logger
	dp   DataPath

	mu      sync.Mutex
	writing map[string]string // disk id -> VM id, disks open for writing
	fresh   map[string]bool   // volume ids this backend created zero-filled and nobody wrote yet
}

var (
	_ hypervisor.Hypervisor      = (*Hypervisor)(nil)
	_ hypervisor.PowerController = (*Hypervisor)(nil)
	_ hypervisor.DiskWriter      = (*Hypervisor)(nil)
	_ hypervisor.Creator         = (*Hypervisor)(nil)
)

// New checks opts and returns a backend. It does not contact AOC: the first
// call logs in.
func New(opts Options) (*Hypervisor, error) {
	u, err := url.Parse(opts.BaseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("ave: Options.BaseURL %q: want http(s)://host", opts.BaseURL)
	}
	if opts.Token == "" && (opts.Username == "" || opts.Password == "") {
		return nil, errors.New("ave: Options: give Username and Password, or Token")
	}
	if opts.HTTPClient != nil && (len(opts.CABundle) > 0 || opts.InsecureSkipVerify) {
		return nil, errors.New("ave: Options: give HTTPClient or CABundle/InsecureSkipVerify, not both")
	}
	if opts.Source == "" {
		opts.Source = DefaultSource
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.TaskPollInterval <= 0 {
		opts.TaskPollInterval = DefaultTaskPollInterval
	}
	if opts.TaskTimeout <= 0 {
		opts.TaskTimeout = DefaultTaskTimeout
	}
	if opts.MaxConcurrency <= 0 {
		opts.MaxConcurrency = DefaultMaxConcurrency
	}
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.DownloadRetries <= 0 {
		opts.DownloadRetries = DefaultDownloadRetries
	}
	if opts.DownloadIdleTimeout <= 0 {
		opts.DownloadIdleTimeout = DefaultDownloadIdleTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	hc := opts.HTTPClient
	if hc == nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if len(opts.CABundle) > 0 {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(opts.CABundle) {
				return nil, errors.New("ave: Options.CABundle holds no PEM certificate")
			}
			tc.RootCAs = pool
		}
		if opts.InsecureSkipVerify {
			tc.InsecureSkipVerify = true
			log.Warn("ave: TLS certificate verification is off (Options.InsecureSkipVerify); credentials can be intercepted", "base_url", opts.BaseURL)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		tr.ResponseHeaderTimeout = opts.RequestTimeout
		hc = &http.Client{Transport: tr}
	}
	h := &Hypervisor{
		c: &client{
			base: strings.TrimSuffix(opts.BaseURL, "/") + "/v2/api", http: hc,
			user: opts.Username, password: opts.Password, source: opts.Source, apiKey: opts.Token,
			timeout: opts.RequestTimeout, sem: make(chan struct{}, opts.MaxConcurrency), log: log,
		},
		opts:    opts,
		log:     log,
		dp:      opts.DataPath,
		writing: map[string]string{},
		fresh:   map[string]bool{},
	}
	if h.dp == nil {
		h.dp = ExportDataPath{}
	}
	return h, nil
}

// Wire shapes of AOC's objects (the fields this package uses).
type idRef struct {
	ID string `json:"id"`
}

type vmWire struct {
	ID       string  `json:"id"`
	LocalID  string  `json:"local_id"`
	Name     string  `json:"name"`
	Status   string  `json:"status"`
	VCPU     int     `json:"vcpu"`
	Memory   int64   `json:"memory"`
	Firmware string  `json:"firmware"`
	Cluster  *idRef  `json:"cluster"`
	Host     *idRef  `json:"host"`
	VMDisks  []idRef `json:"vm_disks"`
	VMNICs   []idRef `json:"vm_nics"`
	Labels   []idRef `json:"labels"`
	Tools    string  `json:"vm_tools_status"`
}

type diskWire struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Bus      string `json:"bus"`
	Boot     int    `json:"boot"`
	Index    int    `json:"index"`
	VM       *idRef `json:"vm"`
	VMVolume *idRef `json:"vm_volume"`
}

type volumeWire struct {
	ID      string `json:"id"`
	LocalID string `json:"local_id"`
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	Policy  string `json:"elf_storage_policy"`
	Cluster *idRef `json:"cluster"`
}

type nicWire struct {
	ID      string `json:"id"`
	MAC     string `json:"mac_address"`
	Model   string `json:"model"`
	Enabled bool   `json:"enabled"`
	VM      *idRef `json:"vm"`
	VLAN    *struct {
		ID     string `json:"id"`
		VLANID int    `json:"vlan_id"`
	} `json:"vlan"`
}

type labelWire struct {
	ID    string `json:"id"`
	Key   string `json:"key"`
	Value string `json:"value"`
}

// vmState is one VM as loaded from AOC: its wire form, the neutral
// description, and its disks' volumes.
type vmState struct {
	wire    vmWire
	vm      hypervisor.VM
	volumes map[string]volumeWire // by disk id
}

// queryAll pages through a get-<things> operation.
func queryAll[T any](ctx context.Context, h *Hypervisor, op string, where map[string]any) ([]T, error) {
	var all []T
	for skip := 0; ; {
		var page []T
		in := map[string]any{"where": where, "orderBy": "id_ASC", "first": h.opts.PageSize, "skip": skip}
		if err := h.c.call(ctx, op, in, &page); err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) < h.opts.PageSize {
			return all, nil
		}
		skip += len(page)
	}
}

// loadVMs loads the VMs that where selects, with disks, volumes, NICs and
// labels, in five paged queries whatever their number.
func (h *Hypervisor) loadVMs(ctx context.Context, where map[string]any) ([]vmState, error) {
	raws, err := queryAll[json.RawMessage](ctx, h, "get-vms", where)
	if err != nil {
		return nil, err
	}
	if len(raws) == 0 {
		return nil, nil
	}
	out := make([]vmState, len(raws))
	var ids, labelIDs []string
	for i, r := range raws {
		if err := json.Unmarshal(r, &out[i].wire); err != nil || out[i].wire.ID == "" {
			return nil, fmt.Errorf("ave: get-vms: element %d is not a VM: %w", i, ErrBadResponse)
		}
		ids = append(ids, out[i].wire.ID)
		for _, l := range out[i].wire.Labels {
			labelIDs = append(labelIDs, l.ID)
		}
	}
	disks, err := queryAll[diskWire](ctx, h, "get-vm-disks", map[string]any{"vm": map[string]any{"id_in": ids}})
	if err != nil {
		return nil, err
	}
	var volIDs []string
	diskByID := map[string]diskWire{}
	for _, d := range disks {
		diskByID[d.ID] = d
		if d.VMVolume != nil {
			volIDs = append(volIDs, d.VMVolume.ID)
		}
	}
	volByID := map[string]volumeWire{}
	if len(volIDs) > 0 {
		vols, err := queryAll[volumeWire](ctx, h, "get-vm-volumes", map[string]any{"id_in": volIDs})
		if err != nil {
			return nil, err
		}
		for _, v := range vols {
			volByID[v.ID] = v
		}
	}
	nics, err := queryAll[nicWire](ctx, h, "get-vm-nics", map[string]any{"vm": map[string]any{"id_in": ids}})
	if err != nil {
		return nil, err
	}
	nicByID := map[string]nicWire{}
	for _, n := range nics {
		nicByID[n.ID] = n
	}
	labelByID := map[string]labelWire{}
	if len(labelIDs) > 0 {
		labels, err := queryAll[labelWire](ctx, h, "get-labels", map[string]any{"id_in": labelIDs})
		if err != nil {
			return nil, err
		}
		for _, l := range labels {
			labelByID[l.ID] = l
		}
	}
	for i := range out {
		st := &out[i]
		w := st.wire
		st.volumes = map[string]volumeWire{}
		vm := hypervisor.VM{
			ID: w.ID, Name: w.Name, CPUs: w.VCPU, MemoryB: w.Memory,
			Firmware: strings.ToLower(w.Firmware), Power: powerState(w.Status), Raw: raws[i],
		}
		if w.Cluster != nil {
			vm.Placement.Cluster = w.Cluster.ID
		}
		if w.Host != nil {
			vm.Placement.Host = w.Host.ID
		}
		for _, l := range w.Labels {
			if lw, ok := labelByID[l.ID]; ok {
				if vm.Labels == nil {
					vm.Labels = map[string]string{}
				}
				vm.Labels[lw.Key] = lw.Value
			}
		}
		for _, r := range w.VMDisks {
			d, ok := diskByID[r.ID]
			if !ok || d.Type != "DISK" || d.VMVolume == nil {
				continue // CD-ROMs and empty slots hold nothing to back up
			}
			vol, ok := volByID[d.VMVolume.ID]
			if !ok {
				return nil, fmt.Errorf("ave: vm %s: disk %s: volume %s not found: %w", w.ID, d.ID, d.VMVolume.ID, ErrBadResponse)
			}
			st.volumes[d.ID] = vol
			vm.Disks = append(vm.Disks, hypervisor.DiskInfo{
				ID: d.ID, Name: vol.Name, Size: vol.Size, Bus: strings.ToLower(d.Bus), BootOrder: d.Boot,
			})
		}
		for _, r := range w.VMNICs {
			n, ok := nicByID[r.ID]
			if !ok {
				continue
			}
			nic := hypervisor.NIC{ID: n.ID, MAC: n.MAC, Model: strings.ToLower(n.Model), Connected: n.Enabled}
			if n.VLAN != nil {
				nic.Network = n.VLAN.ID
			}
			vm.NICs = append(vm.NICs, nic)
		}
		st.vm = vm
	}
	return out, nil
}

func powerState(s string) hypervisor.PowerState {
	switch s {
	case "RUNNING":
		return hypervisor.PowerRunning
	case "STOPPED":
		return hypervisor.PowerStopped
	case "SUSPENDED":
		return hypervisor.PowerSuspended
	}
	return hypervisor.PowerUnknown
}

// ListVMs lists every VM AOC shows (paged with first/skip), with labels,
// disks and NICs. VMs in the recycle bin are left out.
func (h *Hypervisor) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ave: list vms: %w", err)
	}
	sts, err := h.loadVMs(ctx, map[string]any{"in_recycle_bin": false})
	if err != nil {
		return nil, fmt.Errorf("ave: list vms: %w", err)
	}
	out := make([]hypervisor.VM, len(sts))
	for i, st := range sts {
		out[i] = st.vm
	}
	return out, nil
}

// loadVM loads one VM; an unknown id gives an error wrapping
// hypervisor.ErrNotFound.
func (h *Hypervisor) loadVM(ctx context.Context, id string) (vmState, error) {
	if err := ctx.Err(); err != nil {
		return vmState{}, err
	}
	sts, err := h.loadVMs(ctx, map[string]any{"id": id})
	if err != nil {
		return vmState{}, err
	}
	if len(sts) != 1 {
		return vmState{}, fmt.Errorf("vm %q: %w", id, hypervisor.ErrNotFound)
	}
	return sts[0], nil
}

// VM returns one VM; Raw is AOC's get-vms element for it.
func (h *Hypervisor) VM(ctx context.Context, id string) (hypervisor.VM, error) {
	st, err := h.loadVM(ctx, id)
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("ave: get vm: %w", err)
	}
	return st.vm, nil
}
