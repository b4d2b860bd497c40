package query

import "time"

// SetCacheTTL lets a test cache answers for longer than MaxCacheTTL, so that
// only an invalidation by news can make a new record visible.
func (s *Service) SetCacheTTL(d time.Duration) { s.cfg.CacheTTL = d }
