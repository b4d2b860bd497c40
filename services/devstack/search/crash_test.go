package search

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// crashDirEnv tells the re-executed test binary to run TestCrashWriter in
// that data directory until it is killed.
const crashDirEnv = "CHAPPER_SEARCH_CRASH_DIR"

// crashBatch is the documents per _bulk request of the crashing writer:
// large enough that a request arriving while a core is idle is split
// into parts written concurrently (writeBatch).
const crashBatch = 1000

// crashAfter is how many acknowledged requests the writer kills itself
// after.
const crashAfter = 6

// TestCrashWriter is the run that gets SIGKILLed: a server on the data
// directory and two clients sending _bulk requests to it, printing "ACK
// <n>" once request n was answered without errors; right after the
// crashAfter-th it SIGKILLs itself, the other request still in flight.
func TestCrashWriter(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestSIGKILLLosesNoAcknowledgedDocument")
	}
	s := startServer(t, dir)
	callJSON(t, http.MethodPut, s.URL()+"/crash", `{"mappings":`+canvassMapping+`}`, 200)
	d := genBenchData(crashBatch)
	var mu sync.Mutex
	next, acked := 0, 0
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				n := next
				next++
				mu.Unlock()
				docs := make([]map[string]any, len(d.docs))
				ids := make([]string, len(d.ids))
				for i, doc := range d.docs {
					c := make(map[string]any, len(doc)+1)
					for k, v := range doc {
						c[k] = v
					}
					c["kind"] = "b" + strconv.Itoa(n)
					docs[i], ids[i] = c, fmt.Sprintf("%d-%s", n, d.ids[i])
				}
				status, resp, _ := call(t, http.MethodPost, s.URL()+"/_bulk", bulkBody(t, "crash", ids, docs))
				if status != http.StatusOK || strings.Contains(string(resp), `"errors":true`) {
					fmt.Printf("FAILED %d %d %.200s\n", n, status, resp)
					return
				}
				mu.Lock()
				fmt.Printf("ACK %d\n", n)
				acked++
				if acked == crashAfter {
					// the moment the answer is in, as a crash right after
					// the acknowledgement would be
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestSIGKILLLosesNoAcknowledgedDocument kills a server while two clients
// write to it, opens the data directory again and finds every document of
// every _bulk request that was acknowledged before the kill (writes
// return only once their batch is durable).
func TestSIGKILLLosesNoAcknowledgedDocument(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a search server in a child process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "search")
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashWriter$", "-test.v")
	child.Env = append(os.Environ(), crashDirEnv+"="+dir)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[int]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "FAILED") {
			t.Errorf("the writer failed: %s", line)
		}
		n, ok := strings.CutPrefix(line, "ACK ")
		if !ok {
			continue
		}
		i, _ := strconv.Atoi(n)
		acked[i] = true
	}
	_ = child.Wait()
	if len(acked) < crashAfter {
		t.Fatalf("the writer stopped after %d acknowledged requests, before the kill", len(acked))
	}

	s := startServer(t, dir)
	status, body, _ := call(t, http.MethodPost, s.URL()+"/crash/_search", []byte(`{"size":0,"aggs":{"b":{"terms":{"field":"kind","size":1000}}}}`))
	if status != http.StatusOK {
		t.Fatalf("search after the kill: status %d: %s", status, body)
	}
	var res struct {
		Aggregations struct {
			B struct {
				Buckets []struct {
					Key      string `json:"key"`
					DocCount int    `json:"doc_count"`
				} `json:"buckets"`
			} `json:"b"`
		} `json:"aggregations"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatal(err)
	}
	found := map[string]int{}
	for _, b := range res.Aggregations.B.Buckets {
		found[b.Key] = b.DocCount
	}
	for n := range acked {
		if got := found["b"+strconv.Itoa(n)]; got != crashBatch {
			t.Errorf("acknowledged request %d: %d of its %d documents after the kill", n, got, crashBatch)
		}
	}
	t.Logf("%d acknowledged requests of %d documents survived the kill; %d requests' documents found in all", len(acked), crashBatch, len(found))
}
