// Package avetest is an in-memory server that speaks the wire of AOC's REST
// API (the management center of ACOS clusters, whose hypervisor is AVE), for
// tests of package ave and of AOC plugins.
//
// # What it speaks
//
// Every operation is POST /v2/api/<operation> with a JSON body and a JSON
// answer. POST /v2/api/login {"username","password","source"} answers
// {"data":{"token":..}}; every other operation needs the header
// "Authorization: <token>" (no "Bearer"), or answers 401. Errors are an HTTP
// status ≥ 400 with the body {"status","message","code","path","props"}.
//
// Queries (get-vms, get-vm-disks, get-vm-volumes, get-vm-nics, get-labels,
// get-vlans, get-vm-snapshots, get-tasks, get-export-files) take
// {"where","orderBy","first","skip"}. The where filter is Prisma-like:
// equality ({"id":"x"}), "<field>_in", "<field>_contains",
// "<field>_starts_with", "<field>_not", nested objects ({"vm":{"id":"x"}},
// matching any element of a list of objects) and AND/OR/NOT. orderBy is
// "<field>_ASC" or "<field>_DESC"; answers are JSON arrays.
//
// Mutations answer [{"task_id":..,"data":{..}}], one element per item. Tasks
// progress over Options.TaskDuration: get-tasks shows PENDING, EXECUTING
// with a progress between 0 and 1, then SUCCESSED or FAILED (error_code,
// error_message). The effect of a mutation on data happens when it is
// called (a snapshot captures the disks then); power state changes when its
// task succeeds; a failed task undoes what its mutation created.
//
// # Operations and their rules
//
//   - create-vm-snapshot {"data":[{"vm_id","name","consistent_type"}]}:
//     FILE_SYSTEM_CONSISTENT needs a RUNNING VM with vm_tools_status
//     RUNNING, else 400 with code VM_TOOLS_NOT_RUNNING. delete-vm-snapshot
//     {"where":{"id"}}.
//   - export-vm-volume {"data":[{"vm_volume_id"} or {"vm_snapshot_id",
//     "vm_volume_local_id"}, "type":"RAW"]}: the task makes an export file
//     (data.id); get-export-file-download-links {"where":{"id"}} gives
//     [{"filename","link"}]; GET link serves the bytes, honouring Range
//     unless Options.NoRange; delete-export-file {"where":{"id"}}.
//     The export of a snapshot's volume is this server's choice: AOC's
//     public documentation does not say how a snapshot's volume is named.
//   - upload-elf-file (multipart form): without upload_task_id it opens an
//     upload of "size" bytes and answers {"id","chunk_size","current_chunk"};
//     then each call carries upload_task_id, chunk_index (= current_chunk)
//     and the chunk in the part "file" (chunk_size bytes, the last one
//     shorter). import-vm-volume {"data":[{"cluster_id","name",
//     "upload_task_id","storage_policy"}]} makes a volume from a complete
//     upload.
//   - update-vm-disk {"where":{"id":vm},"data":{"vm_disk_id","vm_volume_id"}}
//     swaps the volume of a disk; refused (400 VM_STATUS_NOT_ALLOWED) while
//     the VM is not STOPPED. delete-vm-volume {"where":{"id"}} refuses a
//     mounted volume.
//   - start-vm, shutdown-vm, poweroff-vm {"where":{"id"}}: start needs a
//     STOPPED or SUSPENDED VM, shutdown and poweroff a RUNNING or SUSPENDED
//     one, else 400 VM_STATUS_NOT_ALLOWED.
//   - create-vm [{"cluster_id","host_id","name","vcpu",...,"vm_nics":[
//     {"connect_vlan_id","model","enabled","mac_address"}],"vm_disks":
//     {"mount_disks":[..],"mount_new_create_disks":[..]}}]; delete-vm.
//
// Unknown ids in a mutation give 404 with a code ending in NOT_FOUND.
//
// # Seeding and faults
//
// AddVM, AddVLAN, GuestWrite, SetToolsRunning and SetVMStatus seed the
// state; ReadDisk, VMStatus, Counts (VMs, volumes, snapshots, export files,
// uploads, tasks: to check that nothing was left behind), Snapshots and
// Requests inspect it; Inject makes
// operations fail (an HTTP status, a raw body such as malformed JSON or an
// HTML page, a failed or never-ending task, a slow or dropped download);
// ExpireTokens invalidates every token issued so far.
package avetest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Default credentials of a Server whose Options leave them empty.
const (
	DefaultUsername = "admin"
	DefaultPassword = "avetest-password"
)

// Options configures a Server. The zero value is usable.
type Options struct {
	// Username and Password are the credentials login accepts (source
	// LOCAL); defaults DefaultUsername and DefaultPassword.
	Username, Password string
	// APIKeys are tokens accepted without login.
	APIKeys []string
	// TaskDuration is how long a task takes from PENDING to SUCCESSED;
	// default 20ms.
	TaskDuration time.Duration
	// ChunkSize is the upload chunk size the server asks for; default
	// 256 KiB.
	ChunkSize int64
	// NoRange makes downloads ignore Range headers (always 200 with the
	// whole file), as some servers do.
	NoRange bool
	// Now is the clock tasks progress by; nil means time.Now. Tests of
	// task states set a fake clock.
	Now func() time.Time
	// TLS serves over HTTPS with a self-signed certificate (see
	// Server.Certificate).
	TLS bool
}

// Fault makes matching requests misbehave. Inject adds one.
type Fault struct {
	// Op is the operation ("get-vms", "create-vm-snapshot", "login",
	// "upload-elf-file", ...) or "download" for GETs of download links.
	Op string
	// Times is how many requests it applies to; 0 means once, a negative
	// value every request.
	Times int
	// Status answers with this HTTP status and an AOC error body (or Body,
	// if set).
	Status int
	// Body and ContentType answer with this raw body (malformed JSON, an
	// HTML error page); Status defaults to 200 then.
	Body, ContentType string
	// FailTask lets the operation succeed but its task fail with this
	// error code.
	FailTask string
	// HangTask lets the operation succeed but its task never finish.
	HangTask bool
	// DropAfter (download) closes the connection after this many bytes of
	// the body.
	DropAfter int64
	// Delay waits before answering; for downloads it is the wait between
	// 64 KiB pieces of the body.
	Delay time.Duration
}

// Server is an AOC-faithful test server. Its methods are safe for
// concurrent use.
type Server struct {
	opts Options
	hs   *httptest.Server

	mu        sync.Mutex
	seq       int
	tokens    map[string]bool
	vms       map[string]*vm
	disks     map[string]*vmDisk
	volumes   map[string]*volume
	nics      map[string]*vmNIC
	labels    map[string]*label
	vlans     map[string]*vlan
	snapshots map[string]*snapshot
	tasks     map[string]*task
	exports   map[string]*exportFile
	uploads   map[string]*upload
	faults    []*Fault
	requests  map[string]int
}

// NewServer starts a server. Close it when done.
func NewServer(opts Options) *Server {
	if opts.Username == "" {
		opts.Username = DefaultUsername
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	if opts.TaskDuration <= 0 {
		opts.TaskDuration = 20 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 256 << 10
	}
	s := &Server{
		opts:      opts,
		tokens:    map[string]bool{},
		vms:       map[string]*vm{},
		disks:     map[string]*vmDisk{},
		volumes:   map[string]*volume{},
		nics:      map[string]*vmNIC{},
		labels:    map[string]*label{},
		vlans:     map[string]*vlan{},
		snapshots: map[string]*snapshot{},
		tasks:     map[string]*task{},
		exports:   map[string]*exportFile{},
		uploads:   map[string]*upload{},
		requests:  map[string]int{},
	}
	for _, k := range opts.APIKeys {
		s.tokens[k] = true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/api/{op}", s.serveAPI)
	mux.HandleFunc("GET /v2/download/{id}", s.serveDownload)
	if opts.TLS {
		s.hs = httptest.NewTLSServer(mux)
	} else {
		s.hs = httptest.NewServer(mux)
	}
	return s
}

// URL is the server's base URL (without /v2/api).
func (s *Server) URL() string { return s.hs.URL }

// Client returns an *http.Client that trusts the server (also with TLS).
func (s *Server) Client() *http.Client { return s.hs.Client() }

// Certificate returns the server's TLS certificate as PEM, or nil without
// TLS.
func (s *Server) Certificate() []byte {
	if s.hs.Certificate() == nil {
		return nil
	}
	return pemCert(s.hs.Certificate().Raw)
}

// Close stops the server.
func (s *Server) Close() {
	s.hs.CloseClientConnections()
	s.hs.Close()
}

// Inject adds a fault; faults are matched in the order added.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fc := f
	if fc.Times == 0 {
		fc.Times = 1
	}
	s.faults = append(s.faults, &fc)
}

// ClearFaults removes every fault not yet used up.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// ExpireTokens invalidates every token issued by login (API keys stay).
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t := range s.tokens {
		delete(s.tokens, t)
	}
	for _, k := range s.opts.APIKeys {
		s.tokens[k] = true
	}
}

// Requests returns how many requests of an operation ("download" for
// downloads) the server received.
func (s *Server) Requests(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[op]
}

// takeFault returns the first fault for op and uses it up.
func (s *Server) takeFault(op string) *Fault {
	for i, f := range s.faults {
		if f.Op != op {
			continue
		}
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		c := *f
		return &c
	}
	return nil
}

func (s *Server) newID(kind string) string {
	s.seq++
	return fmt.Sprintf("%s-%d", kind, s.seq)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// apiError is an AOC error answer.
type apiError struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
	Code    string `json:"code"`
	Path    string `json:"path"`
	Props   any    `json:"props"`
}

func errorf(status int, code, format string, a ...any) *apiError {
	return &apiError{Status: status, Code: code, Message: fmt.Sprintf(format, a...), Props: map[string]any{}}
}

func notFound(kind, id string) *apiError {
	return errorf(404, strings.ToUpper(kind)+"_NOT_FOUND", "%s %q not found", kind, id)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	op := r.PathValue("op")
	s.mu.Lock()
	s.requests[op]++
	f := s.takeFault(op)
	s.mu.Unlock()
	if r.Method != http.MethodPost {
		writeJSON(w, 405, errorf(405, "METHOD_NOT_ALLOWED", "use POST").withPath(r))
		return
	}
	if f != nil && f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if f != nil && (f.Body != "" || f.Status != 0) && f.FailTask == "" && !f.HangTask {
		if f.Body != "" {
			ct := f.ContentType
			if ct == "" {
				ct = "application/json"
			}
			w.Header().Set("Content-Type", ct)
			st := f.Status
			if st == 0 {
				st = 200
			}
			w.WriteHeader(st)
			w.Write([]byte(f.Body))
			return
		}
		writeJSON(w, f.Status, errorf(f.Status, "INJECTED", "injected failure of %s", op).withPath(r))
		return
	}
	if op == "login" {
		s.login(w, r)
		return
	}
	s.mu.Lock()
	ok := s.tokens[r.Header.Get("Authorization")]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, 401, errorf(401, "UNAUTHORIZED", "invalid or expired token").withPath(r))
		return
	}
	if op == "upload-elf-file" {
		s.uploadChunk(w, r)
		return
	}
	h, ok := handlers[op]
	if !ok {
		writeJSON(w, 404, errorf(404, "OPERATION_NOT_FOUND", "unknown operation %q", op).withPath(r))
		return
	}
	var body json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeJSON(w, 400, errorf(400, "BAD_REQUEST", "body is not JSON: %v", err).withPath(r))
		return
	}
	s.mu.Lock()
	out, aerr := h(s, body, f)
	s.mu.Unlock()
	if aerr != nil {
		writeJSON(w, aerr.Status, aerr.withPath(r))
		return
	}
	writeJSON(w, 200, out)
}

func (e *apiError) withPath(r *http.Request) *apiError {
	e.Path = r.URL.Path
	return e
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Source   string `json:"source"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeJSON(w, 400, errorf(400, "BAD_REQUEST", "body is not JSON").withPath(r))
		return
	}
	if in.Username != s.opts.Username || in.Password != s.opts.Password || (in.Source != "" && in.Source != "LOCAL") {
		writeJSON(w, 400, errorf(400, "LOGIN_FAILED", "wrong username or password").withPath(r))
		return
	}
	tok := randomHex(16)
	s.mu.Lock()
	s.tokens[tok] = true
	s.mu.Unlock()
	writeJSON(w, 200, map[string]any{"data": map[string]any{"token": tok}})
}
