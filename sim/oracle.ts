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
/** SPEC §3: "Watchdog lag of up to about a minute"; docs/POLICY.md fixes it at 1 minute. */
export const SPEC_WATCHDOG_LAG_MS = 1 * MS_PER_MINUTE
/** SPEC §4: an inference hold covers 24 h; renewed every 24 h of running. */
export const SPEC_INFERENCE_CYCLE_MS = 24 * MS_PER_HOUR
/** SPEC §5: storage is charged once a day, at 00:00 UTC. */
export const SPEC_STORAGE_DAY_MS = 24 * MS_PER_HOUR

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
