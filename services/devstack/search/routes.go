package search

// routes is the REST API the server answers, in matching order. Adding an
// endpoint is one entry here and a handler in its family's file; adding a
// URL parameter is a word in params (and its use in the handler).
var routes = []*endpoint{
	// cluster (cat.go)
	{name: "info", methods: "GET HEAD", paths: []string{"/"}, handle: (*Server).handleInfo},
	{name: "health", methods: "GET", paths: []string{"/_cluster/health", "/_cluster/health/{index}"},
		params: []string{"local", "master_timeout", "timeout", "wait_for_active_shards", "wait_for_nodes", "wait_for_events", "wait_for_no_relocating_shards", "wait_for_no_initializing_shards", "wait_for_status"},
		handle: (*Server).handleHealth},
	{name: "cat", methods: "GET", paths: []string{"/_cat/indices", "/_cat/indices/{index}"},
		params: []string{"v", "local", "master_timeout", "expand_wildcards"},
		handle: (*Server).handleCatIndices},
	{name: "cat", methods: "GET", paths: []string{"/_cat/aliases", "/_cat/aliases/{name}"},
		params: []string{"v", "local", "master_timeout", "expand_wildcards"},
		handle: (*Server).handleCatAliases},

	// documents (bulk.go, documents.go)
	{name: "bulk", methods: "POST PUT", paths: []string{"/_bulk", "/{index}/_bulk"},
		params: with(writeParams, "_source", "_source_includes", "_source_excludes"),
		refuse: []string{"pipeline", "routing"},
		handle: (*Server).handleBulk},
	{name: "doc", methods: "POST", paths: []string{"/{index}/_doc"},
		params: docWriteParams, refuse: docWriteRefused, handle: (*Server).handleIndexDoc},
	{name: "doc", methods: "PUT POST", paths: []string{"/{index}/_doc/{id}", "/{index}/_create/{id}"},
		params: docWriteParams, refuse: docWriteRefused, handle: (*Server).handleIndexDoc},
	{name: "doc", methods: "DELETE", paths: []string{"/{index}/_doc/{id}"},
		params: docWriteParams, refuse: docWriteRefused, handle: (*Server).handleDeleteDoc},
	{name: "doc", methods: "GET HEAD", paths: []string{"/{index}/_doc/{id}", "/{index}/_source/{id}"},
		params: docGetParams, refuse: []string{"stored_fields", "routing"},
		handle: (*Server).handleGetDoc},

	// search (search.go)
	{name: "search", methods: "GET POST", paths: []string{"/_search", "/{index}/_search"},
		params: searchParams, object: true, handle: (*Server).handleSearch},
	{name: "count", methods: "GET POST", paths: []string{"/_count", "/{index}/_count"},
		params: with(resolveParams, "preference", "analyzer", "default_operator", "df", "lenient", "ignore_throttled", "analyze_wildcard"),
		refuse: []string{"q", "routing", "min_score", "terminate_after"},
		object: true, handle: (*Server).handleCount},

	// indices (indices.go)
	{name: "refresh", methods: "GET POST", paths: []string{"/_refresh", "/{index}/_refresh"},
		params: resolveParams, handle: (*Server).handleRefresh},
	{name: "index", methods: "PUT", paths: []string{"/{index}"},
		params: []string{"wait_for_active_shards", "timeout", "master_timeout"},
		object: true, handle: (*Server).handleCreateIndex},
	{name: "index", methods: "DELETE", paths: []string{"/{index}"},
		params: with(resolveParams, "timeout", "master_timeout"), handle: (*Server).handleDeleteIndex},
	{name: "index", methods: "GET HEAD", paths: []string{"/{index}"},
		params: with(resolveParams, "flat_settings", "include_defaults", "local", "master_timeout", "features"),
		handle: (*Server).handleGetIndex},
	{name: "mapping", methods: "GET", paths: []string{"/_mapping", "/{index}/_mapping"},
		params: with(resolveParams, "local", "master_timeout"), handle: (*Server).handleGetMapping},
	{name: "mapping", methods: "PUT POST", paths: []string{"/{index}/_mapping"},
		params: with(resolveParams, "timeout", "master_timeout", "write_index_only"),
		object: true, handle: (*Server).handlePutMapping},
	{name: "settings", methods: "GET", paths: []string{"/_settings", "/{index}/_settings"},
		params: with(resolveParams, "flat_settings", "include_defaults", "local", "master_timeout"),
		handle: (*Server).handleGetSettings},

	// aliases (aliases.go)
	{name: "aliases", methods: "POST", paths: []string{"/_aliases"},
		params: []string{"timeout", "master_timeout"}, object: true, handle: (*Server).handleAliasActions},
	{name: "aliases", methods: "GET HEAD", paths: []string{"/_alias", "/_alias/{name}", "/_aliases", "/_aliases/{name}",
		"/{index}/_alias", "/{index}/_alias/{name}", "/{index}/_aliases", "/{index}/_aliases/{name}"},
		params: with(resolveParams, "local", "master_timeout"), handle: (*Server).handleGetAlias},
	{name: "aliases", methods: "PUT POST DELETE", paths: []string{"/{index}/_alias/{name}", "/{index}/_aliases/{name}"},
		params: []string{"timeout", "master_timeout"}, object: true, handle: (*Server).handleIndexAlias},
	{name: "aliases", methods: "PUT POST DELETE", paths: []string{"/{index}/_alias", "/{index}/_aliases"},
		handle: func(*Server, *request) *esError { return badRequest("alias name is missing") }},

	// index templates (templates.go)
	{name: "index_template", methods: "PUT POST", paths: []string{"/_index_template/{name}"},
		params: []string{"create", "master_timeout", "cause"}, handle: (*Server).handlePutTemplate},
	{name: "index_template", methods: "GET HEAD", paths: []string{"/_index_template", "/_index_template/{name}"},
		params: []string{"flat_settings", "include_defaults", "local", "master_timeout"}, handle: (*Server).handleGetTemplate},
	{name: "index_template", methods: "DELETE", paths: []string{"/_index_template/{name}"},
		params: []string{"master_timeout", "timeout"}, handle: (*Server).handleDeleteTemplate},
	{name: "other", paths: []string{"/_template", "/_template/{name}"}, handle: func(*Server, *request) *esError {
		return unsupported("illegal_argument_exception", "legacy index templates [/_template]; use [/_index_template]")
	}},
}

// writeParams are the URL parameters every write takes.
var writeParams = []string{"refresh", "timeout", "wait_for_active_shards", "require_alias", "op_type", "require_data_stream", "list_executed_pipelines", "master_timeout"}

var (
	docWriteParams  = with(writeParams, "if_seq_no", "if_primary_term", "version", "version_type")
	docWriteRefused = []string{"routing", "pipeline"}
	docGetParams    = []string{"_source", "_source_includes", "_source_excludes", "realtime", "refresh", "preference", "version", "version_type"}
)

// handleInfo answers GET /.
func (s *Server) handleInfo(req *request) *esError {
	req.ok(s.info())
	return nil
}
