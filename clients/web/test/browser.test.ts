// The page's suite: Debian's chromium (headless, driven by playwright-core,
// never a downloaded browser) loads /app/ from its own `chapper dev`,
// records a visit and sees it arrive in the live timeline, keeps a visit
// queued in IndexedDB across a reload while Submit cannot get through, and
// corrects a visit. A screenshot is saved as an artefact.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { createChapperClient } from "../src/client.js";
import { chapper, startDev, waitFor, type Dev } from "./dev.js";

const CHROMIUM = "/usr/bin/chromium";
/** artefacts is where screenshots go: $CHAPPER_WEB_ARTEFACTS, or var/web-artefacts of the checkout. */
const artefacts = process.env.CHAPPER_WEB_ARTEFACTS ?? resolve(import.meta.dirname ?? ".", "../../../../var/web-artefacts");

describe("the page in chromium", { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: run make setup` }, () => {
  let dev: Dev;
  let profile: string;
  let ctx: BrowserContext;
  let page: Page;
  let token: string;

  before(async () => {
    dev = await startDev(["-target=ingest,query,timeline", "-auth"]);
    token = (await chapper("token", "issue", `-auth.keys-dir=${dev.endpoints["auth"]}`, "-canvasser=c-browser", "-role=canvasser", "-ttl=10m")).stdout.trim();
    profile = mkdtempSync(join(tmpdir(), "chapper-chromium-"));
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      viewport: { width: 1280, height: 900 },
    });
    page = ctx.pages()[0] ?? (await ctx.newPage());
    page.on("pageerror", (e) => console.error("page error:", e));
  });

  after(async () => {
    await ctx?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    assert.equal(await dev?.stop(), 0, "chapper dev exit code");
  });

  async function open(lat: number, lon: number): Promise<void> {
    await page.goto(`${dev.grpcUrl}/app/?lat=${lat}&lon=${lon}`);
    await page.waitForSelector("body[data-ready=true]");
  }

  async function openLive(lat: number, lon: number): Promise<void> {
    await open(lat, lon);
    await page.getByTestId("live").filter({ hasText: /^live$/ }).waitFor({ timeout: 20_000 });
  }

  async function unsent(): Promise<string | null> {
    return page.getByTestId("unsent").getAttribute("data-count");
  }

  test("records a visit and sees it arrive in the live timeline", async () => {
    await open(55.9533, -3.1883);
    assert.equal(await page.getByTestId("cell").textContent(), "locality 52543256811 · chunk 2101715362");
    // The server runs with authentication: without a token the watch is refused...
    await page.getByTestId("live").filter({ hasText: /Unauthenticated/ }).waitFor({ timeout: 20_000 });
    // ...and the page signs in with one
    // (kept in localStorage for the tests after this one).
    await page.getByTestId("token").fill(token);
    await page.getByTestId("signin").click();
    await page.getByTestId("signed-in").filter({ hasText: "signed in as c-browser (canvasser)" }).waitFor();
    await page.getByTestId("live").filter({ hasText: /^live$/ }).waitFor({ timeout: 20_000 });
    // Pick a cell on the map: the middle one of the 5 × 5.
    const box = (await page.getByTestId("grid").boundingBox())!;
    await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    await page.getByTestId("cell").filter({ hasText: /chunk 2101715362/ }).waitFor();
    await page.getByTestId("dwelling").fill("EH1-1AA-42");
    await page.getByTestId("address").fill("42 Royal Mile, Edinburgh");
    await page.getByTestId("outcome").selectOption("1");
    await page.getByTestId("record-visit").click();
    const entry = page.getByTestId("timeline").locator("li", { hasText: "EH1-1AA-42" });
    await entry.waitFor({ timeout: 20_000 });
    assert.match((await entry.textContent()) ?? "", /visit\s+EH1-1AA-42 42 Royal Mile, Edinburgh — answered/);
    await page.waitForFunction(() => document.querySelector("[data-testid=unsent]")?.getAttribute("data-count") === "0");
    // An intention for that visit (its id is filled in).
    assert.match((await page.getByTestId("visit-id").inputValue()) ?? "", /^[0-9a-f-]{36}$/);
    await page.getByTestId("elector").fill("E-1001");
    await page.getByTestId("option").fill("yes");
    await page.getByTestId("record-intention").click();
    await page.getByTestId("timeline").locator("li", { hasText: "E-1001: yes" }).waitFor({ timeout: 20_000 });
    mkdirSync(artefacts, { recursive: true });
    await page.screenshot({ path: join(artefacts, "webapp.png"), fullPage: true });
  });

  test("a visit queued while Submit cannot get through survives a reload in IndexedDB and is sent after", async () => {
    await openLive(55.9601, -3.1702);
    // Submit fails at the network layer; the page itself still loads.
    await page.route("**/canvass.v1.IngestService/Submit", (r) => r.abort("internetdisconnected"));
    await page.getByTestId("dwelling").fill("EH2-OFF-1");
    await page.getByTestId("address").fill("1 Offline Row");
    await page.getByTestId("record-visit").click();
    await page.waitForFunction(() => document.querySelector("[data-testid=unsent]")?.getAttribute("data-count") === "1");
    await page.getByTestId("queue-error").filter({ hasText: /Not sent yet/ }).waitFor();
    await page.reload();
    await page.waitForSelector("body[data-ready=true]");
    assert.equal(await unsent(), "1", "the queued visit is still there after a reload");
    await page.unroute("**/canvass.v1.IngestService/Submit");
    await page.evaluate(() => window.dispatchEvent(new Event("online")));
    await page.getByTestId("timeline").locator("li", { hasText: "EH2-OFF-1" }).waitFor({ timeout: 20_000 });
    await page.waitForFunction(() => document.querySelector("[data-testid=unsent]")?.getAttribute("data-count") === "0");
  });

  test("corrects a visit: a new record that replaces the old one", async () => {
    await openLive(55.9533, -3.1883);
    const old = page.getByTestId("timeline").locator("li", { hasText: "EH1-1AA-42" }).first();
    await old.waitFor();
    const oldId = await old.getAttribute("data-id");
    await old.getByTestId("correct").click();
    await page.getByTestId("correcting").filter({ hasText: oldId! }).waitFor();
    await page.getByTestId("outcome").selectOption("3");
    await page.getByTestId("record-visit").click();
    const fix = page.getByTestId("timeline").locator("li", { hasText: "refused (correction)" });
    await fix.waitFor({ timeout: 20_000 });
    const fixId = await fix.getAttribute("data-id");
    assert.notEqual(fixId, oldId);
    // The replaced visit stops showing as current: struck through, or gone
    // once the server's fresh snapshot (sent on a correction) drops it.
    await page.locator(`[data-testid=timeline] li[data-id="${oldId}"]:not(.replaced)`).waitFor({ state: "detached", timeout: 20_000 });
    // The map's counters follow the server's after the live events.
    const query = createChapperClient({ baseUrl: dev.grpcUrl, token: () => token }).query;
    const want = await waitFor("the server's counters to count the correction", async () => {
      const r = await query.getChunk({ location: { latitude: 55.9525, longitude: -3.1875 } });
      const l = r.localities.find((x) => x.locality === 52542896812n);
      return l && l.entries.some((e) => e.id === fixId) ? String(l.counters["visits"] ?? 0n) : undefined;
    });
    await page.locator(`[data-testid=grid][data-visits="${want}"]`).waitFor();
    await page.screenshot({ path: join(artefacts, "webapp-correction.png"), fullPage: true });
  });
});
