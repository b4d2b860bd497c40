package timeline

import (
	"errors"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want error
	}{
		{name: "defaults", cfg: Config{Redis: RedisConfig{Addrs: []string{"127.0.0.1:6379"}}}},
		{name: "prefix", cfg: Config{Prefix: "rebuild:", Redis: RedisConfig{Addrs: []string{"a"}}}},
		{name: "no redis", cfg: Config{}, want: ErrNoRedis},
		{name: "negative keep", cfg: Config{Keep: -1, Redis: RedisConfig{Addrs: []string{"a"}}}, want: ErrKeep},
		{name: "negative ttl", cfg: Config{TTL: -1, Redis: RedisConfig{Addrs: []string{"a"}}}, want: ErrTTL},
		{name: "hash tag in prefix", cfg: Config{Prefix: "{x}:", Redis: RedisConfig{Addrs: []string{"a"}}}, want: ErrPrefix},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); !errors.Is(err, tt.want) {
				t.Errorf("Validate() = %v, want %v", err, tt.want)
			}
		})
	}
}
