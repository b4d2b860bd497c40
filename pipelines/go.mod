module github.com/chapper/chapper/pipelines

go 1.26.0

require google.golang.org/protobuf v1.36.12

replace (
	github.com/chapper/chapper/proto => ../proto
	github.com/chapper/chapper/services/devstack => ../services/devstack
)
