package devstack

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/chapper/chapper/services/devstack/search"
)

// SearchServerCommand is the argument that makes a binary run the embedded
// search server alone: the default StackConfig.SearchCommand runs this
// executable with it. chapper answers it with a hidden subcommand, and
// test binaries whose TestMain runs devtest.Main answer it through
// RunSearchChild.
const SearchServerCommand = "search-server"

// searchLog is the search child's log file inside its data directory.
const searchLog = "search.log"

// RunSearchChild runs the search server when args (os.Args) ask for it
// (args[1] is SearchServerCommand), with the flags of search.Config under
// the prefix search-server, until SIGTERM or SIGINT; it returns the exit
// code and true. For any other args it returns false at once. A test
// binary calls it first thing in TestMain (devtest.Main does).
func RunSearchChild(args []string, stderr io.Writer) (code int, ran bool) {
	if len(args) < 2 || args[1] != SearchServerCommand {
		return 0, false
	}
	fs := flag.NewFlagSet(SearchServerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg search.Config
	cfg.RegisterFlags(SearchServerCommand, fs)
	if err := fs.Parse(args[2:]); err != nil {
		return 2, true
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := ServeSearch(ctx, cfg); err != nil {
		cfg.Logger.Error("search server stopped", "err", err)
		return 1, true
	}
	return 0, true
}

// ServeSearch opens the search server's data and serves it until ctx is
// done: the body of the search child.
func ServeSearch(ctx context.Context, cfg search.Config) error {
	srv, err := search.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// searchCommand returns the child's command line before its flags.
func (c *StackConfig) searchCommand() ([]string, error) {
	if len(c.SearchCommand) > 0 {
		return c.SearchCommand, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this executable to run the search server: %w", err)
	}
	return []string{exe, SearchServerCommand}, nil
}

// startSearchChild starts the search server as a child process on
// s.searchAddr (a port 0 is fixed here, at the first start), at nice
// s.cfg.SearchNice, dying with this process, its log in
// <search dir>/search.log, and waits until it answers HTTP.
func (s *Stack) startSearchChild() error {
	if s.searchProc != nil && !s.searchProc.exited() {
		return nil
	}
	s.searchProc = nil
	if _, port, err := net.SplitHostPort(s.searchAddr); err != nil || port == "0" {
		// the first start: fix the port, so restarts keep the address
		h, p, err := splitAddr(s.searchAddr)
		if err != nil {
			return fmt.Errorf("search server: %w", err)
		}
		s.searchAddr = net.JoinHostPort(h, strconv.Itoa(p))
	}
	if err := os.MkdirAll(s.searchDir, 0o755); err != nil {
		return fmt.Errorf("creating search data directory: %w", err)
	}
	argv, err := s.cfg.searchCommand()
	if err != nil {
		return err
	}
	ctx, cancel := startContext(context.Background())
	defer cancel()
	// a child of a chapper that was just killed may still be closing its
	// indexes (it got SIGTERM from the kernel) and hold the data directory
	if err := waitDirUnlocked(ctx, s.searchDir); err != nil {
		return err
	}
	cmd := exec.Command(argv[0], append(argv[1:],
		"-"+SearchServerCommand+".data-dir="+s.searchDir,
		"-"+SearchServerCommand+".addr="+s.searchAddr)...)
	cmd.Dir = s.searchDir
	start := time.Now()
	proc, err := launch(ctx, cmd, launchSpec{
		name: "search server", addr: s.searchDialAddr(), dir: s.searchDir, logPath: filepath.Join(s.searchDir, searchLog),
		dieWithParent: true, deathSig: syscall.SIGTERM, nice: s.cfg.SearchNice,
		ready: s.waitSearchHTTP,
	})
	if err != nil {
		return err
	}
	s.searchProc = proc
	s.log.Info("search server started", "addr", s.searchDialAddr(), "data_dir", s.searchDir, "pid", proc.pid(), "nice", s.cfg.SearchNice,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitSearchHTTP waits until the search child answers GET / with 200.
func (s *Stack) waitSearchHTTP(ctx context.Context, proc *child) error {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Second}
	return pollReady(ctx, proc, "the search server", func() (bool, error) {
		return true, getOK(ctx, c, s.searchURL()+"/")
	})
}

// getOK reports whether GET url answers 200.
func getOK(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// waitDirUnlocked waits until no process holds the search server's lock
// on dir (its flock on dir/LOCK).
func waitDirUnlocked(ctx context.Context, dir string) error {
	for {
		f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return fmt.Errorf("opening the search server's lock: %w", err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		}
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s is still held by another process", search.ErrDataDirInUse, dir)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
