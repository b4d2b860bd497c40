package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MetadataAuthorization is the metadata key of the bearer token.
const MetadataAuthorization = "authorization"

// rule is what a method requires.
type rule struct {
	public bool   // no token needed (health, reflection)
	roles  []Role // roles allowed
	area   bool   // the request names a chunk that must be inside the token's area
}

var (
	readRoles  = []Role{RoleCanvasser, RoleReader, RoleOperator}
	writeRoles = []Role{RoleCanvasser, RoleOperator}
)

// rules are the methods Chapper serves. A method not listed needs the
// operator role, so a service added later is closed until it is listed.
var rules = map[string]rule{
	canvassv1.IngestService_Submit_FullMethodName:    {roles: writeRoles},
	canvassv1.QueryService_GetChunk_FullMethodName:   {roles: readRoles, area: true},
	canvassv1.QueryService_WatchChunk_FullMethodName: {roles: readRoles, area: true},
}

// publicPrefixes are the services anyone may call: health checks (probes
// carry no token) and reflection (the schema is public; grpcurl uses it).
var publicPrefixes = []string{"/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"}

func ruleFor(method string) rule {
	if r, ok := rules[method]; ok {
		return r
	}
	for _, p := range publicPrefixes {
		if strings.HasPrefix(method, p) {
			return rule{public: true}
		}
	}
	return rule{roles: []Role{RoleOperator}}
}

var deniedTotal = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "chapper_auth_denied_total",
	Help: "Calls refused by authentication or authorisation, by gRPC code (Unauthenticated, PermissionDenied) and reason.",
}, []string{"code", "reason"})

// Interceptors checks every call's token. Create it with NewInterceptors
// and install Unary and Stream on the gRPC server; it is safe for
// concurrent use.
type Interceptors struct {
	v *Verifier
}

// NewInterceptors returns interceptors checking tokens with v.
func NewInterceptors(v *Verifier) *Interceptors { return &Interceptors{v: v} }

// authenticate checks the call's token against the method's rule and
// returns the claims (nil for a public method).
func (in *Interceptors) authenticate(ctx context.Context, method string) (*Claims, rule, error) {
	r := ruleFor(method)
	if r.public {
		return nil, r, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(MetadataAuthorization)
	if len(vals) == 0 {
		deniedTotal.WithLabelValues("Unauthenticated", "missing").Inc()
		return nil, r, status.Error(codes.Unauthenticated, ErrNoToken.Error())
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		deniedTotal.WithLabelValues("Unauthenticated", "malformed").Inc()
		return nil, r, status.Error(codes.Unauthenticated, "authorization metadata must be \"Bearer <token>\"")
	}
	claims, err := in.v.Verify(strings.TrimSpace(token))
	if err != nil {
		deniedTotal.WithLabelValues("Unauthenticated", reasonOf(err)).Inc()
		return nil, r, status.Error(codes.Unauthenticated, "invalid token: "+err.Error())
	}
	if !slices.Contains(r.roles, claims.Role) {
		deniedTotal.WithLabelValues("PermissionDenied", "role").Inc()
		return nil, r, status.Errorf(codes.PermissionDenied, "role %s may not call %s (allowed: %v)", claims.Role, method, r.roles)
	}
	return claims, r, nil
}

// reasonOf classes a verification error for the metric.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "not_yet_valid"
	case errors.Is(err, ErrUnknownKid):
		return "unknown_kid"
	case errors.Is(err, ErrWrongAlg), errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "signature"
	}
	return "claims"
}

// chunkRequest is GetChunkRequest and WatchChunkRequest: a location or a
// chunk.
type chunkRequest interface {
	GetLocation() *canvassv1.Location
	GetChunk() int64
}

// checkArea refuses a request for a chunk outside the token's area. A
// request whose chunk cannot be computed passes: the service answers
// INVALID_ARGUMENT for it.
func checkArea(c *Claims, req any) error {
	if c == nil || c.Area == nil {
		return nil
	}
	cr, ok := req.(chunkRequest)
	if !ok {
		return nil
	}
	var chunks []int64
	if l := cr.GetLocation(); l != nil {
		if idx, err := locality.Of(l.GetLatitude(), l.GetLongitude()); err == nil {
			chunks = append(chunks, idx.Chunk())
		}
	}
	if ch := cr.GetChunk(); ch != 0 {
		chunks = append(chunks, ch)
	}
	for _, ch := range chunks {
		if !c.Area.AllowsChunk(ch) {
			deniedTotal.WithLabelValues("PermissionDenied", "area").Inc()
			return status.Errorf(codes.PermissionDenied, "chunk %d is outside the token's area", ch)
		}
	}
	return nil
}

// Unary is the unary server interceptor.
func (in *Interceptors) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	claims, r, err := in.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if claims == nil {
		return handler(ctx, req)
	}
	if r.area {
		if err := checkArea(claims, req); err != nil {
			return nil, err
		}
	}
	return handler(NewContext(ctx, claims), req)
}

// Stream is the stream server interceptor. The area of a server-streaming
// call is checked on its request message, when the handler receives it.
func (in *Interceptors) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	claims, r, err := in.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	if claims == nil {
		return handler(srv, ss)
	}
	return handler(srv, &stream{ServerStream: ss, ctx: NewContext(ss.Context(), claims), claims: claims, area: r.area})
}

// stream carries the claims in its context and checks each received
// request against the token's area.
type stream struct {
	grpc.ServerStream
	ctx    context.Context
	claims *Claims
	area   bool
}

func (s *stream) Context() context.Context { return s.ctx }

func (s *stream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.area {
		if err := checkArea(s.claims, m); err != nil {
			return err
		}
	}
	return nil
}

// ServerOptions returns the gRPC server options installing the
// interceptors.
func (in *Interceptors) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(in.Unary), grpc.ChainStreamInterceptor(in.Stream)}
}

// String describes the interceptors for logs.
func (in *Interceptors) String() string {
	return fmt.Sprintf("auth(keys %v)", in.v.keys.IDs())
}
