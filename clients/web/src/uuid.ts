// Record ids are client-generated UUIDs; v7 (time-ordered) is preferred by
// DESIGN.md so that ids sort by creation time.

/**
 * uuidv7 returns a new RFC 9562 version 7 UUID: 48 bits of Unix time in
 * milliseconds, then random bits, from crypto.getRandomValues.
 */
export function uuidv7(now: number = Date.now()): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  let ms = Math.floor(now);
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70; // version 7
  b[8] = (b[8] & 0x3f) | 0x80; // variant 10
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** isUUID reports whether s has the 8-4-4-4-12 hexadecimal form the server accepts. */
export function isUUID(s: string): boolean {
  return UUID_RE.test(s);
}
