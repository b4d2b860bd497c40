// The offline queue: records are saved in a QueueStore first, sent in
// batches, and retried with the same ids and backoff until a result comes
// back. ACCEPTED and DUPLICATE remove a record; CONFLICT and REJECTED keep it
// for the user to see and never resend it (resending cannot change the
// answer).

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  FollowupRequestSchema,
  IntentionSchema,
  Status,
  SubmitRequestSchema,
  VisitSchema,
  type FollowupRequest,
  type Intention,
  type SubmitRequest,
  type SubmitResponse,
  type Visit,
} from "./gen/canvass/v1/canvass_pb.js";
import type { QueuedRecord, QueueStore, RecordKind } from "./store.js";
import { isUUID, uuidv7 } from "./uuid.js";

/** Submitter sends one batch; with a ChapperClient: (req, o) => client.ingest.submit(req, o). */
export type Submitter = (req: SubmitRequest, opts: { signal: AbortSignal; timeoutMs: number }) => Promise<SubmitResponse>;

/** QueueOptions configure an OfflineQueue. */
export interface QueueOptions {
  store: QueueStore;
  submit: Submitter;
  /** batchSize is the most records per Submit (default 100; the server's limit is 500). */
  batchSize?: number;
  /** minBackoffMs is the first wait after a failed Submit (default 500 ms). */
  minBackoffMs?: number;
  /** maxBackoffMs caps the wait between retries (default 30 s). */
  maxBackoffMs?: number;
  /** timeoutMs bounds one Submit call (default 15 s). */
  timeoutMs?: number;
  /** random is the jitter source (default Math.random). */
  random?: () => number;
}

/** QueueStatus is what the page shows about the queue. */
export interface QueueStatus {
  /** unsent counts the records still to be sent (state "pending"). */
  unsent: number;
  /** problems are the records answered CONFLICT or REJECTED, oldest first. */
  problems: QueuedRecord[];
  /** lastError describes the last failed Submit; empty once a Submit got through. */
  lastError: string;
  /** waitingForToken is true after UNAUTHENTICATED or PERMISSION_DENIED, until wake(). */
  waitingForToken: boolean;
  /** nextRetryAt is when the next retry is due (ms since the epoch), or 0. */
  nextRetryAt: number;
}

/** RecordOutcome is the server's answer for one queued record. */
export interface RecordOutcome {
  id: string;
  kind: RecordKind;
  status: Status;
  reason: string;
  conflictingFields: string[];
  locality: bigint;
}

const KIND_ORDER: RecordKind[] = ["visit", "intention", "followup"];

/** isGone reports whether a status removes a record from the queue. */
function isGone(s: Status): boolean {
  return s === Status.ACCEPTED || s === Status.DUPLICATE;
}

/**
 * retryDelayMs returns the delay of a google.rpc.RetryInfo detail of e (the
 * server's advice with RESOURCE_EXHAUSTED), or undefined.
 */
export function retryDelayMs(e: ConnectError): number | undefined {
  for (const d of e.details) {
    if (!("type" in d) || d.type !== "google.rpc.RetryInfo") continue;
    // RetryInfo { google.protobuf.Duration retry_delay = 1; }, Duration { int64 seconds = 1; int32 nanos = 2; }
    const r = new BinaryReader(d.value);
    while (r.pos < r.len) {
      const [field, wt] = r.tag();
      if (field !== 1 || wt !== WireType.LengthDelimited) {
        r.skip(wt);
        continue;
      }
      const dr = new BinaryReader(r.bytes());
      let seconds = 0;
      let nanos = 0;
      while (dr.pos < dr.len) {
        const [f, w] = dr.tag();
        if (f === 1) seconds = Number(dr.int64());
        else if (f === 2) nanos = dr.int32();
        else dr.skip(w);
      }
      return seconds * 1000 + nanos / 1e6;
    }
  }
  return undefined;
}

/**
 * OfflineQueue saves records in its store and sends them. Call start() to
 * send in the background (the page does), or flush() to send once (tests
 * and tools do). Methods may be called concurrently; sends never overlap.
 */
export class OfflineQueue {
  private readonly store: QueueStore;
  private readonly submit: Submitter;
  private batchSize: number;
  private readonly minBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly timeoutMs: number;
  private readonly random: () => number;

  private chain: Promise<unknown> = Promise.resolve();
  private listeners = new Set<(s: QueueStatus) => void>();
  private resultListeners = new Set<(o: RecordOutcome[]) => void>();
  private lastError = "";
  private waitingForToken = false;
  private nextRetryAt = 0;
  private failures = 0;
  private running?: Promise<void>;
  private stopped = false;
  private abort?: AbortController;
  private idleWake?: () => void;
  private backoffWake?: () => void;

  constructor(opts: QueueOptions) {
    this.store = opts.store;
    this.submit = opts.submit;
    this.batchSize = Math.max(1, Math.min(opts.batchSize ?? 100, 500));
    this.minBackoffMs = opts.minBackoffMs ?? 500;
    this.maxBackoffMs = opts.maxBackoffMs ?? 30_000;
    this.timeoutMs = opts.timeoutMs ?? 15_000;
    this.random = opts.random ?? Math.random;
  }

  /** addVisit queues a visit (giving it a new UUIDv7 id if it has none) and returns its id. */
  addVisit(v: Visit): Promise<string> {
    return this.add("visit", v);
  }

  /** addIntention queues an intention and returns its id. */
  addIntention(i: Intention): Promise<string> {
    return this.add("intention", i);
  }

  /** addFollowup queues a follow-up request and returns its id. */
  addFollowup(f: FollowupRequest): Promise<string> {
    return this.add("followup", f);
  }

  private async add(kind: RecordKind, msg: Visit | Intention | FollowupRequest): Promise<string> {
    if (!msg.id) msg.id = uuidv7();
    if (!isUUID(msg.id)) throw new RangeError(`${kind}.id: must be a UUID, got ${JSON.stringify(msg.id)}`);
    if (msg.replacesId && !isUUID(msg.replacesId)) {
      throw new RangeError(`${kind}.replaces_id: must be a UUID, got ${JSON.stringify(msg.replacesId)}`);
    }
    const payload =
      kind === "visit"
        ? toBinary(VisitSchema, msg as Visit)
        : kind === "intention"
          ? toBinary(IntentionSchema, msg as Intention)
          : toBinary(FollowupRequestSchema, msg as FollowupRequest);
    await this.store.put([{ id: msg.id, kind, payload, queuedAt: Date.now(), attempts: 0, state: "pending" }]);
    await this.emit();
    this.idleWake?.();
    return msg.id;
  }

  /** status returns the queue's state now. */
  async status(): Promise<QueueStatus> {
    const all = await this.store.list();
    return {
      unsent: all.filter((r) => r.state === "pending").length,
      problems: all.filter((r) => r.state !== "pending"),
      lastError: this.lastError,
      waitingForToken: this.waitingForToken,
      nextRetryAt: this.nextRetryAt,
    };
  }

  /** subscribe calls fn with the status after every change; it returns the unsubscribe function. */
  subscribe(fn: (s: QueueStatus) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** onResults calls fn with the outcomes of every batch the server answered. */
  onResults(fn: (o: RecordOutcome[]) => void): () => void {
    this.resultListeners.add(fn);
    return () => this.resultListeners.delete(fn);
  }

  /** dismiss removes a conflicting or rejected record the user has seen. */
  async dismiss(id: string): Promise<void> {
    await this.store.delete([id]);
    await this.emit();
  }

  /** decode returns the message of a queued record. */
  static decode(r: QueuedRecord): Visit | Intention | FollowupRequest {
    switch (r.kind) {
      case "visit":
        return fromBinary(VisitSchema, r.payload);
      case "intention":
        return fromBinary(IntentionSchema, r.payload);
      default:
        return fromBinary(FollowupRequestSchema, r.payload);
    }
  }

  private async emit(): Promise<void> {
    if (this.listeners.size === 0) return;
    const s = await this.status();
    for (const fn of this.listeners) fn(s);
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /**
   * flush sends every pending record once, in batches, and returns the
   * outcomes. It rejects with the ConnectError of the first Submit that got
   * no answer (network down, UNAVAILABLE, RESOURCE_EXHAUSTED,
   * UNAUTHENTICATED, ...); the records of that batch stay pending with the
   * same ids. A whole batch refused with INVALID_ARGUMENT (over the
   * server's batch limit) is split and sent again; a single record refused
   * so is marked rejected.
   */
  flush(): Promise<RecordOutcome[]> {
    return this.exclusive(() => this.flushLocked());
  }

  private async flushLocked(): Promise<RecordOutcome[]> {
    const out: RecordOutcome[] = [];
    for (;;) {
      if (this.stopped) throw new ConnectError("offline queue stopped", Code.Canceled);
      const pending = (await this.store.list()).filter((r) => r.state === "pending");
      if (pending.length === 0) return out;
      const batch = pending.slice(0, this.batchSize);
      // Results come in request order: visits, then intentions, then follow-ups.
      const ordered = KIND_ORDER.flatMap((k) => batch.filter((r) => r.kind === k));
      const req = create(SubmitRequestSchema);
      for (const r of ordered) {
        const m = OfflineQueue.decode(r);
        if (r.kind === "visit") req.visits.push(m as Visit);
        else if (r.kind === "intention") req.intentions.push(m as Intention);
        else req.followups.push(m as FollowupRequest);
        r.attempts++;
      }
      await this.store.put(ordered);

      let resp: SubmitResponse;
      this.abort = new AbortController();
      try {
        resp = await this.submit(req, { signal: this.abort.signal, timeoutMs: this.timeoutMs });
      } catch (e) {
        const ce = ConnectError.from(e);
        if (ce.code !== Code.InvalidArgument) throw ce;
        if (ordered.length > 1) {
          this.batchSize = Math.ceil(ordered.length / 2);
          continue;
        }
        ordered[0].state = "rejected";
        ordered[0].reason = ce.rawMessage;
        await this.store.put(ordered);
        out.push({ id: ordered[0].id, kind: ordered[0].kind, status: Status.REJECTED, reason: ce.rawMessage, conflictingFields: [], locality: 0n });
        await this.emit();
        continue;
      } finally {
        this.abort = undefined;
      }
      if (resp.results.length !== ordered.length) {
        throw new ConnectError(`submit answered ${resp.results.length} results for ${ordered.length} records`, Code.Internal);
      }
      const gone: string[] = [];
      const kept: QueuedRecord[] = [];
      const outcomes: RecordOutcome[] = [];
      let unanswered = 0;
      resp.results.forEach((res, i) => {
        const r = ordered[i];
        if (res.id !== r.id) {
          unanswered++;
          return;
        }
        outcomes.push({ id: r.id, kind: r.kind, status: res.status, reason: res.reason, conflictingFields: [...res.conflictingFields], locality: res.locality });
        if (isGone(res.status)) {
          gone.push(r.id);
        } else if (res.status === Status.CONFLICT || res.status === Status.REJECTED) {
          r.state = res.status === Status.CONFLICT ? "conflict" : "rejected";
          r.reason = res.reason;
          r.conflictingFields = [...res.conflictingFields];
          kept.push(r);
        } else {
          unanswered++;
        }
      });
      await this.store.delete(gone);
      if (kept.length) await this.store.put(kept);
      out.push(...outcomes);
      for (const fn of this.resultListeners) fn(outcomes);
      await this.emit();
      if (unanswered > 0) {
        // An answer the client does not understand is no answer: keep the records and retry later.
        throw new ConnectError(`submit gave no usable result for ${unanswered} records`, Code.Internal);
      }
    }
  }

  /**
   * start sends in the background until stop(): whenever records are
   * pending, and again after a failure with exponential backoff (full
   * jitter between half and all of min·2^n, capped at maxBackoffMs, and no
   * shorter than the server's RetryInfo). After UNAUTHENTICATED or
   * PERMISSION_DENIED it waits for wake() (a new token).
   */
  start(): void {
    if (this.running) return;
    this.stopped = false;
    this.running = this.loop();
  }

  /** wake retries now: the network is back or the user signed in again. */
  wake(): void {
    this.waitingForToken = false;
    this.idleWake?.();
    this.backoffWake?.();
  }

  /** stop ends the background sending, cancelling a Submit in flight, and resolves when it ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.abort?.abort();
    this.idleWake?.();
    this.backoffWake?.();
    await this.running;
    this.running = undefined;
  }

  private wait(ms: number | undefined, kind: "idle" | "backoff"): Promise<void> {
    return new Promise((resolve) => {
      let t: ReturnType<typeof setTimeout> | undefined;
      const done = () => {
        if (t !== undefined) clearTimeout(t);
        if (kind === "idle") this.idleWake = undefined;
        else this.backoffWake = undefined;
        resolve();
      };
      if (ms !== undefined) t = setTimeout(done, ms);
      if (kind === "idle") this.idleWake = done;
      else this.backoffWake = done;
    });
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const s = await this.status();
      if (s.unsent === 0 || this.waitingForToken) {
        await this.wait(undefined, "idle");
        continue;
      }
      try {
        await this.flush();
        this.failures = 0;
        this.lastError = "";
        this.nextRetryAt = 0;
        await this.emit();
      } catch (e) {
        if (this.stopped) break;
        const ce = ConnectError.from(e);
        this.lastError = `${Code[ce.code]}: ${ce.rawMessage}`;
        if (ce.code === Code.Unauthenticated || ce.code === Code.PermissionDenied) {
          this.waitingForToken = true;
          this.nextRetryAt = 0;
          await this.emit();
          continue;
        }
        this.failures++;
        const ceiling = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** Math.min(this.failures - 1, 30));
        let delay = ceiling * (0.5 + 0.5 * this.random());
        const advised = retryDelayMs(ce);
        if (advised !== undefined) delay = Math.max(delay, Math.min(advised, this.maxBackoffMs));
        this.nextRetryAt = Date.now() + delay;
        await this.emit();
        await this.wait(delay, "backoff");
      }
    }
  }
}
