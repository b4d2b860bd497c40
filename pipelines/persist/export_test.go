package persist

// SetHooks installs the test seams of Write: afterInsert runs once every
// shard database holds the batch's rows uncommitted, before the lock check;
// beforeCommit after the lock check, before the commits. Either may be nil.
func (s *Sink) SetHooks(afterInsert, beforeCommit func()) {
	s.afterInsert, s.beforeCommit = afterInsert, beforeCommit
}
