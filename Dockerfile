# syntax=docker/dockerfile:1
# The production image: one static chapper binary on an empty base. It
# cannot be built on the development machines (no Docker there); `make test`
# checks that the build command below is the Makefile's STATIC_BUILD and
# that it produces a static binary.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.work go.work.sum ./
COPY proto/go.mod proto/go.sum proto/
COPY pipelines/go.mod pipelines/go.sum pipelines/
COPY services/go.mod services/go.sum services/
COPY services/devstack/go.mod services/devstack/go.sum services/devstack/
COPY charts/go.mod charts/go.sum charts/
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download all
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/chapper ./services/cmd/chapper

FROM scratch
# CA roots for https to Elasticsearch, Kafka with TLS and Postgres with sslmode=verify-full.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/chapper /chapper
USER 65532:65532
EXPOSE 7070 7071
ENTRYPOINT ["/chapper"]
CMD ["serve", "-target=ingest"]
