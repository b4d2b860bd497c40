// A live view of one chunk: WatchChunk's snapshot, then its new records,
// re-watched with backoff when the stream breaks (a fresh snapshot replaces
// the state, as docs/query.md asks of clients).

import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { QueryService } from "./gen/canvass/v1/query_pb.js";
import type { GetChunkResponse, TimelineEntry } from "./gen/canvass/v1/query_pb.js";

/** ChunkState is what a watcher knows about its chunk. */
export interface ChunkState {
  chunk: bigint;
  /** entries are every known record of the chunk, newest first, one per id. */
  entries: TimelineEntry[];
  /** counters maps a locality (decimal) to its counters as of the last snapshot. */
  counters: Map<string, Record<string, bigint>>;
  /** live is true while the stream is open and past its snapshot. */
  live: boolean;
  /** error describes why the stream is down, or is empty. */
  error: string;
}

/** WatchOptions configure watchChunk. */
export interface WatchOptions {
  /** onChange is called with the state after every snapshot, record and stream change. */
  onChange: (s: ChunkState) => void;
  /** minBackoffMs is the first wait before re-watching (default 500 ms). */
  minBackoffMs?: number;
  /** maxBackoffMs caps the wait between re-watches (default 15 s). */
  maxBackoffMs?: number;
  /**
   * countersDelayMs: record events carry no counters, so this long after the
   * last event the counters are read again with one GetChunk (default
   * 300 ms; 0 turns it off).
   */
  countersDelayMs?: number;
}

function millis(e: TimelineEntry): number {
  return e.time ? Number(e.time.seconds) * 1000 + e.time.nanos / 1e6 : 0;
}

function sortEntries(entries: TimelineEntry[]): TimelineEntry[] {
  return entries.sort((a, b) => millis(b) - millis(a) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

/** applySnapshot returns the state a snapshot gives: it replaces everything known before. */
export function applySnapshot(s: ChunkState, snap: GetChunkResponse): void {
  const byId = new Map<string, TimelineEntry>();
  s.counters = new Map();
  for (const l of snap.localities) {
    s.counters.set(l.locality.toString(), { ...l.counters });
    for (const e of l.entries) byId.set(e.id, e);
  }
  s.entries = sortEntries([...byId.values()]);
}

/** applyRecord adds a new record to the state (once per id). */
export function applyRecord(s: ChunkState, e: TimelineEntry): void {
  if (s.entries.some((x) => x.id === e.id)) return;
  s.entries.push(e);
  sortEntries(s.entries);
}

/**
 * watchChunk watches a chunk until the returned stop function is called
 * (stop resolves once the stream ended). A broken stream is watched again
 * after a jittered exponential backoff; UNAUTHENTICATED and
 * PERMISSION_DENIED are retried too, more slowly, since a page may sign in
 * meanwhile.
 */
export function watchChunk(query: Client<typeof QueryService>, chunk: bigint, opts: WatchOptions): () => Promise<void> {
  const state: ChunkState = { chunk, entries: [], counters: new Map(), live: false, error: "" };
  const abort = new AbortController();
  const minB = opts.minBackoffMs ?? 500;
  const maxB = opts.maxBackoffMs ?? 15_000;
  const countersDelay = opts.countersDelayMs ?? 300;
  let countersTimer: ReturnType<typeof setTimeout> | undefined;
  const refreshCounters = () => {
    countersTimer = undefined;
    query.getChunk({ chunk, pageSize: 1 }, { signal: abort.signal }).then(
      (resp) => {
        for (const l of resp.localities) state.counters.set(l.locality.toString(), { ...l.counters });
        opts.onChange(state);
      },
      () => undefined, // the next event or snapshot tries again
    );
  };
  // stopped settles when stop() is called: every wait below races it, so
  // stop() ends the loop even if a transport's stream read does not end on
  // abort (a hung stop() held a CI run until its 240 s timeout).
  const stopped = new Promise<{ done: true; value: undefined }>((resolve) =>
    abort.signal.addEventListener("abort", () => resolve({ done: true, value: undefined }), { once: true }),
  );
  const run = async () => {
    let failures = 0;
    while (!abort.signal.aborted) {
      try {
        const events = query.watchChunk({ chunk }, { signal: abort.signal })[Symbol.asyncIterator]();
        for (;;) {
          const next = events.next();
          next.catch(() => undefined); // left behind on stop
          const r = await Promise.race([next, stopped]);
          if (r.done) break;
          const ev = r.value;
          if (ev.event.case === "snapshot") {
            applySnapshot(state, ev.event.value);
            state.live = true;
            state.error = "";
            failures = 0;
          } else if (ev.event.case === "record") {
            applyRecord(state, ev.event.value);
            if (countersDelay > 0) {
              if (countersTimer !== undefined) clearTimeout(countersTimer);
              countersTimer = setTimeout(refreshCounters, countersDelay);
            }
          }
          opts.onChange(state);
        }
        if (abort.signal.aborted) break;
        state.error = "stream ended by the server";
      } catch (e) {
        if (abort.signal.aborted) break;
        const ce = ConnectError.from(e);
        state.error = `${Code[ce.code]}: ${ce.rawMessage}`;
        if (ce.code === Code.Unauthenticated || ce.code === Code.PermissionDenied) failures += 2;
      }
      state.live = false;
      opts.onChange(state);
      failures++;
      const ceiling = Math.min(maxB, minB * 2 ** Math.min(failures - 1, 20));
      let t: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([new Promise<void>((resolve) => (t = setTimeout(resolve, ceiling * (0.5 + 0.5 * Math.random())))), stopped]);
      clearTimeout(t);
    }
  };
  const running = run();
  return async () => {
    abort.abort();
    if (countersTimer !== undefined) clearTimeout(countersTimer);
    await running;
  };
}
