package plan

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzPlanJSON: any JSON that decodes into a Plan re-encodes to the same
// Plan (empty and absent lists being the same), and Validate never
// panics.
func FuzzPlanJSON(f *testing.F) {
	b, _ := json.Marshal(valid())
	f.Add(b)
	f.Add([]byte(`{"id":"x","retention":{"keepWithin":"1h"},"limits":{"retryInterval":"90s"},"objects":{"selectors":[{}]}}`))
	f.Add([]byte(`{"incremental":{"kind":"weekly","weekdays":["sunday"]},"window":{"ranges":[]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Plan
		if json.Unmarshal(data, &p) != nil {
			return
		}
		_ = p.Validate()
		out, err := json.Marshal(p)
		if err != nil {
			return // an out-of-range weekday cannot be encoded
		}
		var q Plan
		if err := json.Unmarshal(out, &q); err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		if diff := cmp.Diff(p, q, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip of %s (-first +second):\n%s", data, diff)
		}
	})
}
