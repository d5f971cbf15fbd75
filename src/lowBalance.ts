/**
 * The low-balance rules of SPEC §7, as pure arithmetic the supervisor's account monitor
 * calls after every unit of work that touches an account.
 *
 * Decision (SPEC §7): minutes remaining = (balance + unconsumed part of the running
 * resources' holds) ÷ burn rate, the time until the account's money runs out. While nothing
 * changes, both sides fall at the burn rate, so the instant the money runs out (`zeroAt`) is
 * fixed, and each warning is due at exactly `zeroAt − threshold`: the monitor arms one clock
 * timer for the next one instead of polling.
 */
import { BALANCE_WARNINGS, MS_PER_HOUR, MS_PER_SECOND, MS_PER_MINUTE } from "./policy.js"

/**
 * A threshold already warned is armed again only when the account is lifted clearly above
 * it by a credit (money coming into the wallet: a top-up, an adjustment, the unused part of
 * a hold given back) or by the stop for good of one of its resources (the run-down toward
 * that stop is over); a preemption, which lowers the burn for a while, lengthens the
 * run-down but re-arms nothing (see `planWarnings`). The margin absorbs the one-micro
 * rounding of consumption so a recomputation a moment after a warning never re-arms it.
 */
export const REARM_MARGIN_MS = MS_PER_SECOND

/**
 * When the money runs out, or null when nothing burns. `funds_micro_ms` is the funds in
 * micro-dollar-milliseconds-per-hour (micros × 3,600,000), kept exact so that consumption is
 * never rounded here: then `zeroAt` is the same instant whenever it is computed between two
 * changes, which keeps warnings on the same millisecond across restarts.
 */
export const zeroAt = (now: number, funds_micro_ms: bigint, burn_micros_per_hour: bigint): number | null => {
  if (burn_micros_per_hour <= 0n) return null
  if (funds_micro_ms <= 0n) return now
  return now + Number(funds_micro_ms / burn_micros_per_hour)
}

/** Scales micros to the exact unit `zeroAt` takes. */
export const microMs = (micros: bigint): bigint => micros * BigInt(MS_PER_HOUR)

export interface WarningPlan {
  /** Thresholds still counted as sent in this run-down. */
  readonly warned: ReadonlyArray<number>
  /** The threshold to send now, if the account is already below one not yet sent. */
  readonly now: number | null
  /** The next threshold and the instant it is due, if any. */
  readonly next: { readonly minutes: number; readonly at: number } | null
}

/**
 * Which warnings to send, skip or arm at `now`, given when the money runs out and whether
 * the account's run-down may have ended since the last look (`rearm`: a credit, or one of
 * its resources stopped for good).
 * Decision: when the account is already below several unsent thresholds (a large launch on
 * a small balance), only the tightest is sent and the larger ones count as passed: the user
 * hears the one that is true now, in threshold order.
 */
export const planWarnings = (now: number, zero: number | null, warnedBefore: ReadonlyArray<number>, rearm: boolean): WarningPlan => {
  const remaining = zero === null ? Infinity : zero - now
  // Only a credit (money into the wallet, SPEC §7) or a resource's stop for good arms a sent
  // threshold again: a burn that falls for a while (a preemption) lengthens the run-down but
  // does not start a new one.
  const kept = rearm ? warnedBefore.filter((m) => remaining <= m * MS_PER_MINUTE + REARM_MARGIN_MS) : warnedBefore
  // The monitor asks after every unit of work that touches the account, so the usual answer
  // (nothing to send, nothing changed) allocates no new list: `warned` is then `warnedBefore`.
  let added: number[] | null = null
  let sendNow: number | null = null
  let upcoming: number | null = null
  if (zero !== null) {
    for (const { minutes } of BALANCE_WARNINGS) {
      if (kept.includes(minutes)) continue
      if (remaining <= minutes * MS_PER_MINUTE) {
        sendNow = minutes
        ;(added ??= []).push(minutes)
      } else if (upcoming === null) {
        upcoming = minutes
      }
    }
  }
  // `added` holds only thresholds `kept` lacks, so the two never overlap.
  const warned = added === null && kept === warnedBefore ? warnedBefore : [...kept, ...(added ?? [])].sort((a, b) => b - a)
  return {
    warned,
    now: sendNow,
    next: zero === null || upcoming === null ? null : { minutes: upcoming, at: zero - upcoming * MS_PER_MINUTE }
  }
}
