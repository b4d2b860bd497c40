package search

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

func (s *Server) info() obj {
	host, _ := os.Hostname()
	return obj{
		{"name", host},
		{"cluster_name", "chapper"},
		{"cluster_uuid", s.clusterUUID},
		{"version", obj{
			{"number", Version},
			{"build_flavor", "default"},
			{"build_type", "chapper-embedded"},
			{"build_hash", "chapper"},
			{"build_date", "2024-08-05T10:05:34.233336849Z"},
			{"build_snapshot", false},
			{"lucene_version", "9.11.1"},
			{"minimum_wire_compatibility_version", "7.17.0"},
			{"minimum_index_compatibility_version", "7.0.0"},
		}},
		{"tagline", "You Know, for Search"},
	}
}

// handleHealth answers GET /_cluster/health: one node, always green.
func (s *Server) handleHealth(req *request) *esError {
	s.mu.RLock()
	n := len(s.indices)
	s.mu.RUnlock()
	req.ok(obj{
		{"cluster_name", "chapper"}, {"status", "green"}, {"timed_out", false},
		{"number_of_nodes", 1}, {"number_of_data_nodes", 1},
		{"active_primary_shards", n}, {"active_shards", n}, {"relocating_shards", 0},
		{"initializing_shards", 0}, {"unassigned_shards", 0}, {"delayed_unassigned_shards", 0},
		{"number_of_pending_tasks", 0}, {"number_of_in_flight_fetch", 0},
		{"task_max_waiting_in_queue_millis", 0}, {"active_shards_percent_as_number", 100.0},
	})
	return nil
}

// handleCatIndices answers GET /_cat/indices[/<index>].
func (s *Server) handleCatIndices(req *request) *esError {
	list, release, err := s.open(req.arg("index"), resolveOpts{allowNoIndices: true})
	if err != nil {
		return err
	}
	defer release()
	header := []string{"health", "status", "index", "uuid", "pri", "rep", "docs.count", "docs.deleted", "store.size", "pri.store.size"}
	var rows [][]string
	for _, ix := range list {
		var count uint64
		if r, rerr := ix.ii.Reader(); rerr == nil {
			count, _ = r.DocCount()
			r.Close()
		}
		size := dirSize(ix.dir)
		rows = append(rows, []string{"green", "open", ix.name, ix.uuid, "1", "0", strconv.FormatUint(count, 10), "0", humanBytes(size), humanBytes(size)})
	}
	req.catTable(header, rows)
	return nil
}

// handleCatAliases answers GET /_cat/aliases[/<name>].
func (s *Server) handleCatAliases(req *request) *esError {
	target := req.arg("name")
	header := []string{"alias", "index", "filter", "routing.index", "routing.search", "is_write_index"}
	var rows [][]string
	s.mu.RLock()
	for _, ix := range s.indices {
		for a, m := range ix.aliases {
			if target != "" && !globMatch(target, a) {
				continue
			}
			w := "-"
			if m.IsWriteIndex != nil {
				w = strconv.FormatBool(*m.IsWriteIndex)
			}
			filter := "-"
			if m.Filter != nil {
				filter = "*"
			}
			rows = append(rows, []string{a, ix.name, filter, "-", "-", w})
		}
	}
	s.mu.RUnlock()
	sort.Slice(rows, func(i, j int) bool { return rows[i][0]+rows[i][1] < rows[j][0]+rows[j][1] })
	req.catTable(header, rows)
	return nil
}

// catTable answers a _cat call: JSON objects with ?format=json, else
// aligned text (with a header line for ?v).
func (req *request) catTable(header []string, rows [][]string) {
	if req.params.Get("format") == "json" {
		out := make([]any, 0, len(rows))
		for _, r := range rows {
			o := obj{}
			for i, h := range header {
				o = append(o, kv{h, r[i]})
			}
			out = append(out, o)
		}
		req.ok(out)
		return
	}
	var b strings.Builder
	if _, ok := req.params["v"]; ok {
		rows = append([][]string{header}, rows...)
	}
	widths := make([]int, len(header))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, r := range rows {
		for i, c := range r {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(c + strings.Repeat(" ", widths[i]-len(c)))
		}
		b.WriteByte('\n')
	}
	req.status = http.StatusOK
	req.w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	req.w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(req.w, b.String())
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, ierr := d.Info(); ierr == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fgb", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fmb", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fkb", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%db", n)
}
