package query

import (
	"encoding/base64"
	"errors"
	"slices"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		chunk   int64
		cursors []cursor
	}{
		{name: "one", chunk: 2101715362, cursors: []cursor{{slot: 3, score: 1777629600000, id: "0196a1b2-0000-7000-8000-000000000001"}}},
		{name: "several", chunk: MaxChunk, cursors: []cursor{
			{slot: 0, score: 1, id: "a"}, {slot: 24, score: -5, id: "b"}, {slot: 7, score: 1 << 50, id: "c"},
		}},
		{name: "chunk 0", chunk: 0, cursors: []cursor{{slot: 1, score: 0, id: "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := encodeToken(tt.chunk, tt.cursors)
			got, err := decodeToken(tok, tt.chunk, 25)
			if err != nil {
				t.Fatalf("decodeToken: %v", err)
			}
			if !slices.Equal(got, tt.cursors) {
				t.Errorf("got %v, want %v", got, tt.cursors)
			}
		})
	}
	if tok := encodeToken(5, nil); tok != "" {
		t.Errorf("token without cursors = %q, want empty", tok)
	}
}

func TestTokenMalformed(t *testing.T) {
	good := encodeToken(42, []cursor{{slot: 3, score: 10, id: "abc"}})
	raw, _ := base64.RawURLEncoding.DecodeString(good)
	enc := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	tests := []struct {
		name  string
		token string
		chunk int64
		slots int
	}{
		{name: "not base64", token: "%%%", chunk: 42, slots: 25},
		{name: "empty bytes", token: enc(nil) + "A", chunk: 42, slots: 25},
		{name: "bad version", token: enc(append([]byte{9}, raw[1:]...)), chunk: 42, slots: 25},
		{name: "other chunk", token: good, chunk: 43, slots: 25},
		{name: "slot past the chunk", token: good, chunk: 42, slots: 3},
		{name: "truncated", token: enc(raw[:len(raw)-1]), chunk: 42, slots: 25},
		{name: "trailing bytes", token: enc(append(slices.Clone(raw), 0)), chunk: 42, slots: 25},
		{name: "duplicate slot", token: encodeToken(42, []cursor{{slot: 1, id: "a"}, {slot: 1, id: "b"}}), chunk: 42, slots: 25},
		{name: "empty id", token: encodeToken(42, []cursor{{slot: 1, id: ""}}), chunk: 42, slots: 25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeToken(tt.token, tt.chunk, tt.slots); !errors.Is(err, errToken) {
				t.Errorf("decodeToken = %v, want a malformed token error", err)
			}
		})
	}
}
