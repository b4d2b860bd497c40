package runtime

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrStuck is wrapped by Ready's error when a partition has records after
// its committed offset and no commit for longer than StuckAfter.
var ErrStuck = errors.New("partitions stuck")

// partitionHealth follows the partitions a consumer owns: where it
// committed, the high watermark seen at the latest fetch and when it last
// committed. It keeps the lag gauges (deleting those of partitions that
// moved away) and feeds the commit-age gauges. It is safe for concurrent
// use.
type partitionHealth struct {
	sink  string
	mu    sync.Mutex
	parts map[topicPartition]*partState
}

// partState is one owned partition. committed is the next offset to
// read as committed (or, before the first commit, the first offset
// fetched); -1 while unknown. hwm is -1 until the first fetch.
type partState struct {
	committed, hwm int64
	since          time.Time // the last commit, or when assigned
}

func newPartitionHealth(sink string) *partitionHealth {
	return &partitionHealth{sink: sink, parts: map[topicPartition]*partState{}}
}

// assign makes owned the partitions of a new generation, from now;
// partitions kept from the previous generation keep their state, the
// others are forgotten and their gauges deleted.
func (p *partitionHealth) assign(owned map[topicPartition]int64, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tp := range p.parts {
		if _, ok := owned[tp]; !ok {
			p.forget(tp)
		}
	}
	for tp, offset := range owned {
		if _, ok := p.parts[tp]; ok {
			continue
		}
		if offset < 0 {
			offset = -1 // FirstOffset: known at the first fetch
		}
		p.parts[tp] = &partState{committed: offset, hwm: -1, since: now}
	}
}

// releaseAll forgets every partition (the consumer left its group).
func (p *partitionHealth) releaseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tp := range p.parts {
		p.forget(tp)
	}
}

// forget deletes a partition and its gauge; p.mu is held.
func (p *partitionHealth) forget(tp topicPartition) {
	delete(p.parts, tp)
	lagRecords.DeleteLabelValues(p.sink, tp.topic, strconv.Itoa(tp.partition))
}

// fetched notes a record fetched at offset with the partition's high
// watermark.
func (p *partitionHealth) fetched(tp topicPartition, offset, hwm int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.parts[tp]
	if s == nil {
		return
	}
	if s.committed < 0 {
		s.committed = offset
	}
	s.hwm = max(s.hwm, hwm)
	p.setLag(tp, s)
}

// committedAt notes a commit of next (the next offset to read) at now.
func (p *partitionHealth) committedAt(tp topicPartition, next, hwm int64, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.parts[tp]
	if s == nil {
		return
	}
	s.committed, s.since = next, now
	s.hwm = max(s.hwm, hwm)
	p.setLag(tp, s)
}

func (p *partitionHealth) setLag(tp topicPartition, s *partState) {
	if s.hwm >= 0 && s.committed >= 0 {
		lagRecords.WithLabelValues(p.sink, tp.topic, strconv.Itoa(tp.partition)).Set(float64(max(s.hwm-s.committed, 0)))
	}
}

// stuck returns an error naming every partition with lag and no commit
// for longer than after (none when after is negative), or nil.
func (p *partitionHealth) stuck(now time.Time, after time.Duration) error {
	if after < 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var stuck []string
	for tp, s := range p.parts {
		if s.hwm < 0 || s.committed < 0 || s.hwm <= s.committed {
			continue
		}
		if age := now.Sub(s.since); age > after {
			stuck = append(stuck, fmt.Sprintf("%s (lag %d, no commit for %s)", tp, s.hwm-s.committed, age.Round(time.Second)))
		}
	}
	if len(stuck) == 0 {
		return nil
	}
	slices.Sort(stuck)
	return fmt.Errorf("%w: %s", ErrStuck, strings.Join(stuck, ", "))
}

// commitAges calls f with every owned partition's time since its last
// commit (or its assignment).
func (p *partitionHealth) commitAges(now time.Time, f func(tp topicPartition, age time.Duration)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tp, s := range p.parts {
		f(tp, now.Sub(s.since))
	}
}

// commitAgeCollector exports chapper_pipeline_commit_age_seconds for the
// partitions owned by every running consumer of the process.
type commitAgeCollector struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	set  map[*Consumer]struct{}
}

var commitAge = &commitAgeCollector{
	desc: prometheus.NewDesc("chapper_pipeline_commit_age_seconds",
		"Seconds since the consumer last committed the partition (or was assigned it); with lag above 0 a growing age means a stuck partition.",
		[]string{"sink", "topic", "partition"}, nil),
	set: map[*Consumer]struct{}{},
}

func init() { prometheus.MustRegister(commitAge) }

func (c *commitAgeCollector) add(k *Consumer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set[k] = struct{}{}
}

func (c *commitAgeCollector) remove(k *Consumer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.set, k)
}

// Describe implements prometheus.Collector.
func (c *commitAgeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *commitAgeCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.set {
		k.parts.commitAges(k.now(), func(tp topicPartition, age time.Duration) {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, age.Seconds(),
				k.sink.Name(), tp.topic, strconv.Itoa(tp.partition))
		})
	}
}
