package devstack

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/chapper/chapper/services/devstack/search"
)

// Databases of the dev cluster: the PL/Proxy router and two shard
// databases holding the logical shards (DESIGN.md, storage).
var stackDatabases = []string{"chapper_router", "chapper_shard_0", "chapper_shard_1"}

// StackConfig configures dev mode's embedded stack.
type StackConfig struct {
	// Dir holds every server's data: Dir/kafka, Dir/pg, Dir/redis,
	// Dir/search.
	Dir string
	// KafkaAddr is the embedded broker's listen address.
	KafkaAddr string
	// PostgresAddr is the Postgres cluster's listen address.
	PostgresAddr string
	// RedisAddr is the redis-server's listen address.
	RedisAddr string
	// SearchAddr is the embedded search server's listen address.
	SearchAddr string
	// Partitions is the partition count of topics created with the
	// broker's default.
	Partitions int
	// KafkaFsync fsyncs every produced batch before the broker
	// acknowledges it (KafkaConfig.SyncWrites). Off by default: each batch
	// is written to its files before the ack, which a process crash cannot
	// undo; only a power cut can lose the last moments.
	KafkaFsync bool
	// Logger receives the servers' start/stop events; nil means
	// slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers the stack's flags under prefix, e.g. dev.dir,
// dev.kafka-addr, dev.postgres-addr, dev.redis-addr, dev.partitions,
// dev.kafka-fsync.
func (c *StackConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Dir, prefix+".dir", "var", "Directory of the embedded stack's data (kafka/, pg/, redis/, search/); kept across runs.")
	fs.StringVar(&c.KafkaAddr, prefix+".kafka-addr", "127.0.0.1:19092", "Listen address of the embedded Kafka broker.")
	fs.StringVar(&c.PostgresAddr, prefix+".postgres-addr", "127.0.0.1:15432", "Listen address of the private Postgres cluster.")
	fs.StringVar(&c.RedisAddr, prefix+".redis-addr", "127.0.0.1:16379", "Listen address of the private redis-server.")
	fs.StringVar(&c.SearchAddr, prefix+".search-addr", "127.0.0.1:19200", "Listen address of the embedded search server (Elasticsearch API subset).")
	fs.IntVar(&c.Partitions, prefix+".partitions", 12, "Partitions of topics created with the broker's default.")
	fs.BoolVar(&c.KafkaFsync, prefix+".kafka-fsync", false, "Fsync every produced batch before the embedded broker acknowledges it (survives a power cut; much slower). Without it each batch is written to its files before the ack, which survives a crash of chapper.")
}

// ErrStackConfig reports an incomplete StackConfig.
var ErrStackConfig = errors.New("embedded stack configuration incomplete")

// Validate reports a missing directory or address or a non-positive
// partition count.
func (c *StackConfig) Validate() error {
	switch {
	case c.Dir == "":
		return fmt.Errorf("%w: no data directory", ErrStackConfig)
	case c.KafkaAddr == "", c.PostgresAddr == "", c.RedisAddr == "", c.SearchAddr == "":
		return fmt.Errorf("%w: kafka, postgres, redis and search addresses are all required", ErrStackConfig)
	case c.Partitions <= 0:
		return fmt.Errorf("%w: partitions must be positive, got %d", ErrStackConfig, c.Partitions)
	}
	return nil
}

// Stack is dev mode's embedded stack, every server's data under one
// directory.
type Stack struct {
	// Kafka is the embedded broker; it writes every produced batch to its
	// files before acknowledging it, so an acknowledged record survives a
	// SIGKILL of chapper (and a power cut with StackConfig.KafkaFsync).
	Kafka *Kafka
	// Postgres is the private cluster with the databases chapper_router,
	// chapper_shard_0 and chapper_shard_1.
	Postgres *Postgres
	// Redis is the private redis-server (append-only file on).
	Redis *Redis
	// Search is the embedded search server, serving the Elasticsearch API
	// subset Chapper uses.
	Search *search.Server

	searchDir, searchAddr string
	log                   *slog.Logger
	stopSearch            context.CancelFunc
	searchDone            chan error
}

// StartStack starts the embedded stack under cfg.Dir (made absolute):
// Kafka at Dir/kafka, Postgres at Dir/pg with the dev databases and Redis
// at Dir/redis. Servers left running in Dir by a crashed run are restarted,
// stale pid files are handled, and Kafka keeps every acknowledged record.
// When running as root, the parents of Dir get the search bit where the
// postgres user lacks it (logged). On error, whatever started is stopped.
func StartStack(ctx context.Context, cfg StackConfig) (*Stack, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolving the stack directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the stack directory: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Stack{log: log}
	s.Kafka, err = StartKafka(KafkaConfig{
		Addr:       cfg.KafkaAddr,
		DataDir:    filepath.Join(dir, "kafka"),
		Partitions: cfg.Partitions,
		SyncWrites: cfg.KafkaFsync,
	})
	if err != nil {
		return nil, err
	}
	log.Info("embedded kafka started", "addr", s.Kafka.Addr(), "data_dir", filepath.Join(dir, "kafka"), "fsync", cfg.KafkaFsync)

	// Postgres and Redis start side by side: initdb dominates a first run.
	var wg sync.WaitGroup
	var pgErr, redisErr error
	wg.Go(func() {
		s.Postgres, pgErr = StartPostgres(ctx, PostgresConfig{
			DataDir:   filepath.Join(dir, "pg"),
			Addr:      cfg.PostgresAddr,
			Databases: stackDatabases,
			Logger:    log,
		})
	})
	wg.Go(func() {
		s.Redis, redisErr = StartRedis(ctx, RedisConfig{
			DataDir: filepath.Join(dir, "redis"),
			Addr:    cfg.RedisAddr,
			Logger:  log,
		})
	})
	wg.Wait()

	if err := errors.Join(pgErr, redisErr); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	s.searchDir, s.searchAddr = filepath.Join(dir, "search"), cfg.SearchAddr
	if err := s.StartSearch(); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// StartSearch opens the search server's data, binds its address and serves
// it in the background until StopSearch or Close. StartStack calls it;
// fault tests call it again after StopSearch, on the same address (a port
// 0 in StackConfig.SearchAddr is fixed at the first start). It does nothing
// while the server runs.
func (s *Stack) StartSearch() error {
	if s.stopSearch != nil {
		return nil
	}
	srv, err := search.New(search.Config{DataDir: s.searchDir, Addr: s.searchAddr, Logger: s.log})
	if err != nil {
		return err
	}
	addr, err := srv.Listen()
	if err != nil {
		return errors.Join(err, srv.Close())
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.Search, s.stopSearch, s.searchDone = srv, cancel, make(chan error, 1)
	s.searchAddr = addr
	go func() { s.searchDone <- srv.Run(ctx) }()
	return nil
}

// StopSearch stops the search server, keeping its data; clients then get
// connection refused until StartSearch. It does nothing when stopped.
func (s *Stack) StopSearch() error {
	if s.stopSearch == nil {
		return nil
	}
	s.stopSearch()
	err := <-s.searchDone
	s.stopSearch = nil
	return err
}

// Close stops every server of the stack in reverse start order, keeping
// their data, and returns the errors joined. Close is idempotent.
func (s *Stack) Close() error {
	errs := []error{s.StopSearch()}
	if s.Redis != nil {
		errs = append(errs, s.Redis.Close())
	}
	if s.Postgres != nil {
		errs = append(errs, s.Postgres.Close())
	}
	if s.Kafka != nil {
		errs = append(errs, s.Kafka.Close())
	}
	return errors.Join(errs...)
}
