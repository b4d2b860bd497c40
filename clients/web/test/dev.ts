// Test helpers: a `chapper dev` of our own on free ports, and a TCP proxy
// that can cut the network between the client and it.

import { spawn, execFile, type ChildProcess } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));

/** chapperBin is the chapper binary the tests run: $CHAPPER_BIN, or bin/chapper of the checkout. */
export const chapperBin = process.env.CHAPPER_BIN ?? resolve(here, "../../../../bin/chapper");

/** Dev is a running `chapper dev`. */
export interface Dev {
  /** endpoints maps an endpoint line's label ("gRPC + gRPC-web", "Redis", ...) to its address. */
  endpoints: Record<string, string>;
  /** grpcUrl is the gRPC port's URL, e.g. http://127.0.0.1:40123. */
  grpcUrl: string;
  grpcAddr: string;
  dir: string;
  /** stop stops chapper dev (SIGINT, then SIGKILL after 30 s), removes its directory and resolves with its exit code. */
  stop(): Promise<number | null>;
}

/** startDev runs chapper dev with every server on a free port in a fresh -dev.dir, plus extra flags. */
export async function startDev(extra: string[] = []): Promise<Dev> {
  const dir = mkdtempSync(join(tmpdir(), "chapper-web-"));
  // Postgres runs as the postgres user when we are root: it must enter the directory.
  chmodSync(dir, 0o755);
  const args = [
    "dev", "-log.level=warn", `-dev.dir=${dir}`,
    "-grpc.addr=127.0.0.1:0", "-admin.addr=127.0.0.1:0", "-dev.kafka-addr=127.0.0.1:0",
    "-dev.postgres-addr=127.0.0.1:0", "-dev.redis-addr=127.0.0.1:0", "-dev.ids-redis-addr=127.0.0.1:0",
    "-dev.search-addr=127.0.0.1:0",
    ...extra,
  ];
  const child: ChildProcess = spawn(chapperBin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => {
    stderr += b.toString();
    if (stderr.length > 20000) stderr = stderr.slice(-10000);
  });
  const exited = new Promise<number | null>((res) => child.on("exit", (code) => res(code)));
  const endpoints: Record<string, string> = {};
  const lines = createInterface({ input: child.stdout! });
  const up = new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`chapper dev did not print its endpoints within 90s; stderr:\n${stderr}`)), 90_000);
    lines.on("line", (l) => {
      if (!l.startsWith("  ")) return;
      const [label, rest] = l.trim().split(/ {2,}/, 2);
      if (label === "data") {
        clearTimeout(timer);
        res();
      } else if (rest) {
        endpoints[label] = rest.split(/\s+/)[0];
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      rej(new Error(`chapper dev exited (${code}) before printing its endpoints; stderr:\n${stderr}`));
    });
  });
  let stopping: Promise<number | null> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      child.kill("SIGINT");
      const kill = setTimeout(() => child.kill("SIGKILL"), 30_000);
      const code = await exited;
      clearTimeout(kill);
      rmSync(dir, { recursive: true, force: true });
      return code;
    })());
  try {
    await up;
  } catch (e) {
    await stop();
    throw e;
  }
  const grpcAddr = endpoints["gRPC + gRPC-web"];
  return { endpoints, grpcAddr, grpcUrl: `http://${grpcAddr}`, dir, stop };
}

/** chapperHelp returns `chapper <sub> -h`'s usage text (to see which server features are built). */
export async function chapperHelp(...sub: string[]): Promise<string> {
  try {
    const r = await promisify(execFile)(chapperBin, [...sub, "-h"]);
    return r.stdout + r.stderr;
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string };
    return (x.stdout ?? "") + (x.stderr ?? "");
  }
}

/** chapper runs the chapper binary and returns its stdout and stderr. */
export async function chapper(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return promisify(execFile)(chapperBin, args);
}

/**
 * ProxyMode is what the proxy does: "up" forwards, "down" refuses every
 * connection (the phone is offline), "drop-responses" forwards requests but
 * cuts the connection when the answer comes back (the ack is lost).
 */
export type ProxyMode = "up" | "down" | "drop-responses";

/** Proxy is a TCP proxy on 127.0.0.1 in front of a target address. */
export interface Proxy {
  url: string;
  /** connections counts the connections accepted so far. */
  connections: number;
  setMode(m: ProxyMode): void;
  close(): Promise<void>;
}

/** startProxy listens on a free port and forwards to target (host:port). */
export async function startProxy(target: string): Promise<Proxy> {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  let mode: ProxyMode = "up";
  const open = new Set<net.Socket>();
  const p = {
    url: "",
    connections: 0,
    setMode(m: ProxyMode) {
      mode = m;
      // Going offline cuts the keep-alive connections too.
      if (m !== "up") for (const s of open) s.destroy();
    },
    close: async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((res) => server.close(() => res()));
    },
  };
  const server = net.createServer((client) => {
    p.connections++;
    if (mode === "down") {
      client.destroy();
      return;
    }
    const dropping = mode === "drop-responses";
    const upstream = net.connect(port, host);
    open.add(client);
    open.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    if (dropping) upstream.once("data", end);
    else upstream.pipe(client);
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", () => res()));
  p.url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return p;
}

/** waitFor polls cond every 50 ms until it returns a truthy value or timeoutMs passes. */
export async function waitFor<T>(what: string, cond: () => T | Promise<T>, timeoutMs = 20_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
