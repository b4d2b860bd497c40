package shardmap

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// ErrConninfo is returned for a connection string that cannot be parsed.
var ErrConninfo = errors.New("invalid connection string")

// Conninfo returns s, a libpq connection URL (postgres://...) or a
// key=value connection string, as a key=value connection string with its
// keys in a stable order. PL/Proxy appends its own settings to the strings
// it gets from the shard map, which breaks URLs, so the map stores this form;
// pgx reads it as well.
func Conninfo(s string) (string, error) {
	kv, err := parseConn(s)
	if err != nil {
		return "", err
	}
	return formatKV(kv), nil
}

// WithDatabase returns the connection string s (URL or key=value) as a
// key=value string that names database db instead.
func WithDatabase(s, db string) (string, error) {
	kv, err := parseConn(s)
	if err != nil {
		return "", err
	}
	kv["dbname"] = db
	return formatKV(kv), nil
}

// DatabaseName returns the dbname of connection string s ("" when unset).
func DatabaseName(s string) (string, error) {
	kv, err := parseConn(s)
	if err != nil {
		return "", err
	}
	return kv["dbname"], nil
}

func parseConn(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return parseURL(s)
	}
	return parseKV(s)
}

// parseURL reads a single-host libpq URL.
func parseURL(s string) (map[string]string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConninfo, err)
	}
	if strings.Contains(u.Host, ",") {
		return nil, fmt.Errorf("%w: multi-host URLs are not supported: %s", ErrConninfo, redact(u))
	}
	kv := map[string]string{}
	if h := u.Hostname(); h != "" {
		kv["host"] = h
	}
	if p := u.Port(); p != "" {
		kv["port"] = p
	}
	if u.User != nil {
		if n := u.User.Username(); n != "" {
			kv["user"] = n
		}
		if pw, ok := u.User.Password(); ok {
			kv["password"] = pw
		}
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		kv["dbname"] = db
	}
	for k, vs := range u.Query() {
		if len(vs) > 0 {
			kv[k] = vs[len(vs)-1]
		}
	}
	return kv, nil
}

func redact(u *url.URL) string {
	c := *u
	if c.User != nil {
		if _, ok := c.User.Password(); ok {
			c.User = url.UserPassword(c.User.Username(), "xxxxx")
		}
	}
	return c.String()
}

// parseKV reads a libpq key=value string: values may be single-quoted, with
// \' and \\ escapes.
func parseKV(s string) (map[string]string, error) {
	kv := map[string]string{}
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			return kv, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if key == "" || i == len(s) || s[i] != '=' {
			return nil, fmt.Errorf("%w: expected key=value at %q", ErrConninfo, s[start:])
		}
		i++
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				i++
				if c == '\'' {
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return nil, fmt.Errorf("%w: unterminated quoted value for %s", ErrConninfo, key)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		kv[key] = val.String()
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// keyOrder puts the common keys first so equal settings give equal strings
// (PL/Proxy shares one connection among partitions with equal strings).
var keyOrder = map[string]int{"host": 0, "port": 1, "user": 2, "password": 3, "dbname": 4}

func formatKV(kv map[string]string) string {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		oi, iok := keyOrder[keys[i]]
		oj, jok := keyOrder[keys[j]]
		switch {
		case iok && jok:
			return oi < oj
		case iok != jok:
			return iok
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + quote(kv[k])
	}
	return strings.Join(parts, " ")
}

func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r'\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}
