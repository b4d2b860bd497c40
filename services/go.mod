module github.com/chapper/chapper/services

go 1.26.0

require (
	github.com/chapper/chapper/pipelines v0.0.0
	github.com/chapper/chapper/proto v0.0.0
	github.com/chapper/chapper/services/devstack v0.0.0
)

replace (
	github.com/chapper/chapper/pipelines => ../pipelines
	github.com/chapper/chapper/proto => ../proto
	github.com/chapper/chapper/services/devstack => ./devstack
)
