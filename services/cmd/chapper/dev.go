package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/devstack"
	"github.com/prometheus/client_golang/prometheus"
)

// devDefaults are the flag defaults of `chapper dev` beyond the targets'
// own: loopback only, DESIGN.md's dev ports.
var devDefaults = map[string]string{
	"grpc.addr":         "127.0.0.1:7070",
	"admin.addr":        "127.0.0.1:7071",
	"grpc.cors-origins": devCORSOrigins,
}

// setDevDefaults gives fs's flags dev mode's defaults: devDefaults and
// each built target's own.
func setDevDefaults(fs *flag.FlagSet) error {
	for name, v := range devDefaults {
		if err := setDefault(fs, name, v); err != nil {
			return err
		}
	}
	for _, n := range builtTargets() {
		for name, v := range targets[n].dev {
			if err := setDefault(fs, name, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// runDev is `chapper dev`: the embedded stack (Kafka, Postgres, Redis, search; data
// under -dev.dir) and every target, plaintext, authentication off unless -auth. It
// prints the endpoints once the gRPC port is open and stops everything on
// ctx (Ctrl-C).
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs, "all")
	var sc devstack.StackConfig
	sc.RegisterFlags("dev", fs)
	// Off unless -auth; the keys default to <dev.dir>/auth (devAuth).
	c.auth.RegisterFlags("auth", fs, false, "")
	var tlsOn auth.Switch
	fs.Var(&tlsOn, "tls", "TLS on the gRPC port: on or off (a bare -tls means on), with a local self-signed certificate kept under <dev.dir>/tls/ unless -grpc.tls-cert is given.")
	var pipes devPipelines
	pipes.register(fs)
	setups := registerTargetFlags(fs)
	if err := setDevDefaults(fs); err != nil {
		return err
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := pipes.validate(); err != nil {
		return err
	}
	names, err := selectTargets(c.targets)
	if err != nil {
		return err
	}
	here, childNames := pipes.split(names)
	log, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	sc.Logger = log
	if err := devAuth(&c.auth, sc.Dir, stderr); err != nil {
		return err
	}
	if err := devTLS(bool(tlsOn), &c.grpc, sc.Dir, stderr); err != nil {
		return err
	}

	stack, err := devstack.StartStack(ctx, sc)
	if err != nil {
		return fmt.Errorf("starting the embedded stack: %w", err)
	}
	a, err := newApp(&c, log, stdout)
	if err != nil {
		return errors.Join(err, stack.Close())
	}
	a.Stack = stack
	// a search child that died turns /readyz red until its supervisor has
	// restarted it; its metrics join dev's /metrics
	a.admin.AddCheck("search-server", stack.SearchReady)
	gatherer := stack.Gatherer(prometheus.DefaultGatherer)
	a.DataDir, _ = filepath.Abs(sc.Dir)
	a.authDir, a.tlsCert = c.auth.KeysDir, c.grpc.TLSCert
	// Dev mode talks to its own broker, whatever -kafka.brokers says.
	a.Brokers = []string{stack.Kafka.Addr()}
	if len(childNames) > 0 {
		child, err := pipes.start(ctx, fs, &c, stack, a.DataDir, childNames, log)
		if err != nil {
			return errors.Join(fmt.Errorf("starting the pipelines process: %w", err), stack.Close())
		}
		for _, n := range childNames {
			a.admin.AddCheck(n, func() error { return child.Ready(n) })
		}
		gatherer = child.Gatherer(gatherer, devstack.IsSearchMetric)
		a.pipelines = child
	}
	a.admin.SetGatherer(gatherer)

	announce := func() { printEndpoints(stdout, a, names) }
	runErr := a.run(ctx, here, setups, announce)
	if a.pipelines != nil {
		// before the stack: the pipelines finish their batches and commit
		if err := a.pipelines.Close(); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	if err := stack.Close(); err != nil {
		return errors.Join(runErr, fmt.Errorf("stopping the embedded stack: %w", err))
	}
	if runErr == nil {
		fmt.Fprintln(stdout, "chapper dev stopped")
	}
	return runErr
}

// printEndpoints tells the developer where everything is.
func printEndpoints(w io.Writer, a *app, names []string) {
	fmt.Fprintf(w, "chapper dev is up (targets: %v)\n", names)
	if a.grpcUsed {
		if a.tlsCert != "" {
			fmt.Fprintf(w, "  gRPC + gRPC-web  %s  (TLS; certificate %s)\n", a.grpc.Addr(), a.tlsCert)
		} else {
			fmt.Fprintf(w, "  gRPC + gRPC-web  %s\n", a.grpc.Addr())
		}
	}
	fmt.Fprintf(w, "  admin            http://%s  (/metrics /healthz /readyz)\n", a.admin.Addr())
	s := a.Stack
	fmt.Fprintf(w, "  Kafka            %s\n", s.Kafka.Addr())
	if s.Postgres != nil {
		fmt.Fprintf(w, "  Postgres         %s  (user postgres; databases chapper_router, chapper_shard_0, chapper_shard_1)\n", s.Postgres.Addr())
	}
	if s.Redis != nil {
		fmt.Fprintf(w, "  Redis            %s\n", s.Redis.Addr())
	}
	if s.IDs != nil {
		fmt.Fprintf(w, "  Redis (ids)      %s  (ingest's id store)\n", s.IDs.Addr())
	}
	where := "in this process"
	if pid := s.SearchPid(); pid != 0 {
		where = fmt.Sprintf("process %d, nice %d, log %s", pid, s.SearchNice(), s.SearchLog())
	}
	fmt.Fprintf(w, "  search           %s  (Elasticsearch API subset; aliases canvass-visits, canvass-intentions, canvass-followups; %s)\n", s.SearchURL(), where)
	if a.pipelines != nil {
		fmt.Fprintf(w, "  pipelines        process %d, nice %d, log %s\n", a.pipelines.Pid(), a.pipelines.Nice(), a.pipelines.LogPath())
	}
	if a.authOn {
		fmt.Fprintf(w, "  auth             %s  (tokens: chapper token issue -canvasser=<id> -role=canvasser -auth.keys-dir=%s)\n", a.authDir, a.authDir)
	}
	fmt.Fprintf(w, "  data             %s\n", a.DataDir)
	fmt.Fprintln(w, "Ctrl-C stops everything.")
}
