package server

// grpc-web v0.15.0 requires a 2021 google.golang.org/genproto that still
// holds googleapis/rpc/status, which grpc now takes from its own module
// (google.golang.org/genproto/googleapis/rpc): with both in the build the
// import is ambiguous. Requiring a current genproto fixes it, and this
// import of one of its (tiny) packages keeps `go mod tidy` from dropping
// that requirement again.
import _ "google.golang.org/genproto/googleapis/type/latlng"
