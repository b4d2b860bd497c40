// The locality index of DESIGN.md ("The locality index"), in the same
// float64 arithmetic as proto/locality, so the page draws the same cells the
// server keys records by. Every index fits in a JavaScript number (the
// largest, 64800539999, is far below 2^53).

/** COLS is the number of 0.001° columns around the globe. */
export const COLS = 360000;
/** MAX_ROW is the row of the north pole (lat = 90). */
export const MAX_ROW = 180000;
/** CHUNK_SIZE is the side of a chunk in localities. */
export const CHUNK_SIZE = 5;
/** CHUNK_COLS is the number of chunk columns around the globe. */
export const CHUNK_COLS = COLS / CHUNK_SIZE;
/** CELL_DEGREES is the side of a locality in degrees. */
export const CELL_DEGREES = 0.001;

/** Cell is a locality's row and column. */
export interface Cell {
  row: number;
  col: number;
}

/**
 * cellOf returns the row and column of a point. It throws a RangeError
 * naming the coordinate for a latitude outside [-90, 90], a longitude
 * outside [-180, 180), NaN or infinity.
 */
export function cellOf(lat: number, lon: number): Cell {
  if (!Number.isFinite(lat) || lat < -90 || lat > 90) {
    throw new RangeError(`latitude must be a finite number in [-90, 90], got ${lat}`);
  }
  if (!Number.isFinite(lon) || lon < -180 || lon >= 180) {
    throw new RangeError(`longitude must be a finite number in [-180, 180), got ${lon}`);
  }
  const row = Math.floor((lat + 90) * 1000);
  let col = Math.floor((lon + 180) * 1000);
  // lon just below 180 can round up to col 360000; it belongs to the last
  // column (as in proto/locality).
  if (col >= COLS) col = COLS - 1;
  return { row, col };
}

/** localityOf returns the locality index of a point (see cellOf for errors). */
export function localityOf(lat: number, lon: number): number {
  const c = cellOf(lat, lon);
  return c.row * COLS + c.col;
}

/** cellOfIndex returns the row and column of a locality index. */
export function cellOfIndex(locality: number): Cell {
  return { row: Math.floor(locality / COLS), col: locality % COLS };
}

/** chunkOfCell returns the index of the 5 × 5 chunk that holds a cell. */
export function chunkOfCell(c: Cell): number {
  return Math.floor(c.row / CHUNK_SIZE) * CHUNK_COLS + Math.floor(c.col / CHUNK_SIZE);
}

/** chunkOf returns the chunk index of a point (see cellOf for errors). */
export function chunkOf(lat: number, lon: number): number {
  return chunkOfCell(cellOf(lat, lon));
}

/** regionOf returns the 0.1° region index of a point. */
export function regionOf(lat: number, lon: number): number {
  const c = cellOf(lat, lon);
  return Math.floor(c.row / 100) * (COLS / 100) + Math.floor(c.col / 100);
}

/**
 * chunkCells returns the 25 cells of a chunk, north row first and west to
 * east within a row, as the page draws them.
 */
export function chunkCells(chunk: number): Cell[] {
  const row0 = Math.floor(chunk / CHUNK_COLS) * CHUNK_SIZE;
  const col0 = (chunk % CHUNK_COLS) * CHUNK_SIZE;
  const cells: Cell[] = [];
  for (let r = CHUNK_SIZE - 1; r >= 0; r--) {
    for (let c = 0; c < CHUNK_SIZE; c++) {
      if (row0 + r > MAX_ROW) continue;
      cells.push({ row: row0 + r, col: col0 + c });
    }
  }
  return cells;
}

/** cellCentre returns the latitude and longitude of the middle of a cell. */
export function cellCentre(c: Cell): { latitude: number; longitude: number } {
  // Rounded to 1e-7° so the point is plainly inside the cell once printed.
  const round = (v: number) => Math.round(v * 1e7) / 1e7;
  return {
    latitude: round((c.row + 0.5) / 1000 - 90),
    longitude: round((c.col + 0.5) / 1000 - 180),
  };
}

/** indexOfCell returns the locality index of a cell. */
export function indexOfCell(c: Cell): number {
  return c.row * COLS + c.col;
}
