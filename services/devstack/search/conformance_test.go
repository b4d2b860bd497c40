package search

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The conformance suite: testdata/conformance/*.json hold scenarios of
// requests and the stable parts of their expected responses, written from
// Elasticsearch's documented semantics. They run against the embedded
// server, and against a real Elasticsearch 8 when CHAPPER_ES_URL is set
// (e.g. CHAPPER_ES_URL=http://localhost:9200 go test -run Conformance).
//
// A step's "expect" is matched as a pattern: objects must hold at least
// the expected keys, arrays match element by element, numbers compare by
// value. Special objects:
//
//	{"$any": true}           anything, but the key must be present
//	{"$absent": true}        the key must not be present
//	{"$contains": "text"}    a string containing text
//	{"$regex": "^8\\."}      a string matching the expression
//	{"$oneOf": [a, b]}       matches one of the alternatives
//	{"$unordered": [a, b]}   an array holding matches of these, in any order
//	{"$len": 3}              an array (or object) of this length
//
// Templates in a scenario: {{p}} is a prefix unique to the run (index and
// template names start with it, so a run against a shared cluster touches
// nothing else); {{now}}, {{now-3d}}, {{now+2h}} are times relative to
// the start of the run.

type confScenario struct {
	Name  string     `json:"name"`
	Steps []confStep `json:"steps"`
}

type confStep struct {
	Name         string            `json:"name"`
	Method       string            `json:"method"`
	Path         string            `json:"path"`
	Body         json.RawMessage   `json:"body"`
	NDJSON       []json.RawMessage `json:"ndjson"`
	Status       int               `json:"status"`
	Expect       json.RawMessage   `json:"expect"`
	Headers      map[string]string `json:"headers"`
	BodyContains []string          `json:"bodyContains"`
	// EmbeddedOnly steps check behaviour of the embedded server that
	// Elasticsearch does not share (refusals of unsupported features).
	EmbeddedOnly bool `json:"embeddedOnly"`
	// Restart closes the embedded server and opens a new one on the same
	// data directory; against Elasticsearch it is skipped.
	Restart bool `json:"restart"`
}

var nowTemplate = regexp.MustCompile(`\{\{now(([+-])(\d+)([dhm]))?\}\}`)

func expandTemplates(raw string, prefix string, now time.Time) string {
	raw = strings.ReplaceAll(raw, "{{p}}", prefix)
	return nowTemplate.ReplaceAllStringFunc(raw, func(m string) string {
		g := nowTemplate.FindStringSubmatch(m)
		t := now
		if g[1] != "" {
			n, _ := strconv.Atoi(g[3])
			if g[2] == "-" {
				n = -n
			}
			switch g[4] {
			case "d":
				t = t.AddDate(0, 0, n)
			case "h":
				t = t.Add(time.Duration(n) * time.Hour)
			case "m":
				t = t.Add(time.Duration(n) * time.Minute)
			}
		}
		return t.UTC().Format("2006-01-02T15:04:05.000Z")
	})
}

func loadScenarios(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("testdata/conformance/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no conformance scenarios in testdata/conformance: %v", err)
	}
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".json")] = string(b)
	}
	return out
}

// TestConformance runs every scenario against the embedded server, or
// against the Elasticsearch at CHAPPER_ES_URL when it is set.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a search server")
	}
	remote := strings.TrimRight(os.Getenv("CHAPPER_ES_URL"), "/")
	scenarios := loadScenarios(t)
	names := make([]string, 0, len(scenarios))
	for n := range scenarios {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			prefix := fmt.Sprintf("ct%06d-", rand.IntN(1000000))
			raw := expandTemplates(scenarios[name], prefix, time.Now())
			var sc confScenario
			dec := json.NewDecoder(strings.NewReader(raw))
			dec.UseNumber()
			if err := dec.Decode(&sc); err != nil {
				t.Fatalf("parsing scenario %s: %v", name, err)
			}
			var base string
			var restart func()
			if remote != "" {
				base = remote
				t.Cleanup(func() { cleanupRemote(t, remote, prefix) })
			} else {
				dir := t.TempDir()
				s := startServer(t, dir)
				base = s.URL()
				restart = func() {
					if err := s.Close(); err != nil {
						t.Fatalf("closing server for restart: %v", err)
					}
					s = startServer(t, dir)
					base = s.URL()
				}
			}
			for i, st := range sc.Steps {
				label := fmt.Sprintf("step %d (%s)", i+1, st.Name)
				if st.Restart {
					if restart != nil {
						restart()
					}
					continue
				}
				if st.EmbeddedOnly && remote != "" {
					continue
				}
				if !runStep(t, base, label, st) {
					return
				}
			}
		})
	}
}

func runStep(t *testing.T, base, label string, st confStep) bool {
	t.Helper()
	var body []byte
	switch {
	case st.NDJSON != nil:
		var b bytes.Buffer
		for _, line := range st.NDJSON {
			if err := json.Compact(&b, line); err != nil {
				t.Fatalf("%s: bad ndjson line: %v", label, err)
			}
			b.WriteByte('\n')
		}
		body = b.Bytes()
	case len(st.Body) > 0:
		body = st.Body
	}
	status, resp, hdr := call(t, st.Method, base+st.Path, body)
	var problems []string
	if st.Status != 0 && status != st.Status {
		problems = append(problems, fmt.Sprintf("status %d, want %d", status, st.Status))
	}
	for k, v := range st.Headers {
		if got := hdr.Get(k); got != v {
			problems = append(problems, fmt.Sprintf("header %s = %q, want %q", k, got, v))
		}
	}
	for _, c := range st.BodyContains {
		if !strings.Contains(string(resp), c) {
			problems = append(problems, fmt.Sprintf("body does not contain %q", c))
		}
	}
	if len(st.Expect) > 0 {
		var want, got any
		d := json.NewDecoder(bytes.NewReader(st.Expect))
		d.UseNumber()
		if err := d.Decode(&want); err != nil {
			t.Fatalf("%s: bad expect: %v", label, err)
		}
		d = json.NewDecoder(bytes.NewReader(resp))
		d.UseNumber()
		if err := d.Decode(&got); err != nil {
			problems = append(problems, fmt.Sprintf("response is not JSON: %v", err))
		} else {
			problems = append(problems, matchJSON("$", want, got)...)
		}
	}
	if len(problems) > 0 {
		t.Errorf("%s: %s %s:\n  %s\n  response: %.3000s", label, st.Method, st.Path, strings.Join(problems, "\n  "), resp)
		return false
	}
	return true
}

// matchJSON compares got against the pattern want and lists mismatches.
func matchJSON(path string, want, got any) []string {
	if m, ok := want.(map[string]any); ok && len(m) == 1 {
		for op, arg := range m {
			if !strings.HasPrefix(op, "$") {
				break
			}
			return matchOperator(path, op, arg, got)
		}
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %s, want an object", path, short(got))}
		}
		var out []string
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			wv := w[k]
			if k == "$len" {
				n, _ := wv.(json.Number).Int64()
				if int64(len(g)) != n {
					out = append(out, fmt.Sprintf("%s: %d members, want %d", path, len(g), n))
				}
				continue
			}
			gv, present := g[k]
			if am, ok := wv.(map[string]any); ok && len(am) == 1 && am["$absent"] != nil {
				if present {
					out = append(out, fmt.Sprintf("%s.%s: present (%s), want absent", path, k, short(gv)))
				}
				continue
			}
			if !present {
				out = append(out, fmt.Sprintf("%s.%s: missing", path, k))
				continue
			}
			out = append(out, matchJSON(path+"."+k, wv, gv)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %s, want an array", path, short(got))}
		}
		if len(g) != len(w) {
			return []string{fmt.Sprintf("%s: %d elements, want %d: %s", path, len(g), len(w), short(got))}
		}
		var out []string
		for i := range w {
			out = append(out, matchJSON(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	case json.Number:
		gn, ok := got.(json.Number)
		if !ok {
			return []string{fmt.Sprintf("%s: got %s, want %s", path, short(got), w)}
		}
		wf, _ := w.Float64()
		gf, _ := gn.Float64()
		if wf != gf && math.Abs(wf-gf) > 1e-9*math.Max(math.Abs(wf), 1) {
			return []string{fmt.Sprintf("%s: got %s, want %s", path, gn, w)}
		}
		return nil
	default:
		if want != got {
			return []string{fmt.Sprintf("%s: got %s, want %s", path, short(got), short(want))}
		}
		return nil
	}
}

func matchOperator(path, op string, arg, got any) []string {
	switch op {
	case "$any":
		return nil
	case "$contains":
		s, ok := got.(string)
		if !ok || !strings.Contains(s, arg.(string)) {
			return []string{fmt.Sprintf("%s: got %s, want a string containing %q", path, short(got), arg)}
		}
		return nil
	case "$regex":
		s, ok := got.(string)
		if !ok || !regexp.MustCompile(arg.(string)).MatchString(s) {
			return []string{fmt.Sprintf("%s: got %s, want a string matching %q", path, short(got), arg)}
		}
		return nil
	case "$oneOf":
		for _, alt := range arg.([]any) {
			if len(matchJSON(path, alt, got)) == 0 {
				return nil
			}
		}
		return []string{fmt.Sprintf("%s: got %s, want one of %s", path, short(got), short(arg))}
	case "$len":
		n, _ := arg.(json.Number).Int64()
		switch g := got.(type) {
		case []any:
			if int64(len(g)) == n {
				return nil
			}
		case map[string]any:
			if int64(len(g)) == n {
				return nil
			}
		}
		return []string{fmt.Sprintf("%s: got %s, want length %d", path, short(got), n)}
	case "$unordered":
		w := arg.([]any)
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: got %s, want %d elements in any order", path, short(got), len(w))}
		}
		used := make([]bool, len(g))
	next:
		for _, we := range w {
			for i, ge := range g {
				if !used[i] && len(matchJSON(path, we, ge)) == 0 {
					used[i] = true
					continue next
				}
			}
			return []string{fmt.Sprintf("%s: no element matches %s in %s", path, short(we), short(got))}
		}
		return nil
	}
	return []string{fmt.Sprintf("%s: unknown pattern operator %s", path, op)}
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 400 {
		return string(b[:400]) + "..."
	}
	return string(b)
}

// cleanupRemote deletes the indices and templates a run created on a real
// cluster (wildcard deletes are refused by default there, so by name).
func cleanupRemote(t *testing.T, base, prefix string) {
	status, b, _ := call(t, http.MethodGet, base+"/"+prefix+"*", nil)
	if status == http.StatusOK {
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		for name := range m {
			call(t, http.MethodDelete, base+"/"+name, nil)
		}
	}
	status, b, _ = call(t, http.MethodGet, base+"/_index_template/"+prefix+"*", nil)
	if status == http.StatusOK {
		var m struct {
			IndexTemplates []struct {
				Name string `json:"name"`
			} `json:"index_templates"`
		}
		_ = json.Unmarshal(b, &m)
		for _, it := range m.IndexTemplates {
			call(t, http.MethodDelete, base+"/_index_template/"+it.Name, nil)
		}
	}
}
