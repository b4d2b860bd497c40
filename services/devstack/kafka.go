// Package devstack runs Chapper's embedded infrastructure: an in-process
// Kafka-protocol broker (franz-go's kfake), a private Postgres cluster, a
// private redis-server and the embedded search server. `chapper dev` and the
// tests of every module use it; production never does.
package devstack

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"

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
	// acknowledged record survives a crash of the process (SIGKILL).
	SyncWrites bool
}

// Kafka is a running embedded broker. It speaks the Kafka protocol, so
// kafka-go, kcat and any other client can use it.
type Kafka struct {
	cluster *kfake.Cluster
	addr    string
}

// StartKafka starts an embedded broker listening on cfg.Addr. Close stops it.
func StartKafka(cfg KafkaConfig) (*Kafka, error) {
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("parsing kafka listen address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("parsing kafka listen port %q: %w", portStr, err)
	}
	if port == 0 {
		if port, err = freePort(host); err != nil {
			return nil, err
		}
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
		return nil, fmt.Errorf("starting embedded kafka on %s: %w", cfg.Addr, err)
	}
	addr := c.ListenAddrs()[0]
	slog.Debug("embedded kafka started", "addr", addr, "data_dir", cfg.DataDir)
	return &Kafka{cluster: c, addr: addr}, nil
}

// Addr returns the broker's host:port.
func (k *Kafka) Addr() string { return k.addr }

// Close stops the broker, flushing its data directory. A broker started
// again on the same address and data directory has every acknowledged record.
func (k *Kafka) Close() error {
	k.cluster.Close()
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
