package search

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chapper/chapper/proto/topic"
)

// kibanaDir holds the Kibana saved objects shipped with the chart.
const kibanaDir = "../../charts/chapper/kibana"

type savedObject struct {
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	Attributes json.RawMessage `json:"attributes"`
	References []struct {
		Name string `json:"name"`
		Type string `json:"type"`
		ID   string `json:"id"`
	} `json:"references"`
}

type lensColumn struct {
	OperationType string `json:"operationType"`
	SourceField   string `json:"sourceField"`
	DataType      string `json:"dataType"`
	Params        struct {
		OrderBy struct {
			ColumnID string `json:"columnId"`
		} `json:"orderBy"`
	} `json:"params"`
}

type lensAttributes struct {
	Title             string `json:"title"`
	VisualizationType string `json:"visualizationType"`
	State             struct {
		DatasourceStates struct {
			FormBased struct {
				Layers map[string]struct {
					Columns     map[string]lensColumn `json:"columns"`
					ColumnOrder []string              `json:"columnOrder"`
				} `json:"layers"`
			} `json:"formBased"`
		} `json:"datasourceStates"`
		Visualization json.RawMessage `json:"visualization"`
	} `json:"state"`
}

// TestKibanaSavedObjects checks that every data view reads a kind's alias
// with a date time field, and that every field a visualization uses exists
// in that kind's mappings with a type the operation accepts.
func TestKibanaSavedObjects(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(kibanaDir, "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no saved objects in %s (err %v)", kibanaDir, err)
	}
	names := Names{Prefix: "canvass"}
	aliasKind := map[string]topic.Kind{}
	for _, k := range topic.Kinds {
		aliasKind[names.Alias(k)] = k
	}
	fieldType := func(k topic.Kind, name string) string {
		for _, f := range Fields(k) {
			if f.Name == name {
				return f.Type
			}
		}
		return ""
	}

	objects := map[string]savedObject{}
	var order []string
	for _, file := range files {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for line := 1; sc.Scan(); line++ {
			if strings.TrimSpace(sc.Text()) == "" {
				continue
			}
			var o savedObject
			if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
				t.Fatalf("%s:%d: %v", file, line, err)
			}
			if _, dup := objects[o.ID]; dup {
				t.Errorf("%s:%d: duplicate id %s", file, line, o.ID)
			}
			objects[o.ID] = o
			order = append(order, o.ID)
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}

	dataViewKind := map[string]topic.Kind{}
	for _, id := range order {
		o := objects[id]
		if o.Type != "index-pattern" {
			continue
		}
		var a struct {
			Title         string `json:"title"`
			TimeFieldName string `json:"timeFieldName"`
		}
		if err := json.Unmarshal(o.Attributes, &a); err != nil {
			t.Fatalf("data view %s: %v", id, err)
		}
		k, ok := aliasKind[a.Title]
		if !ok {
			t.Errorf("data view %s reads %q, not one of the aliases", id, a.Title)
			continue
		}
		dataViewKind[id] = k
		if typ := fieldType(k, a.TimeFieldName); typ != "date" {
			t.Errorf("data view %s: time field %q has type %q in the %s mappings, want date", id, a.TimeFieldName, typ, k)
		}
	}
	if len(dataViewKind) != len(topic.Kinds) {
		t.Errorf("got %d data views, want one per kind (%d)", len(dataViewKind), len(topic.Kinds))
	}

	lenses, dashboards := 0, 0
	for _, id := range order {
		o := objects[id]
		switch o.Type {
		case "lens":
			lenses++
			t.Run("lens "+id, func(t *testing.T) { checkLens(t, o, dataViewKind, fieldType) })
		case "dashboard":
			dashboards++
			var a struct {
				PanelsJSON string `json:"panelsJSON"`
			}
			if err := json.Unmarshal(o.Attributes, &a); err != nil {
				t.Fatalf("dashboard %s: %v", id, err)
			}
			var panels []struct {
				PanelRefName string `json:"panelRefName"`
			}
			if err := json.Unmarshal([]byte(a.PanelsJSON), &panels); err != nil {
				t.Fatalf("dashboard %s panelsJSON: %v", id, err)
			}
			if len(panels) == 0 {
				t.Errorf("dashboard %s has no panels", id)
			}
			for _, p := range panels {
				found := false
				for _, r := range o.References {
					if r.Name == p.PanelRefName {
						found = true
						if ro, ok := objects[r.ID]; !ok || ro.Type != r.Type {
							t.Errorf("dashboard %s: panel %s references %s %s, not in the saved objects", id, p.PanelRefName, r.Type, r.ID)
						}
					}
				}
				if !found {
					t.Errorf("dashboard %s: panel %s has no reference", id, p.PanelRefName)
				}
			}
		case "index-pattern":
		default:
			t.Errorf("saved object %s has unexpected type %s", id, o.Type)
		}
	}
	if lenses == 0 || dashboards == 0 {
		t.Errorf("got %d visualizations and %d dashboards, want some of each", lenses, dashboards)
	}
}

func checkLens(t *testing.T, o savedObject, dataViewKind map[string]topic.Kind, fieldType func(topic.Kind, string) string) {
	var a lensAttributes
	if err := json.Unmarshal(o.Attributes, &a); err != nil {
		t.Fatal(err)
	}
	layers := a.State.DatasourceStates.FormBased.Layers
	if len(layers) == 0 {
		t.Fatal("no formBased layers")
	}
	for layerID, layer := range layers {
		var kind topic.Kind
		for _, r := range o.References {
			if r.Name == "indexpattern-datasource-layer-"+layerID {
				k, ok := dataViewKind[r.ID]
				if !ok {
					t.Fatalf("layer %s references data view %s, not in the saved objects", layerID, r.ID)
				}
				kind = k
			}
		}
		if kind == "" {
			t.Fatalf("layer %s has no data view reference", layerID)
		}
		if len(layer.ColumnOrder) != len(layer.Columns) {
			t.Errorf("layer %s: columnOrder has %d entries for %d columns", layerID, len(layer.ColumnOrder), len(layer.Columns))
		}
		for _, c := range layer.ColumnOrder {
			if _, ok := layer.Columns[c]; !ok {
				t.Errorf("layer %s: columnOrder names missing column %s", layerID, c)
			}
		}
		for colID, c := range layer.Columns {
			if c.OperationType == "count" && c.SourceField == "___records___" {
				continue
			}
			typ := fieldType(kind, c.SourceField)
			if typ == "" {
				t.Errorf("column %s uses field %q, not in the %s mappings", colID, c.SourceField, kind)
				continue
			}
			want := map[string][]string{
				"date_histogram": {"date"},
				"terms":          {"keyword", "long"},
				"unique_count":   {"keyword", "long", "date"},
			}[c.OperationType]
			if want == nil {
				t.Errorf("column %s: operation %q not checked by this test; add it", colID, c.OperationType)
			} else if !contains(want, typ) {
				t.Errorf("column %s: %s on %s field %q", colID, c.OperationType, typ, c.SourceField)
			}
			if ob := c.Params.OrderBy.ColumnID; ob != "" {
				if _, ok := layer.Columns[ob]; !ok {
					t.Errorf("column %s is ordered by missing column %s", colID, ob)
				}
			}
		}
		// Every accessor the visualization names must be a column.
		for _, id := range accessors(a.State.Visualization) {
			if _, ok := layer.Columns[id]; !ok {
				t.Errorf("visualization names column %s, not in layer %s", id, layerID)
			}
		}
	}
}

// accessors returns the column ids a Lens visualization state names.
func accessors(raw json.RawMessage) []string {
	var v any
	_ = json.Unmarshal(raw, &v)
	var out []string
	var walk func(any, string)
	walk = func(v any, key string) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(e, k)
			}
		case []any:
			for _, e := range x {
				walk(e, key)
			}
		case string:
			switch key {
			case "xAccessor", "splitAccessor", "metricAccessor", "columnId", "accessors":
				out = append(out, x)
			}
		}
	}
	walk(v, "")
	return out
}

func contains(s []string, v string) bool {
	for _, e := range s {
		if e == v {
			return true
		}
	}
	return false
}
