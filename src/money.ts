/**
 * Money is integer micro-dollars held in a `bigint`: never a float, never a rounding
 * surprise. One dollar is 1,000,000 micros. Decimal strings of dollars are parsed and
 * printed only at the edges (timelines, HTTP, reports).
 *
 * The one rounding rule of the engine (see `costMicros`): a usage cost is computed
 * exactly as a rational number of micros and rounded once, to the nearest micro-dollar,
 * with an exact half rounding up. Holds are exact products (whole hours × rate × GPUs),
 * so they never round; refunds and overages are differences of integers, so
 * `consumed + refunded - overage == held` holds exactly for every hold.
 */
import { Either } from "effect"

export type Micros = bigint

export const MICROS_PER_DOLLAR = 1_000_000n
export const MS_PER_HOUR = 3_600_000n

/** The most decimals a dollar string may carry: the ledger keeps micro-dollars. */
export const DOLLAR_DECIMALS_MAX = 6

const DOLLARS_RE = /^(-)?(\d{1,12})(?:\.(\d{1,6}))?$/

export class InvalidAmount {
  readonly _tag = "InvalidAmount"
  constructor(readonly input: string) {}
  get message(): string {
    return `not a dollar amount with at most ${DOLLAR_DECIMALS_MAX} decimals: ${JSON.stringify(this.input)}`
  }
}

/** Parses "1.60", "-3.2", "100" into micros. Rejects exponents, spaces, > 6 decimals. */
export const parseDollars = (input: string): Either.Either<Micros, InvalidAmount> => {
  const match = DOLLARS_RE.exec(input)
  if (match === null) return Either.left(new InvalidAmount(input))
  const [, sign, whole, frac = ""] = match
  const micros = BigInt(whole!) * MICROS_PER_DOLLAR + BigInt(frac.padEnd(DOLLAR_DECIMALS_MAX, "0"))
  return Either.right(sign === "-" ? -micros : micros)
}

/** Like `parseDollars`, for literals the program itself controls. Throws on bad input. */
export const dollars = (input: string): Micros =>
  Either.getOrThrowWith(parseDollars(input), (e) => new Error(e.message))

/**
 * Prints micros as dollars: at least two decimals, more only when the micros need them
 * ("3.20", "-4.80", "0.000445"). Exact: `parseDollars(formatDollars(m)) == m` for every
 * amount under a trillion dollars (the parser's 12 whole digits).
 */
export const formatDollars = (micros: Micros): string => {
  const negative = micros < 0n
  const abs = negative ? -micros : micros
  const whole = abs / MICROS_PER_DOLLAR
  let frac = (abs % MICROS_PER_DOLLAR).toString().padStart(DOLLAR_DECIMALS_MAX, "0")
  while (frac.length > 2 && frac.endsWith("0")) frac = frac.slice(0, -1)
  return `${negative ? "-" : ""}${whole}.${frac}`
}

/** A dollar amount as a JSON number for API answers that the manual shows as numbers. */
export const dollarsAsNumber = (micros: Micros): number => Number(formatDollars(micros))

/** Rounds the exact rational `numerator / denominator` (both ≥ 0) to the nearest integer, half up. */
export const roundHalfUp = (numerator: bigint, denominator: bigint): bigint => {
  if (numerator < 0n || denominator <= 0n) {
    throw new Error(`roundHalfUp expects numerator >= 0 and denominator > 0, got ${numerator}/${denominator}`)
  }
  return (numerator * 2n + denominator) / (denominator * 2n)
}

/**
 * The cost of `duration_ms` of `units` GPUs (GPUs × replicas) at `rate_micros_per_hour`
 * each: exact, then rounded once by the engine's rounding rule.
 */
export const costMicros = (rate_micros_per_hour: Micros, units: number, duration_ms: number): Micros => {
  if (!Number.isSafeInteger(duration_ms) || duration_ms < 0) throw new Error(`bad duration_ms ${duration_ms}`)
  if (!Number.isSafeInteger(units) || units < 0) throw new Error(`bad units ${units}`)
  return roundHalfUp(rate_micros_per_hour * BigInt(units) * BigInt(duration_ms), MS_PER_HOUR)
}

/** An exact hold: whole hours × rate × units. Never rounds. */
export const holdMicros = (rate_micros_per_hour: Micros, units: number, hours: number): Micros => {
  if (!Number.isSafeInteger(hours) || hours < 0) throw new Error(`bad hours ${hours}`)
  if (!Number.isSafeInteger(units) || units < 0) throw new Error(`bad units ${units}`)
  return rate_micros_per_hour * BigInt(units) * BigInt(hours)
}

export const minMicros = (a: Micros, b: Micros): Micros => (a < b ? a : b)
export const maxMicros = (a: Micros, b: Micros): Micros => (a > b ? a : b)
