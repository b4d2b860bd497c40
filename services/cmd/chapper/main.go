// Command chapper runs any set of Chapper's parts (chapper serve
// -target=ingest,...), the whole system on the embedded stack (chapper dev)
// and the operator commands. Every flag can also be set from the
// environment: -ingest.batch-limit ↔ CHAPPER_INGEST_BATCH_LIMIT; a flag on
// the command line wins over the environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		slog.Error("chapper stopped", "err", err)
		os.Exit(1)
	}
}

// run runs the subcommand named by args[0] with the rest of args.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return errors.New("no subcommand given")
		}
		return nil
	}
	for _, c := range append(commands[:len(commands):len(commands)], hiddenCommands...) {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown subcommand %q", args[0])
}
