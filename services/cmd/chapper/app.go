package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/chapper/chapper/services/admin"
	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/server"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
)

// common holds the flags serve and dev share.
type common struct {
	log     logFlags
	targets string
	brokers string
	grpc    server.Config
	admin   admin.Config
	// auth is registered by serve and dev themselves (their defaults differ).
	auth auth.Config
}

func (c *common) register(fs *flag.FlagSet, defaultTargets string) {
	c.log.register(fs)
	fs.StringVar(&c.targets, "target", defaultTargets, "Comma-separated parts to run: "+strings.Join(targetOrder, ", ")+", or all.")
	fs.StringVar(&c.brokers, "kafka.brokers", "localhost:9092", "Comma-separated Kafka bootstrap addresses (chapper dev: the embedded broker).")
	c.grpc.RegisterFlags("grpc", fs)
	c.admin.RegisterFlags("admin", fs)
}

// app is what targets build into: the shared gRPC server, the admin
// server's readiness checks and the list of long-running parts.
type app struct {
	// Log is the logger every part logs to.
	Log *slog.Logger
	// Brokers are the Kafka bootstrap addresses (-kafka.brokers).
	Brokers []string
	// Stack is the embedded stack in dev mode (Kafka, Postgres, Redis),
	// nil under serve. Targets take their dev store addresses from it.
	Stack *devstack.Stack
	// pipelines is dev's pipelines child process (-dev.pipelines-process),
	// nil when the pipelines run in this process.
	pipelines *devstack.Child
	// DataDir is the dev-mode data directory ("" under serve).
	DataDir string

	grpc     *server.Server
	grpcUsed bool
	// authOn says authentication is on; authErr, when not nil, is why the
	// gRPC port cannot be served (no key).
	authOn  bool
	authErr error
	authDir string // dev mode: where the key pair is
	tlsCert string // dev mode: the TLS certificate, "" for plaintext
	admin   *admin.Server
	parts   []part
	out     io.Writer
}

// part is one long-running piece of a target.
type part struct {
	name string
	run  func(context.Context) error
}

func newApp(c *common, log *slog.Logger, out io.Writer) (*app, error) {
	opts, authErr, err := authOptions(&c.auth)
	if err != nil {
		return nil, err
	}
	g, err := server.New(c.grpc, log, opts...)
	if err != nil {
		return nil, err
	}
	adm, err := admin.New(c.admin, log)
	if err != nil {
		return nil, err
	}
	var brokers []string
	for _, b := range strings.Split(c.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			brokers = append(brokers, b)
		}
	}
	return &app{Log: log, Brokers: brokers, grpc: g, admin: adm, out: out, authOn: bool(c.auth.On), authErr: authErr}, nil
}

// authOptions returns the gRPC server options that check tokens when
// authentication is on. No key at all is not an error here but authErr,
// which the targets serving the gRPC port (ingest, query) return: the
// operator subcommands and the other targets run without keys.
func authOptions(c *auth.Config) (opts []grpc.ServerOption, authErr, err error) {
	if !c.On {
		return nil, nil, nil
	}
	keys, err := c.LoadKeys()
	if err != nil {
		return nil, nil, fmt.Errorf("loading token keys: %w", err)
	}
	v, err := auth.NewVerifier(*c, keys)
	if errors.Is(err, auth.ErrNoKeys) {
		return nil, fmt.Errorf("authentication is on and %w: give -auth.keys-dir (a directory written by `chapper token keygen`) or -auth.hs256-keys, or turn it off with -auth=off", err), nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("building token verifier: %w", err)
	}
	return auth.NewInterceptors(v).ServerOptions(), nil, nil
}

// GRPCAuthReady returns an error when authentication is on without a key:
// a target serving the gRPC port must then refuse to start.
func (a *app) GRPCAuthReady() error { return a.authErr }

// GRPC returns the shared gRPC and gRPC-web server. A target that calls it
// makes the server part of the run; the port opens once every gate passed.
func (a *app) GRPC() *server.Server {
	a.grpcUsed = true
	return a.grpc
}

// Add adds a long-running part. ready, when not nil, joins /readyz under
// name. run must return nil on a clean shutdown (ctx done).
func (a *app) Add(name string, run func(context.Context) error, ready func() error) {
	a.parts = append(a.parts, part{name, run})
	if ready != nil {
		a.admin.AddCheck(name, ready)
	}
}

// run sets up the named targets and runs every part, the admin server
// first, until ctx is done or one of them fails; the first error cancels
// the rest. It returns once every part returned.
func (a *app) run(ctx context.Context, names []string, setups map[string]setupFunc, announce func()) error {
	for _, n := range names {
		if err := setups[n](ctx, a); err != nil {
			return fmt.Errorf("setting up target %s: %w", n, err)
		}
	}
	if a.grpcUsed {
		a.Add("grpc", a.grpc.Run, a.grpc.Ready)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.admin.Run(gctx) })
	for _, p := range a.parts {
		g.Go(func() error {
			err := p.run(gctx)
			switch {
			case err != nil:
				return fmt.Errorf("%s: %w", p.name, err)
			case gctx.Err() == nil:
				return fmt.Errorf("%s stopped before shutdown", p.name)
			}
			return nil
		})
	}
	if announce != nil {
		g.Go(func() error {
			select {
			case <-a.admin.Listening():
			case <-gctx.Done():
				return nil
			}
			if a.grpcUsed {
				select {
				case <-a.grpc.Listening():
				case <-gctx.Done():
					return nil
				}
			}
			announce()
			return nil
		})
	}
	err := g.Wait()
	a.Log.Info("all parts stopped")
	return err
}
