// The canvassing page served at /app/: sign in with a token, pick a
// locality on a map drawn from the locality grid, record visits and
// intentions through the offline queue (IndexedDB), correct a record, and
// watch the chunk's timeline live over gRPC-web.

import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createChapperClient } from "../client.js";
import { IntentionSchema, Outcome, Status, VisitSchema, type Intention, type Visit } from "../gen/canvass/v1/canvass_pb.js";
import type { TimelineEntry } from "../gen/canvass/v1/query_pb.js";
import { CHUNK_COLS, cellCentre, cellOf, chunkCells, chunkOfCell, indexOfCell, type Cell } from "../locality.js";
import { OfflineQueue, type QueueStatus } from "../queue.js";
import { IndexedDBStore, MemoryStore, type QueueStore } from "../store.js";
import { watchChunk, type ChunkState } from "../watch.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const TOKEN_KEY = "chapper.token";
const CANVASSER_KEY = "chapper.canvasser";

interface PageState {
  token: string;
  canvasser: string;
  cell: Cell;
  point: { latitude: number; longitude: number };
  chunk: number;
  lastVisitId: string;
  correcting?: { kind: "visit" | "intention"; id: string };
  view?: ChunkState;
}

const state: PageState = {
  token: localStorage.getItem(TOKEN_KEY) ?? "",
  canvasser: localStorage.getItem(CANVASSER_KEY) ?? "",
  cell: { row: 0, col: 0 },
  point: { latitude: 0, longitude: 0 },
  chunk: 0,
  lastVisitId: "",
};

const client = createChapperClient({ baseUrl: location.origin, token: () => state.token });

/** claims decodes a JWT's payload for display only; the server checks it. */
function claims(token: string): Record<string, unknown> | undefined {
  try {
    const p = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(p + "=".repeat((4 - (p.length % 4)) % 4)));
  } catch {
    return undefined;
  }
}

function showSignedIn(): void {
  const el = $("signed-in");
  if (!state.token) {
    el.textContent = state.canvasser ? `no token; canvasser ${state.canvasser}` : "not signed in (no token)";
    return;
  }
  const c = claims(state.token);
  const who = c ? String(c["canvasser"] ?? c["sub"] ?? "?") : "?";
  const role = c?.["role"] ? ` (${String(c["role"])})` : "";
  const exp = typeof c?.["exp"] === "number" ? `, until ${new Date((c["exp"] as number) * 1000).toLocaleTimeString()}` : "";
  el.textContent = `signed in as ${who}${role}${exp}`;
}

// ---- the map: the 5 × 5 localities of the chunk around the point --------

const grid = $<HTMLCanvasElement>("grid");

function drawGrid(): void {
  const ctx = grid.getContext("2d");
  if (!ctx) return;
  const side = grid.width / 5;
  ctx.clearRect(0, 0, grid.width, grid.height);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  const cells = chunkCells(state.chunk);
  const row0 = Math.floor(state.chunk / CHUNK_COLS) * 5;
  const col0 = (state.chunk % CHUNK_COLS) * 5;
  for (const c of cells) {
    const x = (c.col - col0) * side;
    const y = (4 - (c.row - row0)) * side;
    const counters = state.view?.counters.get(String(indexOfCell(c)));
    const visits = counters ? Number(counters["visits"] ?? 0n) : 0;
    ctx.fillStyle = visits > 0 ? `rgba(29, 78, 137, ${Math.min(0.15 + visits * 0.1, 0.7)})` : "#f7f9fb";
    ctx.fillRect(x, y, side, side);
    ctx.strokeStyle = "#9aa8b6";
    ctx.strokeRect(x + 0.5, y + 0.5, side - 1, side - 1);
    if (c.row === state.cell.row && c.col === state.cell.col) {
      grid.dataset.visits = String(visits);
      ctx.strokeStyle = "#f0b429";
      ctx.lineWidth = 4;
      ctx.strokeRect(x + 2, y + 2, side - 4, side - 4);
      ctx.lineWidth = 1;
    }
    ctx.fillStyle = visits > 3 ? "#fff" : "#5b6b7c";
    ctx.fillText(visits ? `${visits} visit${visits === 1 ? "" : "s"}` : "·", x + side / 2, y + side / 2);
  }
}

let stopWatch: (() => Promise<void>) | undefined;

async function selectPoint(latitude: number, longitude: number): Promise<void> {
  let cell: Cell;
  try {
    cell = cellOf(latitude, longitude);
    $("where-error").textContent = "";
  } catch (e) {
    $("where-error").textContent = (e as Error).message;
    return;
  }
  state.point = { latitude, longitude };
  state.cell = cell;
  $<HTMLInputElement>("lat").value = String(latitude);
  $<HTMLInputElement>("lon").value = String(longitude);
  const chunk = chunkOfCell(cell);
  $("cell").textContent = `locality ${indexOfCell(cell)} · chunk ${chunk}`;
  if (chunk !== state.chunk || !stopWatch) {
    state.chunk = chunk;
    state.view = undefined;
    await restartWatch();
  }
  drawGrid();
}

async function restartWatch(): Promise<void> {
  const old = stopWatch;
  stopWatch = undefined;
  await old?.();
  renderTimeline();
  stopWatch = watchChunk(client.query, BigInt(state.chunk), {
    onChange: (s) => {
      if (s.chunk !== BigInt(state.chunk)) return;
      state.view = s;
      renderTimeline();
      drawGrid();
    },
  });
}

grid.addEventListener("click", (ev) => {
  const r = grid.getBoundingClientRect();
  const side = r.width / 5;
  const dc = Math.min(4, Math.floor((ev.clientX - r.left) / side));
  const dr = 4 - Math.min(4, Math.floor((ev.clientY - r.top) / side));
  const row0 = Math.floor(state.chunk / CHUNK_COLS) * 5;
  const col0 = (state.chunk % CHUNK_COLS) * 5;
  const p = cellCentre({ row: row0 + dr, col: col0 + dc });
  void selectPoint(p.latitude, p.longitude);
});

for (const b of document.querySelectorAll<HTMLButtonElement>("button.pan")) {
  b.addEventListener("click", () => {
    const d = { n: [5, 0], s: [-5, 0], e: [0, 5], w: [0, -5] }[b.dataset.pan as "n" | "s" | "e" | "w"];
    const cols = CHUNK_COLS * 5;
    const p = cellCentre({ row: Math.max(0, Math.min(180000, state.cell.row + d[0])), col: (state.cell.col + d[1] + cols) % cols });
    void selectPoint(p.latitude, p.longitude);
  });
}

$("go").addEventListener("click", () => {
  void selectPoint(Number($<HTMLInputElement>("lat").value), Number($<HTMLInputElement>("lon").value));
});

// ---- the timeline ------------------------------------------------------

function describe(e: TimelineEntry): { kind: string; text: string; replaces: string } {
  const k = e.record?.kind;
  switch (k?.case) {
    case "visit":
      return { kind: "visit", text: `${k.value.dwellingId} ${k.value.address} — ${Outcome[k.value.outcome].toLowerCase().replace("_", " ")}`, replaces: k.value.replacesId };
    case "intention":
      return { kind: "intention", text: `${k.value.electorId}: ${k.value.option}`, replaces: k.value.replacesId };
    case "followup":
      return { kind: "follow-up", text: `${k.value.electorId}: ${k.value.issue}`, replaces: k.value.replacesId };
    default:
      return { kind: "record", text: "", replaces: "" };
  }
}

function renderTimeline(): void {
  const live = $("live");
  const v = state.view;
  live.textContent = v?.live ? "live" : v?.error ? `reconnecting (${v.error})` : "connecting";
  live.className = v?.live ? "badge live" : "badge off";
  const ul = $("timeline");
  ul.replaceChildren();
  if (!v) return;
  const replaced = new Set(v.entries.map((e) => describe(e).replaces).filter(Boolean));
  for (const e of v.entries.slice(0, 100)) {
    const d = describe(e);
    const li = document.createElement("li");
    li.dataset.id = e.id;
    if (replaced.has(e.id)) li.className = "replaced";
    const when = e.time ? timestampDate(e.time).toLocaleTimeString() : "";
    li.innerHTML = `<span class="kind"></span> <span class="text"></span> <span class="muted"></span>`;
    (li.children[0] as HTMLElement).textContent = d.kind;
    (li.children[1] as HTMLElement).textContent = d.text + (d.replaces ? " (correction)" : "");
    (li.children[2] as HTMLElement).textContent = `${when} · ${e.locality}`;
    const k = e.record?.kind;
    if (k?.case === "visit" || k?.case === "intention") {
      const b = document.createElement("button");
      b.className = "small secondary";
      b.textContent = "Correct";
      b.dataset.testid = "correct";
      b.addEventListener("click", () => startCorrection(k.case, k.value));
      li.append(b);
    }
    ul.append(li);
  }
}

// ---- recording and correcting ------------------------------------------

function startCorrection(kind: "visit" | "intention", rec: Visit | Intention): void {
  state.correcting = { kind, id: rec.id };
  if (kind === "visit") {
    const v = rec as Visit;
    $<HTMLInputElement>("dwelling").value = v.dwellingId;
    $<HTMLInputElement>("address").value = v.address;
    $<HTMLSelectElement>("outcome").value = String(v.outcome || Outcome.ANSWERED);
  } else {
    const i = rec as Intention;
    $<HTMLInputElement>("visit-id").value = i.visitId;
    $<HTMLInputElement>("elector").value = i.electorId;
    $<HTMLInputElement>("option").value = i.option;
  }
  const loc = rec.location;
  if (loc) void selectPoint(loc.latitude, loc.longitude);
  const note = $("correcting");
  note.hidden = false;
  note.textContent = `Correcting ${kind} ${rec.id}: the correction is a new record that replaces it.`;
  $("cancel-correction").hidden = false;
}

function endCorrection(): void {
  state.correcting = undefined;
  $("correcting").hidden = true;
  $("cancel-correction").hidden = true;
}

$("cancel-correction").addEventListener("click", endCorrection);

function required(id: string, name: string): string {
  const v = $<HTMLInputElement>(id).value.trim();
  if (!v) throw new Error(`${name} is required`);
  return v;
}

let queue: OfflineQueue;

$("record-visit").addEventListener("click", async () => {
  try {
    const replacesId = state.correcting?.kind === "visit" ? state.correcting.id : "";
    const v = create(VisitSchema, {
      dwellingId: required("dwelling", "dwelling"),
      address: required("address", "address"),
      location: state.point,
      canvasserId: state.token ? "" : state.canvasser,
      visitedAt: timestampFromDate(new Date()),
      outcome: Number($<HTMLSelectElement>("outcome").value) as Outcome,
      replacesId,
    });
    state.lastVisitId = await queue.addVisit(v);
    $<HTMLInputElement>("visit-id").value = state.lastVisitId;
    $("record-error").textContent = "";
    if (replacesId) endCorrection();
  } catch (e) {
    $("record-error").textContent = (e as Error).message;
  }
});

$("record-intention").addEventListener("click", async () => {
  try {
    const replacesId = state.correcting?.kind === "intention" ? state.correcting.id : "";
    const i = create(IntentionSchema, {
      visitId: required("visit-id", "visit id"),
      electorId: required("elector", "elector"),
      option: required("option", "option"),
      location: state.point,
      canvasserId: state.token ? "" : state.canvasser,
      recordedAt: timestampFromDate(new Date()),
      replacesId,
    });
    await queue.addIntention(i);
    $("record-error").textContent = "";
    if (replacesId) endCorrection();
  } catch (e) {
    $("record-error").textContent = (e as Error).message;
  }
});

function renderQueue(s: QueueStatus): void {
  const u = $("unsent");
  u.textContent = `${s.unsent} unsent`;
  u.dataset.count = String(s.unsent);
  u.className = s.unsent ? "badge" : "badge live";
  const retry = s.nextRetryAt ? `; retrying at ${new Date(s.nextRetryAt).toLocaleTimeString()}` : "";
  $("queue-error").textContent = s.waitingForToken
    ? `The server refused the token (${s.lastError}). Sign in again to send.`
    : s.lastError
      ? `Not sent yet: ${s.lastError}${retry}`
      : "";
  const ul = $("problems");
  ul.replaceChildren();
  for (const p of s.problems) {
    const li = document.createElement("li");
    li.className = p.state;
    li.dataset.id = p.id;
    const fields = p.conflictingFields?.length ? ` (fields: ${p.conflictingFields.join(", ")})` : "";
    li.textContent = `${p.state.toUpperCase()} ${p.kind} ${p.id}: ${p.reason ?? ""}${fields}`;
    const b = document.createElement("button");
    b.className = "small secondary";
    b.textContent = "Dismiss";
    b.addEventListener("click", () => void queue.dismiss(p.id));
    li.append(b);
    ul.append(li);
  }
}

// ---- sign in -------------------------------------------------------------

$("signin-btn").addEventListener("click", async () => {
  state.token = $<HTMLTextAreaElement>("token").value.trim();
  state.canvasser = $<HTMLInputElement>("canvasser").value.trim();
  localStorage.setItem(TOKEN_KEY, state.token);
  localStorage.setItem(CANVASSER_KEY, state.canvasser);
  showSignedIn();
  queue.wake();
  await restartWatch();
});

$("signout-btn").addEventListener("click", async () => {
  state.token = "";
  localStorage.removeItem(TOKEN_KEY);
  $<HTMLTextAreaElement>("token").value = "";
  showSignedIn();
  await restartWatch();
});

async function main(): Promise<void> {
  $<HTMLTextAreaElement>("token").value = state.token;
  $<HTMLInputElement>("canvasser").value = state.canvasser;
  showSignedIn();
  let store: QueueStore;
  try {
    store = await IndexedDBStore.open();
  } catch (e) {
    // Without IndexedDB (some private modes) records still queue, but only for this tab's life.
    $("queue-error").textContent = `${(e as Error).message}; unsent records are kept only until this tab closes`;
    store = new MemoryStore();
  }
  queue = new OfflineQueue({ store, submit: (req, o) => client.ingest.submit(req, o) });
  queue.subscribe(renderQueue);
  queue.onResults((outcomes) => {
    for (const o of outcomes) if (o.status === Status.ACCEPTED && o.kind === "visit") state.lastVisitId ||= o.id;
  });
  renderQueue(await queue.status());
  queue.start();
  window.addEventListener("online", () => queue.wake());
  const q = new URLSearchParams(location.search);
  const lat = Number(q.get("lat") ?? $<HTMLInputElement>("lat").value);
  const lon = Number(q.get("lon") ?? $<HTMLInputElement>("lon").value);
  await selectPoint(lat, lon);
  document.body.dataset.ready = "true";
}

void main();
