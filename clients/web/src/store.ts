// Where the offline queue keeps records until the server answered for
// them: IndexedDB in the browser, memory (or fake-indexeddb) in Node tests.
// The queue needs only this small interface.

/** RecordKind names the three record kinds of SubmitRequest. */
export type RecordKind = "visit" | "intention" | "followup";

/**
 * QueueState is a queued record's state: "pending" records are sent (and
 * retried) until a result comes back; "conflict" and "rejected" records got
 * that answer, are kept for the user to see and are never resent.
 */
export type QueueState = "pending" | "conflict" | "rejected";

/** QueuedRecord is one record in the queue, stored as its protobuf bytes. */
export interface QueuedRecord {
  /** id is the record's id (a UUID), the same on every retry. */
  id: string;
  kind: RecordKind;
  /** payload is the record's protobuf encoding (canvass.v1.Visit, Intention or FollowupRequest). */
  payload: Uint8Array;
  /** queuedAt is when the record was queued, in ms since the epoch; records are sent oldest first. */
  queuedAt: number;
  /** attempts counts the Submit calls that carried the record. */
  attempts: number;
  state: QueueState;
  /** reason is the server's reason for a conflict or rejection. */
  reason?: string;
  /** conflictingFields names the fields that differ from the accepted record (conflict only). */
  conflictingFields?: string[];
}

/**
 * QueueStore durably keeps queued records. put replaces a record with the
 * same id; list returns every record oldest first; delete ignores ids it
 * does not hold. Each method resolves once the change is durable.
 */
export interface QueueStore {
  put(records: QueuedRecord[]): Promise<void>;
  list(): Promise<QueuedRecord[]>;
  delete(ids: string[]): Promise<void>;
}

function byAge(a: QueuedRecord, b: QueuedRecord): number {
  return a.queuedAt - b.queuedAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** MemoryStore is a QueueStore in memory: it forgets everything when the process ends. */
export class MemoryStore implements QueueStore {
  private records = new Map<string, QueuedRecord>();

  async put(records: QueuedRecord[]): Promise<void> {
    for (const r of records) this.records.set(r.id, structuredClone(r));
  }

  async list(): Promise<QueuedRecord[]> {
    return [...this.records.values()].map((r) => structuredClone(r)).sort(byAge);
  }

  async delete(ids: string[]): Promise<void> {
    for (const id of ids) this.records.delete(id);
  }
}

const OBJECT_STORE = "records";

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

/**
 * IndexedDBStore is a QueueStore in an IndexedDB database (object store
 * "records", key path "id"), so queued records survive a reload, a closed
 * tab and a restarted phone.
 */
export class IndexedDBStore implements QueueStore {
  private constructor(private db: IDBDatabase) {}

  /**
   * open opens (creating if needed) the database name with factory (default
   * globalThis.indexedDB).
   */
  static async open(name = "chapper-queue", factory: IDBFactory = globalThis.indexedDB): Promise<IndexedDBStore> {
    if (!factory) throw new Error("opening the offline queue: IndexedDB is not available here");
    const req = factory.open(name, 1);
    req.onupgradeneeded = () => {
      if (!req.result.objectStoreNames.contains(OBJECT_STORE)) {
        req.result.createObjectStore(OBJECT_STORE, { keyPath: "id" });
      }
    };
    try {
      return new IndexedDBStore(await request(req));
    } catch (e) {
      throw new Error(`opening the offline queue database ${name}: ${String(e)}`, { cause: e });
    }
  }

  async put(records: QueuedRecord[]): Promise<void> {
    const tx = this.db.transaction(OBJECT_STORE, "readwrite");
    const os = tx.objectStore(OBJECT_STORE);
    for (const r of records) os.put(r);
    await done(tx);
  }

  async list(): Promise<QueuedRecord[]> {
    const tx = this.db.transaction(OBJECT_STORE, "readonly");
    const all = await request(tx.objectStore(OBJECT_STORE).getAll() as IDBRequest<QueuedRecord[]>);
    return all.sort(byAge);
  }

  async delete(ids: string[]): Promise<void> {
    const tx = this.db.transaction(OBJECT_STORE, "readwrite");
    const os = tx.objectStore(OBJECT_STORE);
    for (const id of ids) os.delete(id);
    await done(tx);
  }

  /** close closes the database connection. */
  close(): void {
    this.db.close();
  }
}
