// The gRPC-web client of Chapper's two services, generated from proto/ by
// protoc-gen-es (src/gen) and spoken through @connectrpc/connect-web.

import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { IngestService } from "./gen/canvass/v1/canvass_pb.js";
import { QueryService } from "./gen/canvass/v1/query_pb.js";

/** ClientOptions configure createChapperClient. */
export interface ClientOptions {
  /** baseUrl is the gRPC port's URL, e.g. "http://127.0.0.1:7070" or location.origin. */
  baseUrl: string;
  /**
   * token returns the bearer token to send, or undefined/"" to send none
   * (the server may run with authentication off). It is called for every
   * call, so a page can sign in again without a new client.
   */
  token?: () => string | undefined;
  /** fetch overrides the fetch implementation (default globalThis.fetch). */
  fetch?: typeof globalThis.fetch;
}

/** ChapperClient holds one client per service, sharing one transport. */
export interface ChapperClient {
  ingest: Client<typeof IngestService>;
  query: Client<typeof QueryService>;
  transport: Transport;
}

/**
 * bearer returns an interceptor that sets `authorization: Bearer <token>`
 * (DESIGN.md, "Authentication") when token() returns a token.
 */
export function bearer(token: () => string | undefined): Interceptor {
  return (next) => async (req) => {
    const t = token()?.trim();
    if (t) req.header.set("authorization", `Bearer ${t}`);
    return next(req);
  };
}

/** createChapperClient returns the IngestService and QueryService clients over gRPC-web. */
export function createChapperClient(opts: ClientOptions): ChapperClient {
  const transport = createGrpcWebTransport({
    baseUrl: opts.baseUrl,
    useBinaryFormat: true,
    interceptors: opts.token ? [bearer(opts.token)] : [],
    fetch: opts.fetch,
  });
  return {
    ingest: createClient(IngestService, transport),
    query: createClient(QueryService, transport),
    transport,
  };
}

export { IngestService, QueryService };
