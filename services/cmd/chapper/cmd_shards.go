package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/chapper/chapper/pipelines/persist/shards"
)

// runShards is `chapper shards show|add|move|clean`: the shard map and its
// row counts, registering a database, moving a logical shard while the
// persisters keep writing, and deleting rows left by an interrupted move.
func runShards(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	actions := "show, add -name NAME -url URL, move -shard N -to NAME, or clean"
	if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
		return fmt.Errorf("chapper shards: give an action: %s", actions)
	}
	action := args[0]
	fs := flag.NewFlagSet("shards "+action, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFlags
	lf.register(fs)
	var cfg shards.Config
	cfg.RegisterFlags("shards", fs)
	var (
		shard    = fs.Int("shard", -1, "move: the logical shard to move.")
		to       = fs.String("to", "", "move: the registered database to move it to.")
		name     = fs.String("name", "", "add: the new database's name in the shard map.")
		conninfo = fs.String("url", "", "add: the new database's URL or key=value connection string, reachable from the persisters and the router's server.")
	)
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	tool, err := shards.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer tool.Close()
	switch action {
	case "show":
		return tool.Show(ctx, stdout)
	case "add":
		if *name == "" || *conninfo == "" {
			return errors.New("chapper shards add: -name and -url are required")
		}
		return tool.Add(ctx, *name, *conninfo, stdout)
	case "move":
		if *shard < 0 || *to == "" {
			return errors.New("chapper shards move: -shard and -to are required")
		}
		return tool.Move(ctx, *shard, *to, stdout)
	case "clean":
		return tool.Clean(ctx, stdout)
	}
	return fmt.Errorf("chapper shards: unknown action %q: %s", action, actions)
}
