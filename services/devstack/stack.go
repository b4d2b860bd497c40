package devstack

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/chapper/chapper/services/devstack/search"
)

// Databases of the dev cluster: the PL/Proxy router and two shard
// databases holding the logical shards (DESIGN.md, storage).
var stackDatabases = []string{"chapper_router", "chapper_shard_0", "chapper_shard_1"}

// StackConfig configures dev mode's embedded stack.
type StackConfig struct {
	// Dir holds every server's data: Dir/kafka, Dir/pg, Dir/redis,
	// Dir/redis-ids, Dir/search.
	Dir string
	// KafkaAddr is the embedded broker's listen address.
	KafkaAddr string
	// PostgresAddr is the Postgres cluster's listen address.
	PostgresAddr string
	// RedisAddr is the redis-server's listen address.
	RedisAddr string
	// IDsRedisAddr is the listen address of a second redis-server, for
	// ingest's shared id store alone, so that a Submit's claims never wait
	// behind the timeline's scripts (a whole batch of several hundred
	// records holds Redis for tens of milliseconds); empty starts none,
	// and the id store shares the first.
	IDsRedisAddr string
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
	// SearchProcess runs the search server as a child process
	// (SearchCommand) at nice SearchNice instead of inside this process,
	// so that the parts that acknowledge records get the CPU before
	// indexing does. Stack.Search is then nil: use Stack.SearchAddr.
	SearchProcess bool
	// SearchNice is the search child's nice value, 0 (as this process) to
	// 19 (only idle CPU); with SearchProcess only.
	SearchNice int
	// SearchCommand is the search child's command line before its flags;
	// nil runs this executable with the argument SearchServerCommand
	// (chapper and test binaries run through devtest.Main answer it).
	SearchCommand []string
	// Logger receives the servers' start/stop events; nil means
	// slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers the stack's flags under prefix, e.g. dev.dir,
// dev.kafka-addr, dev.postgres-addr, dev.redis-addr, dev.ids-redis-addr, dev.partitions,
// dev.kafka-fsync, dev.search-process, dev.search-nice.
func (c *StackConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Dir, prefix+".dir", "var", "Directory of the embedded stack's data (kafka/, pg/, redis/, redis-ids/, search/); kept across runs.")
	fs.StringVar(&c.KafkaAddr, prefix+".kafka-addr", "127.0.0.1:19092", "Listen address of the embedded Kafka broker.")
	fs.StringVar(&c.PostgresAddr, prefix+".postgres-addr", "127.0.0.1:15432", "Listen address of the private Postgres cluster.")
	fs.StringVar(&c.RedisAddr, prefix+".redis-addr", "127.0.0.1:16379", "Listen address of the private redis-server.")
	fs.StringVar(&c.IDsRedisAddr, prefix+".ids-redis-addr", "127.0.0.1:16380", "Listen address of a second private redis-server, for ingest's shared id store alone, so that acknowledgements never wait behind the timeline's scripts; empty shares -"+prefix+".redis-addr.")
	fs.StringVar(&c.SearchAddr, prefix+".search-addr", "127.0.0.1:19200", "Listen address of the embedded search server (Elasticsearch API subset).")
	fs.IntVar(&c.Partitions, prefix+".partitions", 12, "Partitions of topics created with the broker's default.")
	fs.BoolVar(&c.KafkaFsync, prefix+".kafka-fsync", false, "Fsync every produced batch before the embedded broker acknowledges it (survives a power cut; much slower). Without it each batch is written to its files before the ack, which survives a crash of chapper.")
	fs.BoolVar(&c.SearchProcess, prefix+".search-process", true, "Run the embedded search server as a child process at -"+prefix+".search-nice, so ingest, the broker and the pipelines get the CPU before indexing does; false runs it inside this process.")
	fs.IntVar(&c.SearchNice, prefix+".search-nice", 10, "Nice value (0-19; higher yields the CPU more) of the search server's child process (-"+prefix+".search-process).")
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
	case c.SearchProcess && (c.SearchNice < 0 || c.SearchNice > 19):
		return fmt.Errorf("%w: search nice must be 0 to 19 (raising priority needs privileges), got %d", ErrStackConfig, c.SearchNice)
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
	// IDs is the second private redis-server, for ingest's id store
	// (StackConfig.IDsRedisAddr); nil when none was asked for.
	IDs *Redis
	// Search is the embedded search server, serving the Elasticsearch API
	// subset Chapper uses, when it runs inside this process; nil when it
	// runs as a child (StackConfig.SearchProcess). SearchAddr works in both
	// cases.
	Search *search.Server

	cfg                   StackConfig
	searchDir, searchAddr string
	log                   *slog.Logger

	// lifeMu serialises starting and stopping the search server
	// (StartSearch, StopSearch, the supervisor's restarts); searchAddr is
	// written with lifeMu and searchMu held.
	lifeMu            sync.Mutex
	searchMu          sync.Mutex // guards the search server's fields below and searchAddr, held briefly
	stopSearch        context.CancelFunc
	searchDone        chan error
	searchProc        *child
	searchStarted     time.Time          // when searchProc got ready
	searchMetricsAddr string             // where searchProc serves /metrics
	stopSupervise     context.CancelFunc // ends the child's supervisor; nil when none runs
	superviseDone     chan struct{}      // closed once that supervisor returned
	searchStats       *searchStats       // with SearchProcess only
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
	s := &Stack{cfg: cfg, log: log}
	if cfg.SearchProcess {
		s.searchStats = newSearchStats()
	}
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
	var pgErr, redisErr, idsErr error
	wg.Go(func() {
		s.Postgres, pgErr = StartPostgres(ctx, PostgresConfig{
			DataDir:   filepath.Join(dir, "pg"),
			Addr:      cfg.PostgresAddr,
			Databases: stackDatabases,
			Logger:    log,
		})
	})
	startRedis := func(sub, addr string) (*Redis, error) {
		return StartRedis(ctx, RedisConfig{DataDir: filepath.Join(dir, sub), Addr: addr, Logger: log})
	}
	wg.Go(func() { s.Redis, redisErr = startRedis("redis", cfg.RedisAddr) })
	if cfg.IDsRedisAddr != "" {
		wg.Go(func() { s.IDs, idsErr = startRedis("redis-ids", cfg.IDsRedisAddr) })
	}
	wg.Wait()

	if err := errors.Join(pgErr, redisErr, idsErr); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	s.searchDir, s.searchAddr = filepath.Join(dir, "search"), cfg.SearchAddr
	if err := s.StartSearch(); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// StartSearch starts the search server on its data and address, in the
// background until StopSearch or Close: inside this process, or as a child
// process (StackConfig.SearchProcess) that answers HTTP when it returns.
// A child is supervised: when it exits by itself (crash, OOM kill, a
// signal from outside), it is logged, counted in
// chapper_dev_search_restarts_total and started again on the same address
// and data, after 100 ms doubling to 5 s for a child that keeps dying,
// until StopSearch or Close. StartStack calls StartSearch; fault tests
// call it again after StopSearch, on the same address (a port 0 in
// StackConfig.SearchAddr is fixed at the first start). It does nothing
// while the server runs.
func (s *Stack) StartSearch() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.cfg.SearchProcess {
		if err := s.startSearchChild(context.Background()); err != nil {
			return err
		}
		s.searchMu.Lock()
		defer s.searchMu.Unlock()
		if s.stopSupervise == nil {
			ctx, cancel := context.WithCancel(context.Background())
			s.stopSupervise, s.superviseDone = cancel, make(chan struct{})
			go s.superviseSearch(ctx, s.superviseDone)
		}
		return nil
	}
	s.searchMu.Lock()
	defer s.searchMu.Unlock()
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
// connection refused until StartSearch. A child's supervision ends first,
// so it is not restarted; then it gets SIGTERM, and SIGKILL after a
// minute. It does nothing when stopped.
func (s *Stack) StopSearch() error {
	s.searchMu.Lock()
	cancel, done := s.stopSupervise, s.superviseDone
	s.stopSupervise, s.superviseDone = nil, nil
	s.searchMu.Unlock()
	if cancel != nil {
		// before the SIGTERM: the supervisor then knows the exit is ours
		cancel()
		defer func() { <-done }()
	}
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.searchMu.Lock()
	proc := s.searchProc
	s.searchProc = nil
	s.searchMu.Unlock()
	if proc != nil {
		return stopLaunched(&proc, syscall.SIGTERM, "search server", s.searchAddr, s.log)
	}
	s.searchMu.Lock()
	defer s.searchMu.Unlock()
	if s.stopSearch == nil {
		return nil
	}
	s.stopSearch()
	err := <-s.searchDone
	s.stopSearch = nil
	return err
}

// SearchAddr returns the search server's host:port.
func (s *Stack) SearchAddr() string {
	s.searchMu.Lock()
	defer s.searchMu.Unlock()
	return s.searchDialAddr()
}

// searchDialAddr is SearchAddr with s.searchMu or s.lifeMu held.
func (s *Stack) searchDialAddr() string {
	host, port, err := net.SplitHostPort(s.searchAddr)
	if err != nil {
		return s.searchAddr
	}
	return net.JoinHostPort(dialHost(host), port)
}

// SearchURL returns http://SearchAddr.
func (s *Stack) SearchURL() string { return "http://" + s.SearchAddr() }

// searchURL is SearchURL with s.searchMu or s.lifeMu held.
func (s *Stack) searchURL() string { return "http://" + s.searchDialAddr() }

// SearchPid returns the process id of the search child, 0 when it runs
// inside this process or is stopped.
func (s *Stack) SearchPid() int {
	s.searchMu.Lock()
	defer s.searchMu.Unlock()
	if s.searchProc == nil {
		return 0
	}
	return s.searchProc.pid()
}

// SearchNice returns the search child's nice value (StackConfig.SearchNice).
func (s *Stack) SearchNice() int { return s.cfg.SearchNice }

// SearchLog returns the search child's log file.
func (s *Stack) SearchLog() string { return filepath.Join(s.searchDir, searchLog) }

// SearchReady returns nil while the search server runs, and an error once
// it was stopped or while its child process is dead (killed, crashed; the
// supervisor restarts it): a readiness check for dev mode's /readyz.
func (s *Stack) SearchReady() error {
	s.searchMu.Lock()
	defer s.searchMu.Unlock()
	switch {
	case s.searchProc != nil && s.searchProc.exited():
		restarting := ""
		if s.stopSupervise != nil {
			restarting = "; restarting it"
		}
		return fmt.Errorf("the search server's process (pid %d) exited: %v%s", s.searchProc.pid(), s.searchProc.err, restarting)
	case s.searchProc != nil, s.stopSearch != nil:
		return nil
	}
	return errors.New("the search server is stopped")
}

// Close stops every server of the stack in reverse start order, keeping
// their data, and returns the errors joined. Close is idempotent.
func (s *Stack) Close() error {
	errs := []error{s.StopSearch()}
	if s.IDs != nil {
		errs = append(errs, s.IDs.Close())
	}
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
