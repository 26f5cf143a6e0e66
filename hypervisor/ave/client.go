package ave

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// Errors callers branch on, besides the hypervisor sentinels.
var (
	// ErrBadResponse: AOC answered something that is not the JSON the
	// operation documents (an HTML error page from a proxy, malformed
	// JSON, a missing field).
	ErrBadResponse = errors.New("ave: bad response from AOC")
	// ErrTaskTimeout: an AOC task did not finish within
	// Options.TaskTimeout.
	ErrTaskTimeout = errors.New("ave: task timed out")
	// ErrLogin: AOC refused the credentials (or the API token).
	ErrLogin = errors.New("ave: login refused")
)

// APIError is an error answered by AOC: an HTTP status ≥ 400 with AOC's
// error body, or a task that ended FAILED (Status 0). It never carries
// credentials. errors.Is maps it onto the hypervisor sentinels by HTTP status
// and AOC error code (see Unwrap).
type APIError struct {
	// Op is the operation ("create-vm-snapshot"), or "task <id> (<op>)"
	// for a failed task.
	Op      string
	Status  int
	Code    string
	Message string
}

// Error names the operation, the status and AOC's code and message.
func (e *APIError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("ave: %s failed: %s: %s", e.Op, e.Code, e.Message)
	}
	return fmt.Sprintf("ave: %s: AOC answered %d %s: %s", e.Op, e.Status, e.Code, e.Message)
}

// Unwrap maps the error onto a hypervisor sentinel: 404 or a code ending in
// NOT_FOUND is hypervisor.ErrNotFound; 409 or a code naming a state conflict
// (STATUS_NOT_ALLOWED, DUPLICATE, MOUNTED, BUSY, LOCKED, CONFLICT) is
// hypervisor.ErrConflict; 501 or a code saying NOT_SUPPORTED, UNSUPPORTED or
// TOOLS_NOT_RUNNING is hypervisor.ErrUnsupported; 401 is ErrLogin. AOC's
// error codes are not all published, so the mapping goes by these parts of
// the code's name.
func (e *APIError) Unwrap() error {
	code := strings.ToUpper(e.Code)
	has := func(parts ...string) bool {
		for _, p := range parts {
			if strings.Contains(code, p) {
				return true
			}
		}
		return false
	}
	switch {
	case e.Status == 404 || has("NOT_FOUND", "NOTFOUND"):
		return hypervisor.ErrNotFound
	case e.Status == 409 || has("STATUS_NOT_ALLOWED", "DUPLICATE", "MOUNTED", "BUSY", "LOCKED", "CONFLICT"):
		return hypervisor.ErrConflict
	case e.Status == 501 || has("NOT_SUPPORTED", "UNSUPPORTED", "TOOLS_NOT_RUNNING"):
		return hypervisor.ErrUnsupported
	case e.Status == 401:
		return ErrLogin
	}
	return nil
}

// client makes every call to AOC: JSON over POST, one token shared by all
// calls, one re-login on 401, at most a fixed number of calls in flight.
type client struct {
	base     string // https://host/v2/api
	http     *http.Client
	user     string
	password string
	source   string
	apiKey   string
	timeout  time.Duration
	sem      chan struct{}
	log      *slog.Logger

	mu    sync.Mutex // guards token; held during login so one login serves all
	token string
}

// maxAnswer bounds what is read of one answer.
const maxAnswer = 64 << 20

// call runs op with in as its JSON body and decodes the answer into out.
func (c *client) call(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("ave: %s: encode request: %w", op, err)
	}
	return c.do(ctx, op, "application/json", func() io.Reader { return bytes.NewReader(body) }, out)
}

// idempotent operations are retried on transient failures.
func idempotent(op string) bool {
	return strings.HasPrefix(op, "get-")
}

func (c *client) do(ctx context.Context, op, contentType string, body func() io.Reader, out any) error {
	relogged := false
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("ave: %s: %w", op, err)
		}
		tok, err := c.currentToken(ctx)
		if err != nil {
			return err
		}
		status, ctype, data, err := c.post(ctx, op, contentType, body(), tok)
		transient := err != nil || status == 502 || status == 503 || status == 504 || status == 429
		if transient && idempotent(op) && attempt < 2 && ctx.Err() == nil {
			c.log.Debug("ave: retrying", "op", op, "status", status, "err", err)
			if err := sleep(ctx, time.Duration(attempt+1)*100*time.Millisecond); err != nil {
				return fmt.Errorf("ave: %s: %w", op, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("ave: %s: %w", op, err)
		}
		if status == http.StatusUnauthorized && !relogged && c.apiKey == "" {
			relogged = true
			c.dropToken(tok)
			c.log.Info("ave: token refused, logging in again", "op", op)
			continue
		}
		if status >= 400 {
			return parseError(op, status, ctype, data)
		}
		return decodeAnswer(op, ctype, data, out)
	}
}

// post sends one request and reads the whole answer.
func (c *client) post(ctx context.Context, op, contentType string, body io.Reader, token string) (int, string, []byte, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, "", nil, ctx.Err()
	}
	defer func() { <-c.sem }()
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, c.base+"/"+op, body)
	if err != nil {
		return 0, "", nil, err
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", nil, stripURL(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	c.log.Debug("ave: call", "op", op, "status", resp.StatusCode, "bytes", len(data), "duration", time.Since(start))
	if err != nil {
		return 0, "", nil, fmt.Errorf("read answer: %w", err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), data, nil
}

// stripURL drops the URL from a *url.Error (download links carry secrets),
// keeping the wrapped error for errors.Is.
func stripURL(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil && strings.Contains(err.Error(), "://") {
			return fmt.Errorf("request failed: %w", inner)
		}
	}
	return err
}

func isJSON(ctype string) bool {
	if ctype == "" {
		return true // be lenient: decode and see
	}
	mt, _, err := mime.ParseMediaType(ctype)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// snippet quotes the start of an answer for an error message.
func snippet(data []byte) string {
	s := strings.Join(strings.Fields(string(data[:min(len(data), 60)])), " ")
	if len(data) > 60 {
		s += "..."
	}
	return fmt.Sprintf("%q", s)
}

func decodeAnswer(op, ctype string, data []byte, out any) error {
	if !isJSON(ctype) {
		return fmt.Errorf("ave: %s: answer is %s, not JSON (starts %s): %w", op, ctype, snippet(data), ErrBadResponse)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		if op == "login" {
			return fmt.Errorf("ave: login: malformed JSON answer: %w", ErrBadResponse)
		}
		return fmt.Errorf("ave: %s: malformed JSON answer (%v; starts %s): %w", op, err, snippet(data), ErrBadResponse)
	}
	return nil
}

func parseError(op string, status int, ctype string, data []byte) error {
	var body struct {
		Message string `json:"message"`
		Code    string `json:"code"`
	}
	if isJSON(ctype) && json.Unmarshal(data, &body) == nil && (body.Code != "" || body.Message != "") {
		return &APIError{Op: op, Status: status, Code: body.Code, Message: body.Message}
	}
	return &APIError{Op: op, Status: status, Code: http.StatusText(status),
		Message: fmt.Sprintf("answer is %s, not an AOC error body (starts %s)", ctype, snippet(data))}
}

// currentToken returns the token, logging in first if there is none.
func (c *client) currentToken(ctx context.Context) (string, error) {
	if c.apiKey != "" {
		return c.apiKey, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" {
		return c.token, nil
	}
	var ans struct {
		Data struct {
			Token string `json:"token"`
		} `json:"data"`
	}
	in := map[string]string{"username": c.user, "password": c.password, "source": c.source}
	body, _ := json.Marshal(in)
	status, ctype, data, err := c.post(ctx, "login", "application/json", bytes.NewReader(body), "")
	if err != nil {
		return "", fmt.Errorf("ave: login: %w", err)
	}
	if status >= 400 {
		err := parseError("login", status, ctype, data).(*APIError)
		return "", fmt.Errorf("%w: AOC answered %d %s: %s", ErrLogin, err.Status, err.Code, err.Message)
	}
	if err := decodeAnswer("login", ctype, data, &ans); err != nil {
		return "", err
	}
	if ans.Data.Token == "" {
		return "", fmt.Errorf("ave: login: answer has no data.token: %w", ErrBadResponse)
	}
	c.token = ans.Data.Token
	c.log.Debug("ave: logged in")
	return c.token, nil
}

func (c *client) dropToken(tok string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == tok {
		c.token = ""
	}
}

// authFor returns the token to send with a GET of link: only to AOC's own
// host, never to a third party.
func (c *client) authFor(ctx context.Context, link string) string {
	if !strings.HasPrefix(link, strings.TrimSuffix(c.base, "/v2/api")+"/") {
		return ""
	}
	tok, err := c.currentToken(ctx)
	if err != nil {
		return ""
	}
	return tok
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mutationAnswer is one element of a mutation's answer.
type mutationAnswer struct {
	TaskID *string         `json:"task_id"`
	Data   json.RawMessage `json:"data"`
}

// task is an AOC task as get-tasks shows it.
type task struct {
	ID           string  `json:"id"`
	Status       string  `json:"status"`
	Progress     float64 `json:"progress"`
	ErrorCode    *string `json:"error_code"`
	ErrorMessage *string `json:"error_message"`
}

// waitTask polls get-tasks until the task ends, ctx ends or the task
// timeout passes.
func (h *Hypervisor) waitTask(ctx context.Context, op string, id *string) error {
	if id == nil || *id == "" {
		return nil
	}
	deadline := time.Now().Add(h.opts.TaskTimeout)
	for {
		var ts []task
		if err := h.c.call(ctx, "get-tasks", map[string]any{"where": map[string]any{"id": *id}}, &ts); err != nil {
			return fmt.Errorf("ave: wait for task %s (%s): %w", *id, op, err)
		}
		if len(ts) != 1 {
			return fmt.Errorf("ave: wait for task %s (%s): get-tasks answered %d tasks: %w", *id, op, len(ts), ErrBadResponse)
		}
		t := ts[0]
		switch t.Status {
		case "SUCCESSED":
			return nil
		case "FAILED":
			e := &APIError{Op: fmt.Sprintf("task %s (%s)", t.ID, op)}
			if t.ErrorCode != nil {
				e.Code = *t.ErrorCode
			}
			if t.ErrorMessage != nil {
				e.Message = *t.ErrorMessage
			}
			return e
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("ave: task %s (%s) did not finish within %v (status %s, progress %.0f%%): %w",
				t.ID, op, h.opts.TaskTimeout, t.Status, 100*t.Progress, ErrTaskTimeout)
		}
		if err := sleep(ctx, min(h.opts.TaskPollInterval, time.Until(deadline)+time.Millisecond)); err != nil {
			return fmt.Errorf("ave: wait for task %s (%s): %w", *id, op, err)
		}
	}
}

// mutate runs a mutation and waits for all its tasks. It returns the
// answer's data even when a task fails, so that the caller can clean up.
func (h *Hypervisor) mutate(ctx context.Context, op string, in any) ([]mutationAnswer, error) {
	var ans []mutationAnswer
	if err := h.c.call(ctx, op, in, &ans); err != nil {
		return nil, err
	}
	var errs []error
	for _, a := range ans {
		if err := h.waitTask(ctx, op, a.TaskID); err != nil {
			errs = append(errs, err)
		}
	}
	return ans, errors.Join(errs...)
}

// Call runs one AOC operation with in as its JSON body and decodes the
// answer into out, with the backend's login, re-login, concurrency bound and
// error mapping. It is for DataPath implementations and plugins that need
// operations this package does not wrap.
func (h *Hypervisor) Call(ctx context.Context, op string, in, out any) error {
	return h.c.call(ctx, op, in, out)
}

// WaitTask waits for an AOC task (a mutation's task_id) to succeed; a
// failed task gives an *APIError, one that outlives Options.TaskTimeout an
// error wrapping ErrTaskTimeout.
func (h *Hypervisor) WaitTask(ctx context.Context, op, taskID string) error {
	return h.waitTask(ctx, op, &taskID)
}
