/**
 * ISO-8601 durations and instants as timelines write them (TIMELINE.md): `PT90S`,
 * `P1DT2H`, `P2W`, `PT0.5S`; `2026-03-01T00:00:00Z`. Years and months are refused: their
 * length depends on the calendar, and a billing timeline must mean one exact span.
 */

const DURATION_RE = /^P(?:(\d{1,6})W)?(?:(\d{1,6})D)?(?:T(?:(\d{1,7})H)?(?:(\d{1,9})M)?(?:(\d{1,11})(?:\.(\d{1,3}))?S)?)?$/
const INSTANT_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?(?:Z|[+-]\d{2}:\d{2})$/

/** Milliseconds of an ISO-8601 duration, or undefined if it is not one. */
export const parseDurationMs = (text: string): number | undefined => {
  const m = DURATION_RE.exec(text)
  if (m === null || text === "P" || text.endsWith("T")) return undefined
  const [, w, d, h, min, s, frac] = m
  const n = (x: string | undefined) => (x === undefined ? 0 : Number(x))
  const ms =
    n(w) * 604_800_000 + n(d) * 86_400_000 + n(h) * 3_600_000 + n(min) * 60_000 + n(s) * 1_000 + (frac === undefined ? 0 : Number(frac.padEnd(3, "0")))
  return Number.isSafeInteger(ms) ? ms : undefined
}

/** Milliseconds since the epoch of an ISO-8601 instant with an explicit zone, or undefined. */
export const parseInstantMs = (text: string): number | undefined => {
  if (!INSTANT_RE.test(text) || !isCalendarDay(text)) return undefined
  const ms = Date.parse(text)
  return Number.isFinite(ms) ? ms : undefined
}

/** Whether the instant's written date is a real day: `Date.parse` rolls 2026-02-31 to March 3. */
const isCalendarDay = (text: string): boolean => {
  const y = Number(text.slice(0, 4))
  const m = Number(text.slice(5, 7))
  const d = Number(text.slice(8, 10))
  const day = new Date(Date.UTC(y, m - 1, d))
  return day.getUTCFullYear() === y && day.getUTCMonth() === m - 1 && day.getUTCDate() === d
}

/** `at` of a timeline event: a duration after `start_ms`, or an absolute instant. */
export const parseAt = (text: string, start_ms: number): number | undefined => {
  const d = parseDurationMs(text)
  if (d !== undefined) return start_ms + d
  return parseInstantMs(text)
}

/**
 * The last instant `isoInstant` formatted, and its text. Rows come in clock order and many
 * share their clock step's instant (a full fleet's 291k ledger rows have 80k distinct ones),
 * so remembering one answer skips most of the `Date` allocations and formatting.
 */
let last_ms = Number.NaN
let last_text = ""

/** `2026-03-01T00:00:00.000Z`: exactly `Date.prototype.toISOString`, which throws for an invalid instant. */
export const isoInstant = (ms: number): string => {
  // NaN never equals itself, so an invalid instant always reaches `toISOString` and throws.
  if (ms !== last_ms) {
    last_text = new Date(ms).toISOString()
    last_ms = ms
  }
  return last_text
}
