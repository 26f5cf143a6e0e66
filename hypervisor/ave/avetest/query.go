package avetest

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// query is the body of a get-<things> operation.
type query struct {
	Where   map[string]any `json:"where"`
	OrderBy string         `json:"orderBy"`
	First   *int           `json:"first"`
	Skip    int            `json:"skip"`
}

// toMap turns a wire record into its JSON object form, which where filters
// and orderBy work on.
func toMap(v any) map[string]any {
	b, _ := json.Marshal(v)
	var m map[string]any
	json.Unmarshal(b, &m)
	return m
}

// runQuery filters, orders and pages records (wire structs).
func runQuery(body json.RawMessage, records []any) ([]map[string]any, *apiError) {
	var q query
	if len(body) > 0 && string(body) != "null" {
		if err := json.Unmarshal(body, &q); err != nil {
			return nil, errorf(400, "BAD_REQUEST", "query: %v", err)
		}
	}
	out := []map[string]any{}
	for _, r := range records {
		m := toMap(r)
		ok, err := match(m, q.Where)
		if err != nil {
			return nil, errorf(400, "BAD_REQUEST", "where: %v", err)
		}
		if ok {
			out = append(out, m)
		}
	}
	field, desc := "id", false
	if q.OrderBy != "" {
		switch {
		case strings.HasSuffix(q.OrderBy, "_ASC"):
			field = strings.TrimSuffix(q.OrderBy, "_ASC")
		case strings.HasSuffix(q.OrderBy, "_DESC"):
			field, desc = strings.TrimSuffix(q.OrderBy, "_DESC"), true
		default:
			return nil, errorf(400, "BAD_REQUEST", "orderBy %q: want <field>_ASC or <field>_DESC", q.OrderBy)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := sortKey(out[i][field]), sortKey(out[j][field])
		if desc {
			return a > b
		}
		return a < b
	})
	if q.Skip < 0 || (q.First != nil && *q.First < 0) {
		return nil, errorf(400, "BAD_REQUEST", "negative first or skip")
	}
	if q.Skip >= len(out) {
		return []map[string]any{}, nil
	}
	out = out[q.Skip:]
	if q.First != nil && *q.First < len(out) {
		out = out[:*q.First]
	}
	return out, nil
}

// sortKey orders ids like "vm-2" before "vm-10" and numbers numerically.
func sortKey(v any) string {
	switch x := v.(type) {
	case float64:
		return fmt.Sprintf("%020.3f", x)
	case string:
		if i := strings.LastIndexByte(x, '-'); i >= 0 {
			var n int
			if _, err := fmt.Sscanf(x[i+1:], "%d", &n); err == nil && fmt.Sprint(n) == x[i+1:] {
				return fmt.Sprintf("%s-%012d", x[:i], n)
			}
		}
		return x
	default:
		return fmt.Sprint(x)
	}
}

// match evaluates a Prisma-like where filter on a record.
func match(rec map[string]any, where map[string]any) (bool, error) {
	for k, v := range where {
		ok, err := matchKey(rec, k, v)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func matchKey(rec map[string]any, k string, v any) (bool, error) {
	switch k {
	case "AND", "OR", "NOT":
		var subs []map[string]any
		switch x := v.(type) {
		case map[string]any:
			subs = []map[string]any{x}
		case []any:
			for _, e := range x {
				m, ok := e.(map[string]any)
				if !ok {
					return false, fmt.Errorf("%s: want objects", k)
				}
				subs = append(subs, m)
			}
		default:
			return false, fmt.Errorf("%s: want an object or a list", k)
		}
		any1, all := false, true
		for _, sub := range subs {
			ok, err := match(rec, sub)
			if err != nil {
				return false, err
			}
			any1 = any1 || ok
			all = all && ok
		}
		switch k {
		case "AND":
			return all, nil
		case "OR":
			return any1, nil
		default:
			return !any1, nil
		}
	}
	for _, suf := range []string{"_in", "_not_in", "_contains", "_starts_with", "_not"} {
		if !strings.HasSuffix(k, suf) {
			continue
		}
		f := strings.TrimSuffix(k, suf)
		if _, known := rec[f]; !known {
			continue // a field whose name ends like an operator
		}
		got := fmt.Sprint(rec[f])
		switch suf {
		case "_in", "_not_in":
			list, ok := v.([]any)
			if !ok {
				return false, fmt.Errorf("%s: want a list", k)
			}
			in := false
			for _, e := range list {
				if fmt.Sprint(e) == got {
					in = true
				}
			}
			return in == (suf == "_in"), nil
		case "_contains":
			return strings.Contains(got, fmt.Sprint(v)), nil
		case "_starts_with":
			return strings.HasPrefix(got, fmt.Sprint(v)), nil
		default:
			return got != fmt.Sprint(v), nil
		}
	}
	field, ok := rec[k]
	if !ok {
		return false, fmt.Errorf("unknown field %q", k)
	}
	if sub, ok := v.(map[string]any); ok {
		switch x := field.(type) {
		case map[string]any:
			return match(x, sub)
		case []any:
			for _, e := range x {
				if m, ok := e.(map[string]any); ok {
					if ok, err := match(m, sub); err != nil || ok {
						return ok, err
					}
				}
			}
			return false, nil
		case nil:
			return false, nil
		default:
			return false, fmt.Errorf("%s is not an object", k)
		}
	}
	return fmt.Sprint(field) == fmt.Sprint(v), nil
}
