package ingest

import (
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// TestTopicSettings: topics created at start-up keep records forever
// (retention.ms=-1) unless configured otherwise, and an existing topic
// with a shorter retention is found (and named in a warning).
func TestTopicSettings(t *testing.T) {
	k := devtest.Kafka(t)
	transport := &kafka.Transport{}
	t.Cleanup(transport.CloseIdleConnections) // its pooled connections hold goroutines
	client := &kafka.Client{Addr: kafka.TCP(k.Addr()), Transport: transport}
	ctx := testCtx(t, time.Minute)
	// An operator created the follow-ups topic by hand with one day.
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic.Followups, NumPartitions: 2, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "retention.ms", ConfigValue: "86400000"}},
	}}})
	if err != nil || resp.Errors[topic.Followups] != nil {
		t.Fatalf("creating topic: %v %v", err, resp)
	}
	r := startIngest(t, k.Addr())

	got := retention(t, client, topic.Visits, topic.Followups)
	if got[topic.Visits] != "-1" {
		t.Errorf("%s created with retention.ms=%q, want -1", topic.Visits, got[topic.Visits])
	}
	short, err := r.svc.shorterRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(short) != 1 || short[topic.Followups] != 86400000 {
		t.Errorf("shorter retention = %v, want only %s (86400000)", short, topic.Followups)
	}

	tests := []struct {
		name string
		cfg  Config
		want map[string]string
	}{
		{name: "default", cfg: Config{ReplicationFactor: 1}, want: map[string]string{"retention.ms": "-1"}},
		{name: "one week", cfg: Config{ReplicationFactor: 1, TopicRetentionMs: 604800000}, want: map[string]string{"retention.ms": "604800000"}},
		{name: "three replicas", cfg: Config{ReplicationFactor: 3}, want: map[string]string{"retention.ms": "-1", "min.insync.replicas": "2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{}
			for _, e := range topicConfig(tt.cfg) {
				got[e.ConfigName] = e.ConfigValue
			}
			if len(got) != len(tt.want) {
				t.Fatalf("topic config = %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func retention(t testing.TB, client *kafka.Client, topics ...string) map[string]string {
	t.Helper()
	req := &kafka.DescribeConfigsRequest{}
	for _, name := range topics {
		req.Resources = append(req.Resources, kafka.DescribeConfigRequestResource{
			ResourceType: kafka.ResourceTypeTopic, ResourceName: name, ConfigNames: []string{"retention.ms"}})
	}
	resp, err := client.DescribeConfigs(testCtx(t, 30*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range resp.Resources {
		for _, e := range r.ConfigEntries {
			out[r.ResourceName] = e.ConfigValue
		}
	}
	return out
}
