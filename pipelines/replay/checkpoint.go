package replay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// commit saves next (the next offset per partition) as the committed
// offsets of group, a group that never has members: a simple commit with
// generation -1, which Kafka (and kfake) accept for an empty group.
func commit(ctx context.Context, client *kafka.Client, group string, next map[Partition]int64) error {
	req := &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{}}
	for tp, o := range next {
		req.Topics[tp.Topic] = append(req.Topics[tp.Topic], kafka.OffsetCommit{Partition: tp.Partition, Offset: o})
	}
	resp, err := client.OffsetCommit(ctx, req)
	if err != nil {
		return fmt.Errorf("saving the replay checkpoint in group %s: %w", group, err)
	}
	for name, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return fmt.Errorf("saving the replay checkpoint of %s/%d in group %s: %w", name, p.Partition, group, p.Error)
			}
		}
	}
	return nil
}

// Checkpoint returns the next offset per partition that group saved, for
// the partitions that have one.
func Checkpoint(ctx context.Context, brokers []string, group string, parts []Partition) (map[Partition]int64, error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	req := &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{}}
	for _, tp := range parts {
		req.Topics[tp.Topic] = append(req.Topics[tp.Topic], tp.Partition)
	}
	resp, err := client.OffsetFetch(ctx, req)
	if err == nil {
		err = resp.Error
	}
	out := map[Partition]int64{}
	if errors.Is(err, kafka.GroupIdNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the replay checkpoint of group %s: %w", group, err)
	}
	for name, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("reading the replay checkpoint of %s/%d in group %s: %w", name, p.Partition, group, p.Error)
			}
			if p.CommittedOffset >= 0 {
				out[Partition{Topic: name, Partition: p.Partition}] = p.CommittedOffset
			}
		}
	}
	return out, nil
}

// DeleteCheckpoint deletes group (a replay's checkpoint). A group that does
// not exist is no error.
func DeleteCheckpoint(ctx context.Context, brokers []string, group string) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	resp, err := client.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return fmt.Errorf("deleting replay checkpoint group %s: %w", group, err)
	}
	if err := resp.Errors[group]; err != nil && !errors.Is(err, kafka.GroupIdNotFound) {
		return fmt.Errorf("deleting replay checkpoint group %s: %w", group, err)
	}
	return nil
}
