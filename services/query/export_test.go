package query

import "time"

// SetCacheTTL lets a test cache answers for longer than MaxCacheTTL, so that
// only an invalidation by news can make a new record visible.
func (s *Service) SetCacheTTL(d time.Duration) { s.cfg.CacheTTL = d }

// Subscriptions returns the number of chunks the service keeps a news
// subscription for, and the number of SUBSCRIBE/UNSUBSCRIBE commands queued.
func (s *Service) Subscriptions() (chunks, queued int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.chunks), len(s.ops)
}
