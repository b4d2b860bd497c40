// Chapper's TypeScript client: the generated messages and services, a
// gRPC-web client, the offline queue and its stores, a chunk watcher and the
// locality index.

export * from "./gen/canvass/v1/canvass_pb.js";
export * from "./gen/canvass/v1/query_pb.js";
export { bearer, createChapperClient, type ChapperClient, type ClientOptions } from "./client.js";
export { OfflineQueue, retryDelayMs, type QueueOptions, type QueueStatus, type RecordOutcome, type Submitter } from "./queue.js";
export { IndexedDBStore, MemoryStore, type QueuedRecord, type QueueState, type QueueStore, type RecordKind } from "./store.js";
export { applyRecord, applySnapshot, watchChunk, type ChunkState, type WatchOptions } from "./watch.js";
export * from "./locality.js";
export { isUUID, uuidv7 } from "./uuid.js";
