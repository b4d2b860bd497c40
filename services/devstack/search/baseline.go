package search

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/analysis/analyzer/keyword"
	"github.com/blevesearch/bleve/v2/index/scorch"
	blevemapping "github.com/blevesearch/bleve/v2/mapping"
)

// BaselineDoc is one document of a Bleve baseline run: its id and its JSON
// body, as a _bulk request would carry them.
type BaselineDoc struct {
	ID   string
	Body []byte
}

// BleveBaseline is the raw Bleve figure the indexing benchmarks print
// next to the server's: the same documents, decoded from the same JSON,
// batch-indexed straight into one Bleve (scorch) index under a directory
// with Bleve's own mapping of the same Elasticsearch mapping (properties of
// type keyword, text, long/integer/short/byte, double/float, date,
// boolean, geo_point), each batch durable (fsync) before it returns, as
// the server's writes. It is tuned as far as Bleve's mapping allows: no
// composite _all field, no term vectors, no stored fields but the source,
// which is stored once, doc values only on the types the server sorts and
// aggregates (keywords, numbers, dates, booleans), and the server's scorch
// merge and persister options. A benchmark loads it
// in turns with the server (Load), so that the machine's load touches
// both alike.
type BleveBaseline struct {
	idx bleve.Index
}

// NewBleveBaseline creates the baseline's index under dir for esMapping
// (an Elasticsearch mapping with properties), with the scorch options a
// server gets from a Config without any (ScorchEnv).
func NewBleveBaseline(dir string, esMapping []byte) (*BleveBaseline, error) {
	o, err := scorchFromEnv()
	if err != nil {
		return nil, err
	}
	return NewBleveBaselineWith(dir, esMapping, o)
}

// NewBleveBaselineWith is NewBleveBaseline with the given scorch options.
func NewBleveBaselineWith(dir string, esMapping []byte, o ScorchOptions) (*BleveBaseline, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	var m struct {
		Properties map[string]struct {
			Type string `json:"type"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(esMapping, &m); err != nil {
		return nil, fmt.Errorf("reading the mapping: %w", err)
	}
	im := bleve.NewIndexMapping()
	im.StoreDynamic, im.IndexDynamic, im.DocValuesDynamic = false, false, false
	dm := bleve.NewDocumentStaticMapping()
	tune := func(fm *blevemapping.FieldMapping, docValues bool) *blevemapping.FieldMapping {
		fm.Store, fm.IncludeInAll, fm.IncludeTermVectors, fm.DocValues = false, false, false, docValues
		return fm
	}
	for name, p := range m.Properties {
		var fm *blevemapping.FieldMapping
		switch p.Type {
		case "keyword":
			fm = tune(bleve.NewKeywordFieldMapping(), true)
			fm.Analyzer = keyword.Name
		case "text":
			fm = tune(bleve.NewTextFieldMapping(), false)
		case "long", "integer", "short", "byte", "double", "float":
			fm = tune(bleve.NewNumericFieldMapping(), true)
		case "date":
			fm = tune(bleve.NewDateTimeFieldMapping(), true)
		case "boolean":
			fm = tune(bleve.NewBooleanFieldMapping(), true)
		case "geo_point":
			fm = tune(blevemapping.NewGeoPointFieldMapping(), false)
		default:
			return nil, fmt.Errorf("field %s: type %s has no baseline mapping", name, p.Type)
		}
		dm.AddFieldMappingsAt(name, fm)
	}
	src := bleve.NewTextFieldMapping()
	src.Index, src.Store, src.IncludeInAll, src.IncludeTermVectors, src.DocValues = false, true, false, false, false
	dm.AddFieldMappingsAt("_source", src)
	im.DefaultMapping = dm
	idx, err := bleve.NewUsing(filepath.Join(dir, "baseline"), im, scorch.Name, scorch.Name, o.kvConfig())
	if err != nil {
		return nil, err
	}
	return &BleveBaseline{idx: idx}, nil
}

// Load indexes docs in batches of batch documents from workers goroutines
// and returns how long it took.
func (bb *BleveBaseline) Load(docs []BaselineDoc, batch, workers int) (time.Duration, error) {
	work := make(chan []BaselineDoc)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	fail := func(err error) {
		mu.Lock()
		if failed == nil {
			failed = err
		}
		mu.Unlock()
	}
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for part := range work {
				b := bb.idx.NewBatch()
				for _, d := range part {
					var v map[string]any
					if err := json.Unmarshal(d.Body, &v); err != nil {
						fail(fmt.Errorf("document %s: %w", d.ID, err))
						continue
					}
					v["_source"] = string(d.Body)
					if err := b.Index(d.ID, v); err != nil {
						fail(fmt.Errorf("document %s: %w", d.ID, err))
					}
				}
				if err := bb.idx.Batch(b); err != nil {
					fail(err)
				}
			}
		}()
	}
	for i := 0; i < len(docs); i += batch {
		work <- docs[i:min(i+batch, len(docs))]
	}
	close(work)
	wg.Wait()
	return time.Since(start), failed
}

// Close closes the baseline's index.
func (bb *BleveBaseline) Close() error { return bb.idx.Close() }
