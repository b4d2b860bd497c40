package ingest

import (
	"context"
	"errors"
	"fmt"

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
	return nil
}
