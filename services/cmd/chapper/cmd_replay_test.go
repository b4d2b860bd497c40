package main

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestReplayDeadletterErrors: bad flags of replay and deadletter are
// refused, naming the flag and the reason, before anything is contacted.
func TestReplayDeadletterErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
		is   error
	}{
		{name: "no sink", args: []string{"replay"}, want: "-sink: give one of timeline, persist, search"},
		{name: "bad from", args: []string{"replay", "-sink=timeline", "-from=yesterday"}, want: "-from: position must be"},
		{name: "bad offsets", args: []string{"replay", "-sink=timeline", "-from=votes/0:1"}, want: `"votes/0:1"`},
		{name: "bad kind", args: []string{"replay", "-sink=timeline", "-kinds=visits,votes"}, want: `-kinds: unknown kind "votes"`},
		{name: "bad bbox", args: []string{"replay", "-sink=timeline", "-bbox=1,2"}, want: "-bbox: bounding box"},
		{name: "persist rebuild", args: []string{"replay", "-sink=persist", "-rebuild"}, is: ErrNotImplemented},
		{name: "delete-old alone", args: []string{"replay", "-sink=timeline", "-delete-old"}, want: "-delete-old goes with -rebuild"},
		{name: "show without address", args: []string{"deadletter", "show"}, want: "give one address <partition>:<offset>"},
		{name: "redrive without -to", args: []string{"deadletter", "redrive", "3:4"}, want: "-to must be sink or origin"},
		{name: "unknown deadletter subcommand", args: []string{"deadletter", "purge"}, want: `unknown subcommand "purge"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.args, io.Discard, io.Discard)
			if err == nil || (tt.want != "" && !strings.Contains(err.Error(), tt.want)) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("chapper %s = %v, want an error containing %q", strings.Join(tt.args, " "), err, tt.want)
			}
		})
	}
}
