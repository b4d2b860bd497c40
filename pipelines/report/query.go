package report

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
)

// obj is a JSON object in a query.
type obj = map[string]any

// filters returns the bool filter clauses of a report on timeField.
func (p *Params) filters(timeField string) []any {
	f := []any{
		obj{"range": obj{timeField: obj{
			"gte":    p.From.UTC().Format(time.RFC3339Nano),
			"lt":     p.To.UTC().Format(time.RFC3339Nano),
			"format": "strict_date_optional_time",
		}}},
	}
	if p.Region >= 0 {
		f = append(f, obj{"term": obj{"region": p.Region}})
	}
	if !p.Box.IsZero() {
		f = append(f, geoBox(p.Box))
	}
	return f
}

func geoBox(b Box) obj {
	return obj{"geo_bounding_box": obj{"location": obj{
		"top_left":     obj{"lat": b.North, "lon": b.West},
		"bottom_right": obj{"lat": b.South, "lon": b.East},
	}}}
}

// searchBody is a size-0 search: the filters and the aggregations.
func searchBody(filters []any, aggs obj) obj {
	return obj{
		"size":             0,
		"track_total_hits": true,
		"query":            obj{"bool": obj{"filter": filters}},
		"aggs":             aggs,
	}
}

// searchResult is the part of a search response the reports read.
type searchResult struct {
	Hits struct {
		Total struct {
			Value int64 `json:"value"`
		} `json:"total"`
	} `json:"hits"`
	Aggregations map[string]json.RawMessage `json:"aggregations"`
}

// bucket is one aggregation bucket: its key, count and sub-aggregations.
type bucket struct {
	Key         json.RawMessage
	KeyAsString string
	DocCount    int64
	Aggs        map[string]json.RawMessage
}

func (b *bucket) UnmarshalJSON(data []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	b.Aggs = map[string]json.RawMessage{}
	for k, v := range m {
		var err error
		switch k {
		case "key":
			b.Key = v
		case "key_as_string":
			err = json.Unmarshal(v, &b.KeyAsString)
		case "doc_count":
			err = json.Unmarshal(v, &b.DocCount)
		default:
			b.Aggs[k] = v
		}
		if err != nil {
			return fmt.Errorf("decoding bucket field %s: %w", k, err)
		}
	}
	return nil
}

// StringKey returns a keyword bucket's key.
func (b *bucket) StringKey() (string, error) {
	var s string
	if err := json.Unmarshal(b.Key, &s); err != nil {
		return "", fmt.Errorf("decoding bucket key %s: %w", b.Key, err)
	}
	return s, nil
}

// IntKey returns a long or date bucket's key.
func (b *bucket) IntKey() (int64, error) {
	// A long key comes as a number; tolerate a string too.
	s := string(bytes.Trim(b.Key, `"`))
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("decoding bucket key %s: %w", b.Key, err)
	}
	return int64(f), nil
}

func buckets(raw json.RawMessage, name string) ([]bucket, error) {
	if raw == nil {
		return nil, fmt.Errorf("response has no aggregation %q", name)
	}
	var agg struct {
		Buckets []bucket `json:"buckets"`
	}
	if err := json.Unmarshal(raw, &agg); err != nil {
		return nil, fmt.Errorf("decoding aggregation %s: %w", name, err)
	}
	return agg.Buckets, nil
}

func value(raw json.RawMessage, name string) (int64, error) {
	if raw == nil {
		return 0, fmt.Errorf("response has no aggregation %q", name)
	}
	var agg struct {
		Value *float64 `json:"value"`
	}
	if err := json.Unmarshal(raw, &agg); err != nil {
		return 0, fmt.Errorf("decoding aggregation %s: %w", name, err)
	}
	if agg.Value == nil {
		return 0, nil
	}
	return int64(*agg.Value), nil
}

// errNoIndex marks a search of an alias that does not exist yet: nothing
// was indexed, so every report is empty.
var errNoIndex = errors.New("no index behind the alias")

// search runs one search on index and decodes the response.
func search(ctx context.Context, es *elasticsearch.Client, index string, body obj) (*searchResult, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encoding query: %w", err)
	}
	res, err := es.Search(
		es.Search.WithContext(ctx),
		es.Search.WithIndex(index),
		es.Search.WithBody(bytes.NewReader(b)),
	)
	if err != nil {
		return nil, fmt.Errorf("searching %s: %w", index, err)
	}
	defer res.Body.Close()
	if res.IsError() {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		if res.StatusCode == http.StatusNotFound {
			var e struct {
				Error struct {
					Type string `json:"type"`
				} `json:"error"`
			}
			if json.Unmarshal(msg, &e) == nil && e.Error.Type == "index_not_found_exception" {
				return nil, errNoIndex
			}
		}
		return nil, fmt.Errorf("searching %s: elasticsearch answered %d: %s", index, res.StatusCode, msg)
	}
	var out searchResult
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("decoding search response of %s: %w", index, err)
	}
	return &out, nil
}
