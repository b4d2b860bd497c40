package search

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
)

// Errors returned by Config.Validate.
var (
	ErrNoAddresses = errors.New("no Elasticsearch address set")
	ErrIndexPrefix = errors.New("index prefix must be lower case letters, digits, '-' or '_', starting with a letter")
)

// Config configures the Elasticsearch client, the index names and the bulk
// indexer of the search sink. The report command uses the same connection
// settings.
type Config struct {
	// Addresses are the base URLs of the Elasticsearch nodes.
	Addresses []string
	// Username and Password authenticate with HTTP basic auth.
	Username string
	Password string
	// APIKey is a base64 Elasticsearch API key; it overrides Username/Password.
	APIKey string
	// CACertFile is a PEM file of certificate authorities to trust for https.
	CACertFile string
	// IndexPrefix starts every index, alias and template name:
	// <prefix>-<kind>-<yyyy.mm> behind the alias <prefix>-<kind>.
	IndexPrefix string
	// FlushBytes bounds the size of one _bulk request body.
	FlushBytes int
	// Workers is the number of _bulk requests one Write sends concurrently.
	Workers int
	// RequestTimeout bounds the wait for the response headers of one request.
	RequestTimeout time.Duration
	// ShardBits is N in 2^N logical shards, for the `shard` field.
	ShardBits uint
	// Logger receives the sink's logs; nil means slog.Default().
	Logger *slog.Logger

	// Generation and Fixed are not flags. With Fixed the sink writes
	// generation Generation only, without reading the generation control
	// document, and installs its templates without aliases: what a
	// rebuild's replay writes through. Without Fixed the sink follows the
	// control document and Generation is ignored.
	Generation string
	Fixed      bool
}

// RegisterFlags registers the configuration flags under prefix, for example
// `search.addresses`.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.Func(prefix+".addresses", "Comma-separated Elasticsearch URLs (default http://127.0.0.1:19200, the embedded search server).", func(s string) error {
		c.Addresses = splitList(s)
		return nil
	})
	if c.Addresses == nil {
		c.Addresses = []string{"http://127.0.0.1:19200"}
	}
	fs.StringVar(&c.Username, prefix+".username", "", "Elasticsearch user for basic authentication.")
	fs.StringVar(&c.Password, prefix+".password", "", "Elasticsearch password for basic authentication.")
	fs.StringVar(&c.APIKey, prefix+".api-key", "", "Elasticsearch API key (base64); overrides username and password.")
	fs.StringVar(&c.CACertFile, prefix+".ca-cert", "", "PEM file of certificate authorities to trust for https.")
	fs.StringVar(&c.IndexPrefix, prefix+".index-prefix", "canvass", "Prefix of index, alias and template names: <prefix>-<kind>-<yyyy.mm>, alias <prefix>-<kind>.")
	fs.IntVar(&c.FlushBytes, prefix+".flush-bytes", 5<<20, "Largest _bulk request body in bytes; a bigger batch is split.")
	fs.IntVar(&c.Workers, prefix+".workers", 1, "Concurrent _bulk requests per batch: each batch is spread over this many requests (1 sends one request per flush-bytes of batch).")
	fs.DurationVar(&c.RequestTimeout, prefix+".request-timeout", 30*time.Second, "Longest wait for the response to one Elasticsearch request.")
	fs.UintVar(&c.ShardBits, prefix+".shard-bits", 6, "Logical shards as a power of two (2^6 = 64), for the shard field; must match persist.")
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)

// Validate reports the first configuration error.
func (c *Config) Validate() error {
	if len(c.Addresses) == 0 {
		return ErrNoAddresses
	}
	if !prefixRE.MatchString(c.IndexPrefix) {
		return fmt.Errorf("%w: got %q", ErrIndexPrefix, c.IndexPrefix)
	}
	if c.FlushBytes < 1024 {
		return fmt.Errorf("search flush bytes must be at least 1024, got %d", c.FlushBytes)
	}
	if c.Workers < 1 {
		return fmt.Errorf("search workers must be at least 1, got %d", c.Workers)
	}
	if c.RequestTimeout <= 0 {
		return fmt.Errorf("search request timeout must be positive, got %s", c.RequestTimeout)
	}
	if c.ShardBits > 16 {
		return fmt.Errorf("search shard bits must be at most 16, got %d", c.ShardBits)
	}
	return nil
}

func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// NewClient returns an Elasticsearch client for cfg. It does not contact the
// server; the client checks on its first request that the server is
// Elasticsearch 8 (or speaks like it).
func NewClient(cfg Config) (*elasticsearch.Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   2 * cfg.Workers,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		ForceAttemptHTTP2:     true,
	}
	if cfg.CACertFile != "" {
		pem, err := os.ReadFile(cfg.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("reading Elasticsearch CA certificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificate in %s", cfg.CACertFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	es, err := elasticsearch.NewClient(elasticsearch.Config{
		Addresses: cfg.Addresses,
		Username:  cfg.Username,
		Password:  cfg.Password,
		APIKey:    cfg.APIKey,
		Transport: tr,
		// The consumer runtime retries a failed batch with its own backoff;
		// the client retries only briefly, for one lost connection or node.
		MaxRetries:   2,
		RetryBackoff: func(attempt int) time.Duration { return time.Duration(attempt) * 100 * time.Millisecond },
	})
	if err != nil {
		return nil, fmt.Errorf("creating Elasticsearch client: %w", err)
	}
	return es, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
