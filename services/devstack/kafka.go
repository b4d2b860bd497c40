// Package devstack runs Chapper's embedded infrastructure: an in-process
// Kafka-protocol broker (franz-go's kfake), a private Postgres cluster, a
// private redis-server and the embedded search server. `chapper dev` and the
// tests of every module use it; production never does.
package devstack

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// KafkaConfig configures the embedded broker.
type KafkaConfig struct {
	// Addr is the listen address, host:port. Port 0 picks a free port.
	Addr string
	// DataDir persists topics, offsets and groups across restarts; empty
	// keeps everything in memory.
	DataDir string
	// Partitions is the default partition count of auto-created topics.
	Partitions int
	// SyncWrites fsyncs every produced batch before acknowledging it, so an
	// acknowledged record survives a power cut too. Without it (the
	// default) each batch is still written to its segment and index files
	// (write(2), into the page cache) before the produce response is sent,
	// so a crash of the process (SIGKILL) loses nothing acknowledged; only
	// a power cut or kernel crash may lose the last moments, as with a
	// single real Kafka broker.
	SyncWrites bool
}

// Kafka is a running embedded broker. It speaks the Kafka protocol, so
// kafka-go, kcat and any other client can use it. The methods are safe for
// concurrent use.
type Kafka struct {
	cfg  KafkaConfig // Addr with the chosen port
	addr string

	mu      sync.Mutex
	cluster *kfake.Cluster // nil while stopped
	closed  bool
}

// StartKafka starts an embedded broker listening on cfg.Addr. Close stops it.
func StartKafka(cfg KafkaConfig) (*Kafka, error) {
	c, addr, err := newCluster(&cfg)
	if err != nil {
		return nil, err
	}
	return &Kafka{cfg: cfg, addr: addr, cluster: c}, nil
}

// newCluster starts a kfake cluster for cfg, fixing a port 0 in cfg.Addr to
// the one chosen.
func newCluster(cfg *KafkaConfig) (*kfake.Cluster, string, error) {
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, "", fmt.Errorf("parsing kafka listen address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, "", fmt.Errorf("parsing kafka listen port %q: %w", portStr, err)
	}
	if port == 0 {
		if port, err = freePort(host); err != nil {
			return nil, "", err
		}
		cfg.Addr = net.JoinHostPort(host, strconv.Itoa(port))
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
		}),
		kfake.ClusterID("chapper-dev"),
	}
	if cfg.Partitions > 0 {
		opts = append(opts, kfake.DefaultNumPartitions(cfg.Partitions))
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if cfg.SyncWrites {
		opts = append(opts, kfake.SyncWrites())
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, "", fmt.Errorf("starting embedded kafka on %s: %w", cfg.Addr, err)
	}
	addr := c.ListenAddrs()[0]
	slog.Debug("embedded kafka started", "addr", addr, "data_dir", cfg.DataDir)
	return c, addr, nil
}

// Addr returns the broker's host:port.
func (k *Kafka) Addr() string { return k.addr }

// Stop stops the broker, flushing its data directory; clients then get
// connection refused. Start brings it back on the same address. Without a
// DataDir the broker comes back empty. Stop on a stopped broker does
// nothing.
func (k *Kafka) Stop() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cluster != nil {
		k.cluster.Close()
		k.cluster = nil
	}
	return nil
}

// Start starts the broker again after Stop, on the same address and data
// directory: every record acknowledged before Stop is there. Start on a
// running broker does nothing; after Close it returns ErrClosed. ctx is
// unused today (the broker starts in-process) and kept for symmetry with
// Postgres and Redis.
func (k *Kafka) Start(_ context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return ErrClosed
	}
	if k.cluster != nil {
		return nil
	}
	cfg := k.cfg
	c, _, err := newCluster(&cfg)
	if err != nil {
		return err
	}
	k.cluster = c
	return nil
}

// Cluster returns the running kfake cluster (nil while stopped), for tests
// that inject faults or inspect groups.
func (k *Kafka) Cluster() *kfake.Cluster {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cluster
}

// Close stops the broker for good, flushing its data directory. A broker
// started again on the same address and data directory has every
// acknowledged record. Close is idempotent.
func (k *Kafka) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	if k.cluster != nil {
		k.cluster.Close()
		k.cluster = nil
	}
	return nil
}

// freePort asks the kernel for a free TCP port on host.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
