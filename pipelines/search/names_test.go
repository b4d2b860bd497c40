package search_test

import (
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/proto/topic"
)

// TestNames: the first generation keeps the names Chapper always had; a
// rebuild's generation has its own, and Owns tells the two apart although
// the first generation's pattern matches both.
func TestNames(t *testing.T) {
	at := time.Date(2026, 11, 30, 23, 59, 0, 0, time.FixedZone("east", 3600))
	first := search.Names{Prefix: "canvass"}
	gen := search.Names{Prefix: "canvass", Generation: "g20261202t022734"}
	tests := []struct {
		name                      string
		got, want                 string
		firstOwns, generationOwns bool
	}{
		{name: "first index", got: first.Index(topic.KindVisits, at), want: "canvass-visits-2026.11", firstOwns: true},
		{name: "generation index", got: gen.Index(topic.KindVisits, at), want: "canvass-visits-g20261202t022734-2026.11", generationOwns: true},
		{name: "first template", got: first.Template(topic.KindIntentions), want: "canvass-intentions"},
		{name: "generation template", got: gen.Template(topic.KindIntentions), want: "canvass-intentions-g20261202t022734"},
		{name: "first pattern", got: first.Pattern(topic.KindFollowups), want: "canvass-followups-*"},
		{name: "generation pattern", got: gen.Pattern(topic.KindFollowups), want: "canvass-followups-g20261202t022734-*"},
		{name: "alias is the same", got: gen.Alias(topic.KindVisits), want: first.Alias(topic.KindVisits)},
		{name: "first ledger", got: first.Ledger(), want: "canvass-corrections"},
		{name: "generation ledger", got: gen.Ledger(), want: "canvass-corrections-g20261202t022734"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %q, want %q", tt.got, tt.want)
			}
			if tt.firstOwns || tt.generationOwns {
				if f, g := first.Owns(topic.KindVisits, tt.got), gen.Owns(topic.KindVisits, tt.got); f != tt.firstOwns || g != tt.generationOwns {
					t.Errorf("first owns %s: %v, generation owns it: %v; want %v, %v", tt.got, f, g, tt.firstOwns, tt.generationOwns)
				}
			}
		})
	}
	for _, bad := range []string{"G1", "g-1", "x2026", "g2026.1"} {
		if err := search.CheckGeneration(bad); err == nil {
			t.Errorf("CheckGeneration(%q) = nil, want an error", bad)
		}
	}
}
