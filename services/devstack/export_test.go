package devstack

import (
	"errors"
	"log/slog"
	"path/filepath"
)

// StartSearchOnly starts and stops the search server of a stack
// configured by cfg without its other servers, returning the start's
// error.
func StartSearchOnly(cfg StackConfig) error {
	s := &Stack{cfg: cfg, log: slog.Default(), searchDir: filepath.Join(cfg.Dir, "search"), searchAddr: cfg.SearchAddr}
	if cfg.SearchProcess {
		s.searchStats = newSearchStats()
	}
	err := s.StartSearch()
	return errors.Join(err, s.StopSearch())
}

// SearchMetricsAddr is where the running search child serves its own
// /metrics.
func (s *Stack) SearchMetricsAddr() string {
	s.searchMu.Lock()
	defer s.searchMu.Unlock()
	return s.searchMetricsAddr
}
