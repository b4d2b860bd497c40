// Package server is Chapper's public endpoint: one listener that serves
// native gRPC and gRPC-web (with CORS) for every registered service, plus the
// gRPC health service and server reflection.
//
// Connections are split by their first bytes (github.com/soheilhy/cmux): a
// connection that opens with the HTTP/2 client preface (native gRPC over
// h2c) goes straight to grpc.Server.Serve, grpc-go's own HTTP/2 transport;
// anything else is HTTP/1.x and goes to a net/http server that answers
// gRPC-web and CORS preflight through improbable-eng's grpcweb wrapper.
// Routing native gRPC through net/http instead (grpc.Server.ServeHTTP over
// h2c, one listener, no sniffing) was measured against this split on the
// ingest benchmark (16 clients, batches of 100, same process, alternating
// rounds): ServeHTTP took 8.7-10.7 µs of CPU per record against 7.1-9.7 µs
// here, and gave 10-20% less throughput, so native clients keep grpc-go's
// own transport. (With TLS and ALPN h2, which the gRPC-web issue brings,
// the split must move to the content-type; cmux can match that too.)
//
// With a TLS certificate configured (-grpc.tls-cert, -grpc.tls-key) there is
// no sniffing: one net/http server speaks TLS with ALPN h2 and http/1.1 and
// routes by content type, application/grpc to grpc.Server.ServeHTTP and
// gRPC-web to the wrapper, since browsers use HTTP/2 over TLS too.
//
// CORS (cors.go) is an exact allow-list; gRPC-web request bodies and
// native messages alike are bounded by -grpc.max-recv-bytes.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/improbable-eng/grpc-web/go/grpcweb"
	"github.com/soheilhy/cmux"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// ErrNotListening is returned by Ready until the server listens.
var ErrNotListening = errors.New("not listening yet")

// Config configures the server.
type Config struct {
	Addr            string
	ShutdownTimeout time.Duration
	CORSOrigins     string
	MaxRecvBytes    int
	// TLSCert and TLSKey are PEM files; both set turns TLS on.
	TLSCert string
	TLSKey  string
}

// RegisterFlags registers the server's flags on fs under prefix (e.g. "grpc"
// gives -grpc.addr).
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, prefix+".addr", ":7070", "Listen address of gRPC and gRPC-web (one port; chapper dev uses 127.0.0.1:7070).")
	fs.DurationVar(&c.ShutdownTimeout, prefix+".shutdown-timeout", 10*time.Second, "Longest wait for calls in progress at shutdown before they are cut.")
	fs.StringVar(&c.CORSOrigins, prefix+".cors-origins", "", "Comma-separated exact origins allowed to call over gRPC-web (scheme://host[:port]; scheme://host:* for any port); * allows any origin but never with credentials; empty allows none (chapper dev: http://localhost:* and http://127.0.0.1:*).")
	fs.IntVar(&c.MaxRecvBytes, prefix+".max-recv-bytes", 4<<20, "Largest request message accepted, in bytes, over gRPC and gRPC-web alike; larger is RESOURCE_EXHAUSTED.")
	fs.StringVar(&c.TLSCert, prefix+".tls-cert", "", "PEM certificate (chain) file; with -"+prefix+".tls-key it turns TLS on (chapper dev -tls makes a local one).")
	fs.StringVar(&c.TLSKey, prefix+".tls-key", "", "PEM private key file of -"+prefix+".tls-cert.")
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.Addr == "" {
		return errors.New("grpc listen address not set")
	}
	if c.ShutdownTimeout < 0 {
		return errors.New("grpc shutdown timeout must not be negative")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("grpc TLS needs both -grpc.tls-cert and -grpc.tls-key")
	}
	if _, err := parseCORS(c.CORSOrigins); err != nil {
		return err
	}
	return nil
}

// Server serves gRPC and gRPC-web on one port. Register services on GRPC()
// before Run; Run listens only once every gate passed.
type Server struct {
	cfg    Config
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server

	cors *corsPolicy
	tls  *tls.Config // nil: plaintext

	mu        sync.Mutex
	gates     []func(context.Context) error
	addr      net.Addr
	listening chan struct{}
}

// New returns a Server with the health service and reflection registered.
// opts are added after the server's own options; interceptors among them
// (authentication, say) run inside the server's panic recovery and call
// metrics.
func New(cfg Config, log *slog.Logger, opts ...grpc.ServerOption) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("part", "grpc")
	cors, _ := parseCORS(cfg.CORSOrigins)
	var tlsCfg *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("loading grpc TLS certificate: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
	}
	s := &Server{
		cors:      cors,
		tls:       tlsCfg,
		cfg:       cfg,
		log:       log,
		health:    health.NewServer(),
		listening: make(chan struct{}),
	}
	own := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	}
	if cfg.MaxRecvBytes > 0 {
		own = append(own, grpc.MaxRecvMsgSize(cfg.MaxRecvBytes))
	}
	s.grpc = grpc.NewServer(append(own, opts...)...)
	// Not serving until the gates passed and the listener is up.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s, nil
}

// GRPC returns the underlying gRPC server, to register services on before
// Run.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Register calls each fn with the gRPC server; a convenience for parts that
// expose a Register(grpc.ServiceRegistrar) method.
func (s *Server) Register(fns ...func(grpc.ServiceRegistrar)) {
	for _, fn := range fns {
		fn(s.grpc)
	}
}

// Gate adds a condition Run waits for before it opens the port, e.g. ingest's
// WaitReady (the port opens only when ingest can take records). fn blocks
// until its part is ready or ctx is done.
func (s *Server) Gate(fn func(ctx context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gates = append(s.gates, fn)
}

// Ready returns nil once the server listens, or ErrNotListening.
func (s *Server) Ready() error {
	select {
	case <-s.listening:
		return nil
	default:
		return ErrNotListening
	}
}

// Listening returns a channel closed once the server listens.
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Addr returns the address the server listens on, or nil before it listens.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Run waits for every gate, listens on the configured address and serves
// until ctx is done. It then stops gracefully: the health service reports
// NOT_SERVING, new connections are refused, and calls in progress get
// ShutdownTimeout to finish before they are cut. It returns nil on a clean
// shutdown.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	gates := s.gates
	s.mu.Unlock()
	for _, gate := range gates {
		if err := gate(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("waiting to open the grpc port: %w", err)
		}
	}

	lis, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening for grpc on %s: %w", s.cfg.Addr, err)
	}
	if s.tls != nil {
		return s.runTLS(ctx, lis)
	}
	mux := cmux.New(lis)
	// A client that connects and never speaks must not hold a sniffing
	// goroutine forever.
	mux.SetReadTimeout(10 * time.Second)
	grpcLis := mux.Match(cmux.HTTP2())
	webLis := mux.Match(cmux.Any())
	web := &http.Server{
		Handler:           s.webHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}

	s.serving(lis, "plaintext")

	var stopping sync.Once
	stopped := make(chan struct{})
	g, gctx := errgroup.WithContext(ctx)
	// Serve errors after shutdown began are the listeners closing under
	// them, not failures.
	ignoreAfterStop := func(err error) error {
		select {
		case <-stopped:
			return nil
		default:
			return err
		}
	}
	g.Go(func() error {
		if err := s.grpc.Serve(grpcLis); err != nil {
			return ignoreAfterStop(fmt.Errorf("serving grpc: %w", err))
		}
		return nil
	})
	g.Go(func() error {
		if err := web.Serve(webLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return ignoreAfterStop(fmt.Errorf("serving grpc-web: %w", err))
		}
		return nil
	})
	g.Go(func() error {
		if err := mux.Serve(); err != nil {
			return ignoreAfterStop(fmt.Errorf("accepting grpc connections: %w", err))
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		stopping.Do(func() { close(stopped) })
		s.shutdown(lis, web)
		return nil
	})
	return g.Wait()
}

// shutdown stops the server gracefully within ShutdownTimeout.
func (s *Server) shutdown(lis net.Listener, web *http.Server) {
	s.health.Shutdown()
	_ = lis.Close()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	if err := web.Shutdown(ctx); err != nil {
		_ = web.Close()
	}
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("grpc calls still running at the shutdown deadline; cutting them", "timeout", s.cfg.ShutdownTimeout)
		s.grpc.Stop()
		<-done
	}
	s.log.Info("grpc server stopped")
}

// serving records the address, marks every service SERVING and reports
// listening.
func (s *Server) serving(lis net.Listener, mode string) {
	s.mu.Lock()
	s.addr = lis.Addr()
	s.mu.Unlock()
	for name := range s.grpc.GetServiceInfo() {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	close(s.listening)
	s.log.Info("grpc and grpc-web listening", "addr", lis.Addr().String(), "transport", mode, "cors_origins", s.cfg.CORSOrigins)
}

// runTLS serves gRPC and gRPC-web over TLS from one net/http server (HTTP/2
// by ALPN, or HTTP/1.1), routing native gRPC by its content type.
func (s *Server) runTLS(ctx context.Context, lis net.Listener) error {
	web := s.webHandler()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && isNativeGRPC(r.Header.Get("Content-Type")) {
				s.grpc.ServeHTTP(w, r)
				return
			}
			web.ServeHTTP(w, r)
		}),
		TLSConfig:         s.tls,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.serving(lis, "tls")
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(lis, "", "") }()
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving grpc over tls: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	s.health.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("grpc calls still running at the shutdown deadline; cutting them", "timeout", s.cfg.ShutdownTimeout)
		_ = srv.Close()
	}
	s.grpc.Stop()
	<-errc
	s.log.Info("grpc server stopped")
	return nil
}

// isNativeGRPC reports whether a content type is native gRPC
// (application/grpc or application/grpc+<codec>), not gRPC-web.
func isNativeGRPC(ct string) bool {
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

// webHandler answers gRPC-web calls and CORS preflight (for allowed origins
// only); anything else is 404. A gRPC-web body is cut at the message size
// limit (with room for framing and the base64 of the text format), so an
// endless body cannot be streamed in; the gRPC server refuses a larger
// message itself, as on native gRPC.
func (s *Server) webHandler() http.Handler {
	wrapped := grpcweb.WrapServer(s.grpc)
	limit := int64(-1)
	if s.cfg.MaxRecvBytes > 0 {
		limit = int64(s.cfg.MaxRecvBytes)*4/3 + 64<<10
	}
	page := s.appHandler() // the web page at /app/ (app.go)
	return s.cors.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if wrapped.IsGrpcWebRequest(r) {
			if limit > 0 {
				r.Body = http.MaxBytesReader(w, r.Body, limit)
			}
			wrapped.HandleGrpcWebRequest(w, r)
			return
		}
		if serveApp(page, w, r) {
			return
		}
		http.Error(w, "this port speaks gRPC and gRPC-web (POST application/grpc-web+proto)", http.StatusNotFound)
	}))
}

// unaryInterceptor turns a panic in a handler into an INTERNAL error (the
// server keeps running) and counts calls.
func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in grpc handler", "method", info.FullMethod, "panic", p, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
		observe(info.FullMethod, err, start)
	}()
	return handler(ctx, req)
}

// streamInterceptor is unaryInterceptor for streaming calls.
func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in grpc handler", "method", info.FullMethod, "panic", p, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
		observe(info.FullMethod, err, start)
	}()
	return handler(srv, ss)
}
