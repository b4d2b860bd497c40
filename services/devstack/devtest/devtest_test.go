package devtest

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func TestMain(m *testing.M) { Main(m) }

func TestKafkaPrivateBrokers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := Kafka(t), Kafka(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two calls share broker %s", a.Addr())
	}
	produce := func(addr string) {
		c, err := kgo.NewClient(kgo.SeedBrokers(addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := kmsg.NewPtrCreateTopicsRequest()
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic, rt.NumPartitions, rt.ReplicationFactor = "t", -1, -1 // broker defaults
		req.Topics = append(req.Topics, rt)
		if _, err := req.RequestWith(ctx, c); err != nil {
			t.Fatalf("creating topic: %v", err)
		}
		if err := c.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("v")}).FirstErr(); err != nil {
			t.Fatalf("producing to %s: %v", addr, err)
		}
	}
	produce(a.Addr())

	// The topic exists on a only, with the harness's partition count.
	for _, tc := range []struct {
		name  string
		addr  string
		parts int
	}{
		{name: "written broker", addr: a.Addr(), parts: Partitions},
		{name: "other broker", addr: b.Addr(), parts: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := kgo.NewClient(kgo.SeedBrokers(tc.addr))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := partitions(ctx, t, c, "t"); got != tc.parts {
				t.Errorf("topic t has %d partitions on %s, want %d", got, tc.addr, tc.parts)
			}
		})
	}
}

func TestRedisKeyPrefix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := Redis(t)
	if r2 := Redis(t); r2 != r {
		t.Fatal("Redis returned two different shared servers")
	}
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer c.Close()

	var prefixes []string
	for _, name := range []string{"one", "two"} {
		t.Run(name, func(t *testing.T) {
			p := KeyPrefix(t)
			if !strings.HasPrefix(p, "t") || !strings.HasSuffix(p, ":") {
				t.Errorf("prefix %q is not of the form t<hash>:", p)
			}
			prefixes = append(prefixes, p)
			for i := range 2500 { // more than one SCAN/UNLINK batch
				if err := c.Set(ctx, p+"k"+string(rune('a'+i%26))+strings.Repeat("x", i%7)+":"+strconv.Itoa(i), i, 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if prefixes[0] == prefixes[1] {
		t.Fatalf("two tests got the same prefix %q", prefixes[0])
	}
	for _, p := range prefixes {
		keys, err := c.Keys(ctx, p+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 0 {
			t.Errorf("%d keys with prefix %s left after the test", len(keys), p)
		}
	}
}

// partitions returns the partition count of topic on the broker c talks
// to, 0 when it does not exist.
func partitions(ctx context.Context, t *testing.T, c *kgo.Client, topic string) int {
	t.Helper()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, c)
	if err != nil {
		t.Fatalf("asking for metadata: %v", err)
	}
	for _, mt := range resp.Topics {
		if mt.Topic != nil && *mt.Topic == topic && mt.ErrorCode == 0 {
			return len(mt.Partitions)
		}
	}
	return 0
}

func TestPostgresDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Concurrent first use starts one shared cluster.
	var wg sync.WaitGroup
	got := make([]any, 4)
	for i := range got {
		wg.Go(func() { got[i] = Postgres(t) })
	}
	wg.Wait()
	pg := Postgres(t)
	for i, p := range got {
		if p != pg {
			t.Fatalf("call %d returned another shared cluster", i)
		}
	}

	tmpl := Database(t, pg, "")
	conn, err := pgx.Connect(ctx, pg.URL(tmpl))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE marks (n int); INSERT INTO marks VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	// A session left open on the template is the common case (a migration
	// pool being closed); Database must still copy it once it goes.
	go func() {
		time.Sleep(200 * time.Millisecond)
		conn.Close(context.Background())
	}()

	var names []string
	for _, name := range []string{"from template", "again"} {
		t.Run(name, func(t *testing.T) {
			db := Database(t, pg, tmpl)
			names = append(names, db)
			c, err := pgx.Connect(ctx, pg.URL(db))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			var n int
			if err := c.QueryRow(ctx, "SELECT n FROM marks").Scan(&n); err != nil || n != 7 {
				t.Fatalf("copy of template: n = %d, err = %v; want 7", n, err)
			}
		})
	}
	if names[0] == names[1] {
		t.Fatalf("two tests got database %s", names[0])
	}
	admin, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, db := range names {
		var exists bool
		if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Errorf("database %s still exists after its test", db)
		}
	}
}

func TestPrivateServers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := NewRedis(t)
	if r == Redis(t) {
		t.Fatal("NewRedis returned the shared server")
	}
	pg := NewPostgres(t)
	if pg == Postgres(t) {
		t.Fatal("NewPostgres returned the shared cluster")
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	Database(t, pg, "")
}

func TestRedisCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addrs := RedisCluster(t)
	if len(addrs) != ClusterMasters {
		t.Fatalf("%d addresses, want %d", len(addrs), ClusterMasters)
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer c.Close()
	for i := range 100 {
		if err := c.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err(); err != nil {
			t.Fatalf("SET through the cluster client: %v", err)
		}
	}
	// Every master holds some of the keys: the slots are spread.
	var mu sync.Mutex
	sizes := map[string]int64{}
	err := c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		n, err := node.DBSize(ctx).Result()
		mu.Lock()
		sizes[node.Options().Addr] = n
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != ClusterMasters {
		t.Fatalf("masters %v, want %d", sizes, ClusterMasters)
	}
	for addr, n := range sizes {
		if n == 0 {
			t.Errorf("master %s holds no keys: %v", addr, sizes)
		}
	}
}
