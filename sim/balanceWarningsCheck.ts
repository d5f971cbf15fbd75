/**
 * SPEC §7 and §9.6 in the invariant checker: the low-balance warnings say the truth, on time.
 *
 * The engine's estimate (docs/POLICY.md "When the balance runs low") is the instant the money
 * runs out, `zero = min(pooled, first stop)`: `pooled` = now + (spendable balance, at least $0,
 * plus what the holds of the resources billing now have not consumed) ÷ their hourly burn; the
 * first stop is the first inference cycle end the balance cannot renew, foreseen by playing the
 * account's renewals and midnight storage charges. While nothing of the account changes, `zero`
 * stays put and a threshold of m minutes is crossed at exactly `zero − m`, where a clock alarm
 * sends it. The checker recomputes `pooled` from the ledger, the holds and the transitions, with
 * its own arithmetic; the forecast of stops it does not replay (it is most of the engine's
 * bookkeeping), so what it checks is:
 *
 * (a) A warning of m minutes sent at an instant t at which nothing of the account changed (no row,
 *     no transition of its resources, no request, no engine stop, no resource created; a look
 *     then can only be the alarm of a threshold crossed exactly then):
 *     - an account with no inference instance alive has no stop to foresee, so `zero = pooled`:
 *       something burns, and the money runs out exactly m minutes later, to the millisecond;
 *     - otherwise `zero ≤ pooled`, so the money in the wallet and the running holds lasts at
 *       least m minutes (a warning sent late, after its moment, fails this where the pooled
 *       estimate is what ran out; one sent early is not seen where a foreseen stop is sooner).
 * (b) Before a stop for `credit_depleted` at T (its decision), each threshold m whose moment
 *     T − m fell after the account's last change before T was crossed with nothing to hide it
 *     (the stop is the money running out, so `zero ≤ T` through that quiet stretch): by T − m a
 *     warning of at most m minutes was sent with no larger one after it (a threshold crossed
 *     by a jump counts as passed when a tighter one is sent: hence "at most m").
 * (c) Two warnings in a row, both at quiet instants with no change between them, share one `zero`:
 *     the second is the threshold right after the first, sent exactly the difference of their
 *     minutes later (whatever `zero` is, so this holds with inference instances too).
 * (d) (b) for a threshold a credit surely re-armed: a warning of it sent before the credit does
 *     not stand for it. At an instant whose only changes of the account are credits (each unit
 *     of work there re-arms, or is an alarm's look at the same state), the monitor's last look
 *     re-armed each threshold m with `zero − now > m minutes + 1 s`. The checker bounds that
 *     `zero` from below without the engine's forecast (`runOutAfterCredit`): `pooled` exactly,
 *     and the first stop no sooner than the first cycle end (a full hold's placed_at + 24 h, a
 *     partial one's when the replicas billing consume it); the renewals of the inference
 *     instances alive are played there, in the engine's order, pessimistically (storage
 *     charged every midnight, GPU refunds left out, a partial hold timed on every replica, and
 *     nothing played past the first renewal short of a full hold but the partial hold it
 *     places). A threshold so re-armed is sent again
 *     or a tighter one is (it is counted as sent only with a warning of it or tighter), by
 *     T − m; here also when T − m is the account's last change itself, as long as that is a
 *     change the logs show whole (a look at the state the stop is foreseen on follows it).
 *
 * Not checked: a threshold crossed in a quiet stretch that ends with a change, not a credit stop,
 * and no warning on either side of it in the stretch (the first warning of a run-down, skipped);
 * a warning sent at an instant something changed (several units of work at one instant, each a
 * look at a different state, cannot be told apart in the logs); a re-arm by a credit that shares
 * its instant with another change (a cycle end's refund, a stop's settlement, a request), or one
 * the lower bound cannot show (a renewal short of a full hold is taken as a stop at its partial
 * hold's end, though it may renew again on refunds), or across an engine outage or restart
 * before the stop; the forecast of inference stops
 * itself (so (a) with an inference instance alive is a lower bound only).
 *
 * Instants and stretches the checker cannot read the engine's knowledge at are left out: an
 * engine outage or restart, and a resource's stop logged after the fact (a pod failure found
 * late is dated when it happened, known when told).
 */
import type { Hold, LedgerRow, Notification, Transition } from "../src/ledger/store.js"
import type { ResourceFacts, RunFacts, Violate } from "./invariants.js"
import { isoInstant } from "./iso.js"
import {
  MS_PER_HOUR,
  MS_PER_MINUTE,
  POLICY_PARTIAL_HOLD_MIN_MS,
  POLICY_REARM_MARGIN_MS,
  SPEC_BALANCE_WARNING_MINUTES,
  SPEC_BILLABLE_STATES,
  SPEC_INFERENCE_CYCLE_MS,
  SPEC_STORAGE_DAY_MS,
  SPEC_WATCHDOG_INTERVAL_MS,
  usageMicros
} from "./oracle.js"

const BILLABLE: ReadonlySet<string> = new Set(SPEC_BILLABLE_STATES)
const STOPPING: ReadonlySet<string> = new Set(["terminating", "terminated", "failed", "deleted"])
const MICRO_MS_PER_MICRO = BigInt(MS_PER_HOUR)

export interface WarningCheckInput {
  readonly facts: RunFacts
  readonly rowsByAccount: ReadonlyMap<string, ReadonlyArray<LedgerRow>>
  readonly rowsByHold: ReadonlyMap<string, ReadonlyArray<LedgerRow>>
  readonly holdsByResource: ReadonlyMap<string, ReadonlyArray<Hold>>
  readonly transitionsByResource: ReadonlyMap<string, ReadonlyArray<Transition>>
  readonly balanceWarningsByAccount: ReadonlyMap<string, ReadonlyArray<Notification>>
  readonly terminatedNoticesByResource: ReadonlyMap<string, ReadonlyArray<Notification>>
  /** What each admitted request cost, in the order of `facts.api_usage.requests` (pending per-minute usage is not spendable). */
  readonly apiCosts: ReadonlyArray<bigint>
}

/** The resource an entry of the transitions log is about: an inference replica `id@region` is its instance's. */
const ownerOf = (resource: string): string => {
  const at = resource.indexOf("@")
  return at < 0 ? resource : resource.slice(0, at)
}

/** Index of the first element of sorted `list` greater than `at` (elements ≤ `at` come before it). */
export const upperBound = (list: ReadonlyArray<number>, at: number): number => {
  let lo = 0
  let hi = list.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (list[mid]! <= at) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** The state a log of transitions leaves before `t` (all at < t), from `pending`. */
const stateBefore = (transitions: ReadonlyArray<Transition>, t: number): string => {
  let state = "pending"
  for (const x of transitions) {
    if (x.at >= t) break
    state = x.to_state
  }
  return state
}

/** Milliseconds of [from, to) a log spent billable (`loading`/`running`), from `pending` at `created_at`. */
const billableMs = (transitions: ReadonlyArray<Transition>, created_at: number, from: number, to: number): number => {
  let state = "pending"
  let since = created_at
  let ms = 0
  const add = (a: number, b: number): void => {
    const lo = Math.max(a, from)
    const hi = Math.min(b, to)
    if (hi > lo) ms += hi - lo
  }
  for (const x of transitions) {
    if (x.at >= to) break
    if (BILLABLE.has(state)) add(since, x.at)
    state = x.to_state
    since = x.at
  }
  if (BILLABLE.has(state)) add(since, to)
  return ms
}

/** One account's view for the checks: when anything of it changed, and what it ran. */
interface AccountView {
  readonly resources: ResourceFacts[]
  /** Sorted instants at which something of the account changed. */
  changes: number[]
  /** Stretches `(from, to]` in which the engine's knowledge of a resource lagged its log. */
  readonly unsure: Array<{ readonly from: number; readonly to: number }>
}

const viewsOf = (input: WarningCheckInput): Map<string, AccountView> => {
  const { facts } = input
  const views = new Map<string, AccountView>()
  const view = (account: string): AccountView => {
    let v = views.get(account)
    if (v === undefined) views.set(account, (v = { resources: [], changes: [], unsure: [] }))
    return v
  }
  const accountOf = new Map<string, string>()
  for (const r of facts.resources) {
    accountOf.set(r.id, r.account)
    const v = view(r.account)
    v.resources.push(r)
    v.changes.push(r.context.created_at)
  }
  for (const r of facts.rows) view(r.account).changes.push(r.at)
  for (const req of facts.api_usage?.requests ?? []) view(req.account).changes.push(req.at)
  // A transition logged after a later one (by id) was learned late: until it was logged, the
  // engine billed and measured as before. Logged at least as late as the latest instant seen
  // before it, and (a stop found late) when its termination notice went out.
  let latest = -Infinity
  for (const t of facts.transitions) {
    const account = accountOf.get(ownerOf(t.resource))
    if (account !== undefined) {
      const v = view(account)
      v.changes.push(t.at)
      if (t.reason === "reconciled" || t.reason === "watchdog_healed") {
        // A move the engine found by reading the cluster (a watch event it missed) is dated when
        // the pod moved and known by the next watchdog tick (or a restart, a stop of its own).
        v.unsure.push({ from: t.at, to: t.at + SPEC_WATCHDOG_INTERVAL_MS })
      } else if (t.at < latest || t.to_state === "failed") {
        const told = input.terminatedNoticesByResource.get(ownerOf(t.resource))?.find((n) => n.at >= t.at)?.at ?? t.at
        const known = Math.max(latest, told)
        if (known > t.at) v.unsure.push({ from: t.at, to: known })
      }
    }
    latest = Math.max(latest, t.at)
  }
  for (const v of views.values()) v.changes.sort((a, b) => a - b)
  return views
}

export const checkBalanceWarnings = (input: WarningCheckInput, violate: Violate): void => {
  const { facts } = input
  const views = viewsOf(input)
  const pending = pendingIndexOf(input)
  // The engine's stops: outages `(from, to]`, and restarts (an instant after whose work it stopped).
  const down = facts.engine_down ?? []
  const stops = facts.api_usage?.engine_stops_ms ?? []
  /** Whether the engine could have learned something of the account at `t` that its logs date elsewhere. */
  const blurred = (v: AccountView, t: number): boolean =>
    down.some((d) => d.from_ms <= t && t <= d.to_ms) || stops.includes(t) || v.unsure.some((u) => u.from < t && t <= u.to)
  const quietAt = (v: AccountView, t: number): boolean => {
    const i = upperBound(v.changes, t)
    return !(i > 0 && v.changes[i - 1] === t) && !blurred(v, t)
  }
  /** The last instant before `t` at which something of the account changed, or its view blurred. */
  const lastChangeBefore = (v: AccountView, t: number): number => {
    const i = upperBound(v.changes, t - 1)
    let last = i > 0 ? v.changes[i - 1]! : -Infinity
    for (const d of down) if (d.from_ms < t) last = Math.max(last, Math.min(d.to_ms, t - 1))
    for (const s of stops) if (s < t) last = Math.max(last, s)
    for (const u of v.unsure) if (u.from < t) last = Math.max(last, Math.min(u.to, t - 1))
    return last
  }

  // (a) Each warning sent at a quiet instant, against the pooled estimate recomputed.
  for (const [account, warnings] of input.balanceWarningsByAccount) {
    const v = views.get(account)
    if (v === undefined) continue
    for (const w of warnings) {
      if (!quietAt(v, w.at)) continue
      const minutes = minutesOf(w)
      const pooled = pooledAt(input, pending, account, v, w.at)
      const inference = v.resources.some((r) => r.kind === "inference_instance" && r.context.created_at < w.at && !stoppedBefore(input, r.id, w.at))
      const due = minutes * MS_PER_MINUTE
      if (pooled === null) {
        if (!inference) violate(6, { account, at: w.at, message: `${minutes}-minute balance warning at ${isoInstant(w.at)}, when nothing of the account burned and nothing could stop` })
        continue
      }
      const left = pooled - w.at
      if (!inference && left !== due) {
        violate(6, { account, at: w.at, message: `${minutes}-minute balance warning at ${isoInstant(w.at)}, but at the burn then the money runs out at ${isoInstant(pooled)}, ${left} ms later` })
      } else if (inference && left < due) {
        violate(6, { account, at: w.at, message: `${minutes}-minute balance warning at ${isoInstant(w.at)}, but the wallet and the running holds last to ${isoInstant(pooled)}, only ${left} ms` })
      }
    }
  }

  // (c) Two warnings in one quiet stretch share one run-out instant: the later is the very next
  // threshold, sent exactly the difference of their minutes later (an alarm each).
  for (const [account, warnings] of input.balanceWarningsByAccount) {
    const v = views.get(account)
    if (v === undefined) continue
    for (let i = 1; i < warnings.length; i++) {
      const [a, b] = [warnings[i - 1]!, warnings[i]!]
      if (!quietAt(v, a.at) || !quietAt(v, b.at) || upperBound(v.changes, a.at) !== upperBound(v.changes, b.at)) continue
      if (down.some((d) => a.at <= d.to_ms && d.from_ms <= b.at) || stops.some((s) => a.at <= s && s <= b.at) || v.unsure.some((u) => u.from < b.at && a.at < u.to)) continue
      const [ma, mb] = [minutesOf(a), minutesOf(b)]
      const next = SPEC_BALANCE_WARNING_MINUTES[SPEC_BALANCE_WARNING_MINUTES.indexOf(ma) + 1]
      if (mb !== next || b.at - a.at !== (ma - mb) * MS_PER_MINUTE) {
        violate(6, { account, at: b.at, message: `${mb}-minute balance warning at ${isoInstant(b.at)} after the ${ma}-minute one at ${isoInstant(a.at)}, nothing of the account changing between` })
      }
    }
  }

  // (b) Every threshold crossed in the quiet stretch before a credit_depleted stop was warned
  // of, where the logs show it was not sent in the run-down (see `surelyUnsent`).
  /** The instants of `/v1` requests of the accounts with a credit stop, made only if some stop asks. */
  let requestsAt: Map<string, Set<number>> | null = null
  const requestInstants = (): Map<string, Set<number>> => {
    const byAccount = new Map<string, Set<number>>()
    for (const r of facts.resources) {
      if ((input.transitionsByResource.get(r.id) ?? []).some((t) => t.reason === "credit_depleted")) byAccount.set(r.account, new Set())
    }
    for (const q of facts.api_usage?.requests ?? []) byAccount.get(q.account)?.add(q.at)
    return byAccount
  }
  /**
   * Whether something of the account besides the stopped resource's own settlement changed at
   * the stop's instant (a request, a charge, a refund, another resource's move): it may have
   * come first and spent what the stop was foreseen on, so the stop was not foreseen. (Found by
   * review: a request at a cycle end that took the last $5 made the checker ask for warnings of
   * a stop the engine rightly could not foresee.)
   */
  const changedBesides = (v: AccountView, account: string, id: string, t: number): boolean => {
    if ((input.rowsByAccount.get(account) ?? []).some((x) => x.at === t && x.resource !== id)) return true
    requestsAt ??= requestInstants()
    if (requestsAt.get(account)?.has(t) === true) return true
    return v.resources.some((o) => {
      if (o.id === id) return false
      if (o.context.created_at === t) return true
      const logs = o.kind === "inference_instance" ? [o.id, ...o.context.regions.map((region) => `${o.id}@${region}`)] : [o.id]
      return logs.some((log) => (input.transitionsByResource.get(log) ?? []).some((x) => x.at === t))
    })
  }
  /** Per account with a credit stop: the instants of its credits alone (`creditOnlyInstants`), made when a stop asks. */
  const credits = new Map<string, ReadonlyArray<number>>()
  /** Per account and credit instant: the least `zero` the monitor can have found after it (`runOutAfterCredit`). */
  const runOuts = new Map<string, number>()
  for (const r of facts.resources) {
    const decided = (input.transitionsByResource.get(r.id) ?? []).find((t) => t.reason === "credit_depleted")?.at
    if (decided === undefined) continue
    const v = views.get(r.account)!
    if (changedBesides(v, r.account, r.id, decided)) continue
    const quietFrom = lastChangeBefore(v, decided)
    const warnings = input.balanceWarningsByAccount.get(r.account) ?? []
    // (d) The credit that surely re-armed each threshold, the latest before the quiet stretch.
    let creditList = credits.get(r.account)
    if (creditList === undefined) credits.set(r.account, (creditList = creditOnlyInstants(input, v, r.account, blurred)))
    const rearmedAt = new Map<number, number>()
    // The last change itself is a look at the state the stop is foreseen on: a threshold
    // unsent then whose moment is that instant is sent then.
    const lastIsChange = quietFrom > -Infinity && v.changes[upperBound(v.changes, quietFrom) - 1] === quietFrom && !blurred(v, quietFrom)
    const owed = SPEC_BALANCE_WARNING_MINUTES.filter((m) => decided - m * MS_PER_MINUTE > quietFrom || (lastIsChange && decided - m * MS_PER_MINUTE === quietFrom))
    for (let k = upperBound(creditList, quietFrom) - 1; k >= 0 && rearmedAt.size < owed.length; k--) {
      const c = creditList[k]!
      // An engine stop or outage between the credit and the stop: the checker does not follow
      // the warned thresholds across it.
      if (down.some((d) => d.to_ms >= c && d.from_ms <= decided) || stops.some((s) => s >= c && s <= decided)) break
      const key = `${r.account}\u0000${c}`
      let zero = runOuts.get(key)
      if (zero === undefined) runOuts.set(key, (zero = runOutAfterCredit(input, pending, r.account, v, c)))
      for (const m of owed) if (!rearmedAt.has(m) && zero - c > m * MS_PER_MINUTE + POLICY_REARM_MARGIN_MS) rearmedAt.set(m, c)
    }
    for (const minutes of SPEC_BALANCE_WARNING_MINUTES) {
      const moment = decided - minutes * MS_PER_MINUTE
      const credit = rearmedAt.get(minutes)
      // Where the warnings before the credit do not count either, the plainer report below says it.
      if (credit !== undefined && !(moment > quietFrom && surelyUnsent(warnings, minutes, moment))) {
        if (surelyUnsent(warnings, minutes, moment, credit)) {
          violate(6, { account: r.account, resource: r.id, at: moment, message: `stopped for credit_depleted at ${isoInstant(decided)}, nothing of the account changing since ${isoInstant(quietFrom)}, without a warning of ${minutes} minute${minutes === 1 ? "" : "s"} or less between the credit at ${isoInstant(credit)} that re-armed it and ${isoInstant(moment)}` })
        }
        continue
      }
      if (moment <= quietFrom) continue
      if (surelyUnsent(warnings, minutes, moment)) {
        violate(6, { account: r.account, resource: r.id, at: moment, message: `stopped for credit_depleted at ${isoInstant(decided)}, nothing of the account changing since ${isoInstant(quietFrom)}, without a warning of ${minutes} minute${minutes === 1 ? "" : "s"} or less by ${isoInstant(moment)}` })
      }
    }
  }
}

/**
 * The instants at which the account's only changes are credits (rows of money coming in, no
 * other row, no transition of its resources, no request, no resource created), sorted; not
 * blurred ones. Each unit of work at such an instant is a credit's (the monitor re-arms) or a
 * clock alarm's look at the same state, so the last re-arming look saw the state the logs
 * show after that instant.
 */
const creditOnlyInstants = (input: WarningCheckInput, v: AccountView, account: string, blurred: (v: AccountView, t: number) => boolean): number[] => {
  const byInstant = new Map<number, { rows: number; credits: boolean }>()
  for (const row of input.rowsByAccount.get(account) ?? []) {
    const seen = byInstant.get(row.at)
    if (seen === undefined) byInstant.set(row.at, { rows: 1, credits: row.amount_micros > 0n })
    else {
      seen.rows++
      seen.credits &&= row.amount_micros > 0n
    }
  }
  const instants: number[] = []
  for (const [at, { rows, credits }] of byInstant) {
    // `changes` holds one entry per row, transition, request and creation of the account.
    if (credits && upperBound(v.changes, at) - upperBound(v.changes, at - 1) === rows && !blurred(v, at)) instants.push(at)
  }
  return instants.sort((a, b) => a - b)
}

/**
 * A lower bound of the instant the money runs out, as the monitor found it at its last look at
 * credit instant `c` (`zero = min(pooled, first stop)`; Infinity when nothing burns and nothing
 * can stop), without the engine's forecast: `pooled` is recomputed exactly (`pooledAt`), and the
 * first stop is bounded from below. The engine foresees a stop only at an inference instance's
 * cycle end or at the end of a partial hold a renewal there places, so it is no sooner than the
 * first cycle end: a full hold's `placed_at` + 24 h, a partial one's when its replicas billing
 * now have consumed it (none billing: it waits, with no end). The renewals at the cycle ends of
 * the instances alive are played too, in the engine's order (instant, then id), each on the
 * balance the ones before it left, pessimistically (money coming back at GPU deadlines left
 * out; every storage resource charged its day at every midnight before; what a cycle gives back
 * rounded as billing does; a partial hold timed on every replica): a full hold takes its amount
 * and the next renewal looks at the rest; a renewal short of a full hold bounds the stop by the
 * partial hold it places (at least one second of every replica; less, the cycle end itself) and
 * leaves nothing, and past that bound nothing is played (a partial hold's end may renew again
 * and take money the later renewals would find: the bound is no later than any of them).
 * Less money never makes the engine's first stop later, so each step stays at or before it.
 * (With two instances alive the bound used to stop at the first cycle end: a top-up 20 minutes
 * before one that renews in full, while the other stopped hours later, surely re-armed the
 * 60-minute warning, and a warning of it skipped passed.)
 */
const runOutAfterCredit = (input: WarningCheckInput, pending: PendingIndex, account: string, v: AccountView, c: number): number => {
  const t = c + 1
  // pooledAt reads the state before `t` (that after `c`) and lands on the same instant (±1 ms at $0).
  const pooled = pooledAt(input, pending, account, v, t)
  const pooledBound = pooled === null ? Infinity : pooled - 1
  const alive = v.resources.filter((r) => r.kind === "inference_instance" && r.context.created_at < t && !stoppedBefore(input, r.id, t))
  /** Each instance's cycle end, what its hold gives back then, and the holds it renews on. */
  const ends: Array<{ readonly id: string; readonly end: number; readonly refund: bigint; readonly everyReplica: bigint; readonly full: bigint }> = []
  for (const r of alive) {
    if (r.kind !== "inference_instance") continue
    const ctx = r.context
    const hold = [...(input.holdsByResource.get(r.id) ?? [])].filter((h) => h.placed_at < t).sort((a, b) => a.placed_at - b.placed_at).at(-1)
    // No hold seen: nothing to bound the stop with.
    if (hold === undefined) return c
    const perReplica = BigInt(ctx.hourly_rate_micros) * BigInt(ctx.gpu_count)
    const full = perReplica * BigInt(ctx.regions.length) * BigInt(SPEC_INFERENCE_CYCLE_MS / MS_PER_HOUR)
    const logs = ctx.regions.map((region) => input.transitionsByResource.get(`${r.id}@${region}`) ?? [])
    const billing = logs.filter((log) => BILLABLE.has(stateBefore(log, t))).length
    const billed = logs.reduce((ms, log) => ms + billableMs(log, ctx.created_at, hold.placed_at, c), 0)
    let end: number
    if (hold.held_micros >= full) end = hold.placed_at + SPEC_INFERENCE_CYCLE_MS
    else if (billing === 0) continue
    else {
      const left = hold.held_micros * MICRO_MS_PER_MICRO - perReplica * BigInt(billed)
      end = left <= 0n ? c : c + Number(left / (perReplica * BigInt(billing)))
    }
    // A cycle that ends by the credit's own look: the bound is that end.
    if (end <= c) return Math.min(pooledBound, end)
    const consumed = usageMicros(BigInt(ctx.hourly_rate_micros), ctx.gpu_count, billed + billing * (end - c))
    ends.push({ id: r.id, end, refund: hold.held_micros - consumed, everyReplica: perReplica * BigInt(ctx.regions.length), full })
  }
  if (ends.length === 0) return pooledBound
  ends.sort((a, b) => a.end - b.end || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  let storage = 0n
  for (const s of v.resources) {
    if (s.kind !== "storage" || s.context.created_at >= t) continue
    if ((input.transitionsByResource.get(s.id) ?? []).some((x) => x.at < t && x.to_state === "deleted")) continue
    storage += BigInt(s.context.daily_rate_micros) * BigInt(s.context.size_gb)
  }
  let balance = balanceBefore(input.rowsByAccount.get(account) ?? [], t) - pendingBefore(input, pending, account, t)
  let bound = pooledBound
  let since = c
  for (const e of ends) {
    if (e.end >= bound) break
    // Every midnight in (since, end] charges every storage resource its day, at the least.
    balance -= storage * BigInt(Math.floor(e.end / SPEC_STORAGE_DAY_MS) - Math.floor(since / SPEC_STORAGE_DAY_MS))
    since = e.end
    balance += e.refund
    if (balance >= e.full) {
      balance -= e.full
      continue
    }
    const least = (e.everyReplica * BigInt(POLICY_PARTIAL_HOLD_MIN_MS) + MICRO_MS_PER_MICRO - 1n) / MICRO_MS_PER_MICRO
    bound = Math.min(bound, balance < least ? e.end : e.end + Number((balance * MICRO_MS_PER_MICRO) / e.everyReplica))
    balance = 0n
  }
  return bound
}

/**
 * Whether threshold `minutes` was surely not counted as sent at `moment`, from the warnings
 * alone. The engine counts a threshold as sent only after a warning of it or a tighter one (a
 * jump sends the tightest and counts the larger ones), and not after a warning of a larger one
 * (thresholds go in order). So it is surely unsent when no warning of at most `minutes` came by
 * `moment`, or the last such came before a warning of more. A credit since may have armed it
 * again, or not: one that leaves the account below it (a cycle end's refund spent at once on a
 * partial hold) re-arms nothing, and with an inference instance alive the checker cannot tell
 * which, so credits are not counted here. (They were, as run-downs: the property test found a
 * credit stop after a preemption asked for a warning the engine rightly counted as sent;
 * test/regressions/checker-credit-rearmed-nothing.json.) Only warnings after `after` count: (d)
 * passes the instant of a credit that surely re-armed the threshold.
 */
const surelyUnsent = (warnings: ReadonlyArray<Notification>, minutes: number, moment: number, after = -Infinity): boolean => {
  let last: Notification | undefined
  let larger_after = false
  for (const w of warnings) {
    if (w.at > moment) break
    if (w.at <= after) continue
    if (minutesOf(w) <= minutes) {
      last = w
      larger_after = false
    } else if (last !== undefined) larger_after = true
  }
  return last === undefined || larger_after
}

/** A balance warning's threshold (its data's `minutes`); 0 when it has none. */
const minutesOf = (w: Notification): number => (JSON.parse(w.data ?? "{}") as { minutes?: number }).minutes ?? 0

/** Whether the resource's log has it stopping before `t`. */
const stoppedBefore = (input: WarningCheckInput, id: string, t: number): boolean =>
  (input.transitionsByResource.get(id) ?? []).some((x) => x.at < t && STOPPING.has(x.to_state))

/**
 * The pooled estimate at instant `t`: t + (spendable balance, at least 0, plus what the holds of
 * the resources billing have not consumed) ÷ their burn; `t` when there are no funds; null when
 * nothing burns. All in micro-milliseconds (micros × 3,600,000), exact, on the state the logs
 * show before `t`.
 */
const pooledAt = (input: WarningCheckInput, pending: PendingIndex, account: string, v: AccountView, t: number): number | null => {
  let burn = 0n
  let unconsumed = 0n
  for (const r of v.resources) {
    if (r.kind === "storage" || r.context.created_at >= t) continue
    const transitions = input.transitionsByResource.get(r.id) ?? []
    if (r.kind === "inference_instance") {
      if (stoppedBefore(input, r.id, t)) continue
      const ctx = r.context
      const replicas = ctx.regions.map((region) => input.transitionsByResource.get(`${r.id}@${region}`) ?? [])
      const billing = replicas.filter((log) => BILLABLE.has(stateBefore(log, t))).length
      if (billing === 0) continue
      const hold = [...(input.holdsByResource.get(r.id) ?? [])].filter((h) => h.placed_at < t).sort((a, b) => a.placed_at - b.placed_at).at(-1)
      if (hold === undefined) continue
      const perReplica = BigInt(ctx.hourly_rate_micros) * BigInt(ctx.gpu_count)
      const billed = replicas.reduce((ms, log) => ms + billableMs(log, ctx.created_at, hold.placed_at, t), 0)
      burn += perReplica * BigInt(billing)
      unconsumed += hold.held_micros * MICRO_MS_PER_MICRO - perReplica * BigInt(billed)
      continue
    }
    if (!BILLABLE.has(stateBefore(transitions, t))) continue
    const ctx = r.context
    const hourly = BigInt(ctx.hourly_rate_micros) * BigInt(ctx.gpu_count * ctx.node_count)
    const hold = (input.holdsByResource.get(r.id) ?? [])[0]
    if (hold === undefined) continue
    // What was held t then: the launch's hold and each extension's, each a debit row of the hold.
    let held = 0n
    for (const row of input.rowsByHold.get(hold.id) ?? []) if (row.kind === "gpu_usage" && row.at < t && row.amount_micros < 0n) held -= row.amount_micros
    burn += hourly
    unconsumed += held * MICRO_MS_PER_MICRO - hourly * BigInt(billableMs(transitions, ctx.created_at, ctx.created_at, t))
  }
  if (burn === 0n) return null
  const spendable = balanceBefore(input.rowsByAccount.get(account) ?? [], t) - pendingBefore(input, pending, account, t)
  const funds = (spendable > 0n ? spendable : 0n) * MICRO_MS_PER_MICRO + unconsumed
  return funds <= 0n ? t : t + Number(funds / burn)
}

/** The balance the account's rows before `t` left (rows in id order; the latest before `t` by instant). */
const balanceBefore = (rows: ReadonlyArray<LedgerRow>, t: number): bigint => {
  let balance = 0n
  let latest = -Infinity
  for (const r of rows) {
    if (r.at < t && r.at >= latest) {
      balance = r.balance_after_micros
      latest = r.at
    }
  }
  return balance
}

/** Per-minute API usage of one account: each admitted request's instant, cost, and the instant its minute's row is due. */
type PendingIndex = ReadonlyMap<string, ReadonlyArray<{ readonly at: number; readonly micros: bigint; readonly row_at: number }>>

/** The account's requests in per-minute mode, sorted by instant; empty otherwise (a row per request is posted at once). */
const pendingIndexOf = (input: WarningCheckInput): PendingIndex => {
  const index = new Map<string, Array<{ at: number; micros: bigint; row_at: number }>>()
  const api = input.facts.api_usage
  if (api === undefined || api.rows !== "per_minute") return index
  api.requests.forEach((req, i) => {
    const row_at = Math.min(req.at - (req.at % MS_PER_MINUTE) + MS_PER_MINUTE, input.facts.end_ms)
    const list = index.get(req.account)
    const entry = { at: req.at, micros: input.apiCosts[i]!, row_at }
    if (list === undefined) index.set(req.account, [entry])
    else list.push(entry)
  })
  for (const list of index.values()) list.sort((a, b) => a.at - b.at)
  return index
}

/**
 * Per-minute API usage admitted before `t` and not posted yet (its minute's row comes at the
 * minute's end): charged to the account, not yet in its wallet (src/metering.ts `spendableMicros`).
 * Only a request of the last minute can be pending; one whose engine stopped since was lost.
 */
const pendingBefore = (input: WarningCheckInput, pending: PendingIndex, account: string, t: number): bigint => {
  const list = pending.get(account)
  if (list === undefined) return 0n
  const stops = input.facts.api_usage?.engine_stops_ms ?? []
  let sum = 0n
  for (let i = lowerBoundAt(list, t - MS_PER_MINUTE); i < list.length && list[i]!.at < t; i++) {
    const r = list[i]!
    if (r.row_at > t && !stops.some((s) => r.at <= s && s < t)) sum += r.micros
  }
  return sum
}

/** Index of the first entry at or after `at` in a list sorted by instant. */
const lowerBoundAt = (list: ReadonlyArray<{ readonly at: number }>, at: number): number => {
  let lo = 0
  let hi = list.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (list[mid]!.at < at) lo = mid + 1
    else hi = mid
  }
  return lo
}
