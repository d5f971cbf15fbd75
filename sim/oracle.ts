/**
 * The invariant checker's own numbers and arithmetic, written from SPEC.md and docs/POLICY.md
 * and not imported from src/: an oracle that shared the engine's `costMicros` or its policy
 * constants would move with them, and a wrong constant or rounding in src/ would pass every
 * check. Each number here is one SPEC (or a Decision it documents) states; test/invariants.test.ts
 * asserts src/policy.ts agrees, so a change to either side is seen at once.
 *
 * Everything is integer arithmetic on `bigint` micro-dollars and `number` milliseconds, as
 * SPEC §1 asks ("Money is never a float").
 */

export const MS_PER_SECOND = 1_000
export const MS_PER_MINUTE = 60 * MS_PER_SECOND
export const MS_PER_HOUR = 60 * MS_PER_MINUTE
export const MICROS_PER_DOLLAR = 1_000_000n

/** SPEC §3 Decision: billable time is time in `loading` and `running`. */
export const SPEC_BILLABLE_STATES: ReadonlyArray<string> = ["loading", "running"]
/** SPEC §3: duration warnings 30 and 20 min (warning), 10, 5 and 1 min (critical) before the deadline. */
export const SPEC_DURATION_WARNING_MINUTES: ReadonlyArray<number> = [30, 20, 10, 5, 1]
/** SPEC §7: low-balance warnings at 60, 30, 20 min remaining (warning) and 10, 5, 3, 1 min (critical). */
export const SPEC_BALANCE_WARNING_MINUTES: ReadonlyArray<number> = [60, 30, 20, 10, 5, 3, 1]
/**
 * docs/POLICY.md "When the balance runs low": a credit re-arms a sent threshold when it lifts the
 * account clearly (1 s) above it.
 */
export const POLICY_REARM_MARGIN_MS = MS_PER_SECOND
/** docs/POLICY.md "Dust": a partial hold must cover at least one second of the replicas that bill. */
export const POLICY_PARTIAL_HOLD_MIN_MS = MS_PER_SECOND
/** SPEC §3: the watchdog runs every 5 minutes (and reconciles each live resource with the cluster). */
export const SPEC_WATCHDOG_INTERVAL_MS = 5 * MS_PER_MINUTE
/** SPEC §3: "Watchdog lag of up to about a minute"; docs/POLICY.md fixes it at 1 minute. */
export const SPEC_WATCHDOG_LAG_MS = 1 * MS_PER_MINUTE
/** SPEC §4: an inference hold covers 24 h; renewed every 24 h of running. */
export const SPEC_INFERENCE_CYCLE_MS = 24 * MS_PER_HOUR
/** SPEC §5: storage is charged once a day, at 00:00 UTC. */
export const SPEC_STORAGE_DAY_MS = 24 * MS_PER_HOUR
/** SPEC §6 / docs/POLICY.md "API usage": aggregated rows are one per account, model and minute. */
export const SPEC_API_AGGREGATION_MS = MS_PER_MINUTE
/** Token prices are per 1M tokens (TIMELINE.md's `input_per_1m_tokens`, `output_per_1m_tokens`). */
const TOKENS_PER_PRICE = 1_000_000n

/**
 * The exact rational `numerator / denominator` (numerator ≥ 0, denominator > 0) rounded to the
 * nearest integer, an exact half up: docs/POLICY.md's one rounding rule ("rounded to the nearest
 * micro-dollar, half up"). Written as floor(n / d + 1/2), which is what "half up" means for n ≥ 0.
 */
export const nearestHalfUp = (numerator: bigint, denominator: bigint): bigint => {
  if (numerator < 0n || denominator <= 0n) throw new Error(`nearestHalfUp(${numerator}, ${denominator})`)
  const whole = numerator / denominator
  const rest = numerator - whole * denominator
  return rest * 2n >= denominator ? whole + 1n : whole
}

/**
 * What `duration_ms` of `units` GPUs at `rate_micros_per_hour` each costs (SPEC §9.3: billable
 * time × rate × GPUs × replicas), rounded once to the micro, half up.
 */
export const usageMicros = (rate_micros_per_hour: bigint, units: number, duration_ms: number): bigint =>
  nearestHalfUp(rate_micros_per_hour * BigInt(units) * BigInt(duration_ms), BigInt(MS_PER_HOUR))

/** A hold as SPEC §2 sizes it: whole hours × hourly rate × GPUs (× nodes or replicas). Exact. */
export const holdOfHours = (rate_micros_per_hour: bigint, units: number, hours: number): bigint => rate_micros_per_hour * BigInt(units) * BigInt(hours)

/** A model's prices in micros, as the catalog states them (per 1M tokens, per image, per second). */
export interface ApiPrice {
  readonly input_per_1m_tokens?: bigint
  readonly output_per_1m_tokens?: bigint
  readonly per_image?: bigint
  readonly per_second?: bigint
}

/** One `/v1` request the engine admitted, with what it used (TIMELINE.md's `api_request`). */
export interface ApiRequestFact {
  readonly at: number
  readonly account: string
  readonly model: string
  readonly input_tokens?: number | undefined
  readonly output_tokens?: number | undefined
  readonly images?: number | undefined
  readonly seconds?: number | undefined
}

/** Seconds with at most 3 decimals as whole milliseconds, or null when they have more (the engine refuses those). */
export const secondsAsMs = (seconds: number): number | null => {
  const ms = Math.round(seconds * MS_PER_SECOND)
  return ms / MS_PER_SECOND === seconds ? ms : null
}

/**
 * The cost of one request (SPEC §6, docs/POLICY.md "API usage"): tokens × price per 1M tokens,
 * plus images × price per image, plus seconds × price per second, as one exact amount, rounded
 * once to the micro, half up; a cost above $0 that rounds to $0 is one micro (POLICY's "a priced
 * request is never free"). A unit used without a price is not a cost: the answer says which
 * (the engine must have refused the request). `seconds` with more than 3 decimals likewise.
 */
export const apiRequestMicros = (price: ApiPrice, req: ApiRequestFact): { readonly micros: bigint } | { readonly unpriced: string } => {
  const input = BigInt(req.input_tokens ?? 0)
  const output = BigInt(req.output_tokens ?? 0)
  const images = BigInt(req.images ?? 0)
  const ms = req.seconds === undefined ? 0 : secondsAsMs(req.seconds)
  if (ms === null) return { unpriced: "seconds (more than 3 decimals)" }
  if (input > 0n && price.input_per_1m_tokens === undefined) return { unpriced: "input_tokens" }
  if (output > 0n && price.output_per_1m_tokens === undefined) return { unpriced: "output_tokens" }
  if (images > 0n && price.per_image === undefined) return { unpriced: "images" }
  if (ms > 0 && price.per_second === undefined) return { unpriced: "seconds" }
  // Micros × 1,000,000: a token costs price / 1M micros, an image `per_image`, a millisecond `per_second` / 1000.
  const exact =
    input * (price.input_per_1m_tokens ?? 0n) +
    output * (price.output_per_1m_tokens ?? 0n) +
    images * (price.per_image ?? 0n) * TOKENS_PER_PRICE +
    BigInt(ms) * (price.per_second ?? 0n) * (TOKENS_PER_PRICE / BigInt(MS_PER_SECOND))
  if (exact === 0n) return { micros: 0n }
  const rounded = nearestHalfUp(exact, TOKENS_PER_PRICE)
  return { micros: rounded === 0n ? 1n : rounded }
}
