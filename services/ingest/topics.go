package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/chapper/chapper/proto/topic"
	"github.com/segmentio/kafka-go"
)

// ErrTopicMissing is returned while a topic does not exist and ingest is not
// configured to create it.
var ErrTopicMissing = errors.New("topic missing")

// ensureTopics creates the missing topics of topic.All (when configured to)
// and checks that every one of them exists with at least one partition.
func (s *Service) ensureTopics(ctx context.Context) error {
	if s.cfg.CreateTopics {
		req := &kafka.CreateTopicsRequest{}
		for _, t := range topic.All {
			req.Topics = append(req.Topics, kafka.TopicConfig{
				Topic:             t,
				NumPartitions:     s.cfg.TopicPartitions,
				ReplicationFactor: s.cfg.ReplicationFactor,
				ConfigEntries:     topicConfig(s.cfg),
			})
		}
		resp, err := s.client.CreateTopics(ctx, req)
		if err != nil {
			return fmt.Errorf("creating topics: %w", err)
		}
		for t, err := range resp.Errors {
			if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
				return fmt.Errorf("creating topic %s: %w", t, err)
			}
		}
	}
	meta, err := s.client.Metadata(ctx, &kafka.MetadataRequest{Topics: topic.All})
	if err != nil {
		return fmt.Errorf("reading topic metadata: %w", err)
	}
	found := make(map[string]bool, len(topic.All))
	for _, t := range meta.Topics {
		if t.Error != nil {
			return fmt.Errorf("reading metadata of topic %s: %w", t.Name, t.Error)
		}
		found[t.Name] = len(t.Partitions) > 0
	}
	for _, t := range topic.All {
		if !found[t] {
			return fmt.Errorf("%w: %s", ErrTopicMissing, t)
		}
	}
	s.warnShortRetention(ctx)
	return nil
}

// retentionMs returns the configured retention.ms: -1 (forever) for 0.
func retentionMs(cfg Config) int64 {
	if cfg.TopicRetentionMs == 0 {
		return -1
	}
	return cfg.TopicRetentionMs
}

// topicConfig returns the settings of a topic created at start-up:
// retention.ms as configured (forever by default), and
// min.insync.replicas=2 when there are at least three replicas, so that an
// acks=all produce survives the loss of one broker without acknowledging a
// record held by one replica alone.
func topicConfig(cfg Config) []kafka.ConfigEntry {
	entries := []kafka.ConfigEntry{{ConfigName: "retention.ms", ConfigValue: strconv.FormatInt(retentionMs(cfg), 10)}}
	if cfg.ReplicationFactor >= 3 {
		entries = append(entries, kafka.ConfigEntry{ConfigName: "min.insync.replicas", ConfigValue: "2"})
	}
	return entries
}

// shorterRetention returns the topics whose retention.ms is shorter than
// configured, with their retention. A broker that cannot describe configs
// yields an error.
func (s *Service) shorterRetention(ctx context.Context) (map[string]int64, error) {
	req := &kafka.DescribeConfigsRequest{}
	for _, t := range topic.All {
		req.Resources = append(req.Resources, kafka.DescribeConfigRequestResource{
			ResourceType: kafka.ResourceTypeTopic, ResourceName: t, ConfigNames: []string{"retention.ms"},
		})
	}
	resp, err := s.client.DescribeConfigs(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("describing topic configs: %w", err)
	}
	want := retentionMs(s.cfg)
	out := map[string]int64{}
	for _, r := range resp.Resources {
		if r.Error != nil {
			return nil, fmt.Errorf("describing config of topic %s: %w", r.ResourceName, r.Error)
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName != "retention.ms" {
				continue
			}
			got, err := strconv.ParseInt(e.ConfigValue, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("topic %s: retention.ms %q is not a number", r.ResourceName, e.ConfigValue)
			}
			if got >= 0 && (want < 0 || got < want) {
				out[r.ResourceName] = got
			}
		}
	}
	return out, nil
}

// warnShortRetention logs a warning naming every topic whose retention is
// shorter than configured: records past it can no longer be replayed.
func (s *Service) warnShortRetention(ctx context.Context) {
	short, err := s.shorterRetention(ctx)
	if err != nil {
		s.log.Warn("cannot check topic retention", "err", err)
		return
	}
	for t, ms := range short {
		s.log.Warn("topic retention is shorter than configured: older records cannot be replayed",
			"topic", t, "retention_ms", ms, "configured_retention_ms", retentionMs(s.cfg))
	}
}
