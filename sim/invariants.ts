/**
 * The invariant checker (SPEC §9): what finance checks after every simulation. It reads
 * only what the run left in the ledger (rows, holds, notifications, transitions, final
 * resource records) and recomputes each rule independently of the engine's own
 * bookkeeping: billable time comes from the transitions log, not from the machines.
 *
 * Invariant 8 (same timeline, same seed → byte-identical output) needs a second run; the
 * runner's `checkDeterminism` does it.
 */
import type { GpuInstanceContext } from "../machines/gpuInstance.js"
import type { InferenceContext } from "../machines/inferenceInstance.js"
import type { StorageContext } from "../machines/storage.js"
import type { Hold, LedgerRow, Notification, Transition } from "../src/ledger/store.js"
import { formatDollars, type Micros } from "../src/money.js"
import { apiRequestCosts, checkApiUsage } from "./apiUsageCheck.js"
import { checkBalanceWarnings, upperBound } from "./balanceWarningsCheck.js"
import { type ApiPrice, type ApiRequestFact, holdOfHours, MS_PER_HOUR, MS_PER_MINUTE, SPEC_BILLABLE_STATES, SPEC_DURATION_WARNING_MINUTES, SPEC_INFERENCE_CYCLE_MS, SPEC_STORAGE_DAY_MS, SPEC_WATCHDOG_LAG_MS, usageMicros } from "./oracle.js"
import { isoInstant } from "./iso.js"

export type ResourceFacts =
  | {
      readonly id: string
      readonly account: string
      readonly kind: "gpu_instance" | "gpu_cluster"
      readonly status: string
      readonly live: boolean
      readonly context: GpuInstanceContext
    }
  | {
      readonly id: string
      readonly account: string
      readonly kind: "inference_instance"
      readonly status: string
      readonly live: boolean
      readonly context: InferenceContext
    }
  | {
      readonly id: string
      readonly account: string
      /** A cloud drive or a shared filesystem: `context.kind` says which. */
      readonly kind: "storage"
      readonly status: string
      readonly live: boolean
      readonly context: StorageContext
    }

export interface RunFacts {
  readonly start_ms: number
  readonly end_ms: number
  readonly rows: ReadonlyArray<LedgerRow>
  readonly holds: ReadonlyArray<Hold>
  readonly notifications: ReadonlyArray<Notification>
  readonly transitions: ReadonlyArray<Transition>
  readonly accounts: ReadonlyArray<{ readonly id: string; readonly balance_micros: Micros }>
  readonly resources: ReadonlyArray<ResourceFacts>
  /**
   * The payment provider's side, by account: what it charged and the engine acknowledged,
   * minus what it refunded and the engine acknowledged (micros). Absent: nothing to reconcile.
   */
  readonly provider_net?: ReadonlyMap<string, Micros>
  /**
   * Stretches `(from_ms, to_ms]` in which no engine ran (a control-plane outage): its timers did
   * not fire then, so the daily storage charge of a midnight inside one is not owed.
   */
  readonly engine_down?: ReadonlyArray<{ readonly from_ms: number; readonly to_ms: number }>
  /**
   * The world's own log of each resource's pods (the simulated cluster's): by resource id (an
   * inference replica's `id@region`), every phase entered, in order. Absent for a world that
   * keeps none. Invariant 7 checks the engine billed only while the world held the GPUs.
   */
  readonly world_phases?: ReadonlyMap<string, ReadonlyArray<{ readonly at: number; readonly phase: string }>>
  /**
   * The `/v1` requests the engine admitted (a refused one writes nothing), what each used, the
   * price catalog, and how rows are posted: `api_usage` rows are checked against them (SPEC §6).
   * Absent for a world that does not record them.
   */
  readonly api_usage?: ApiUsageFacts
}

export interface ApiUsageFacts {
  /** One row per request, or one per account, model and minute (TIMELINE-EXTENSIONS `api_usage_rows`). */
  readonly rows: "per_request" | "per_minute"
  /** Platform models by id: their prices, or null (registered, not priced). A model not here is a user instance's. */
  readonly prices: ReadonlyMap<string, ApiPrice | null>
  readonly requests: ReadonlyArray<ApiRequestFact>
  /**
   * Instants after whose work the engine was dropped (restarts and outages), sorted: an open
   * aggregation minute's pending usage is lost with the engine's memory (docs/ENGINE.md).
   */
  readonly engine_stops_ms: ReadonlyArray<number>
}

export interface Violation {
  readonly invariant: number
  readonly name: string
  readonly account: string | null
  readonly resource: string | null
  readonly at: string | null
  readonly message: string
}

export const INVARIANT_NAMES: Record<number, string> = {
  1: "conservation",
  2: "hold_settled_once",
  3: "consumed_matches_billable_time",
  4: "balance_not_negative",
  5: "hold_covered_at_placement",
  6: "warnings_in_order_before_termination",
  7: "no_run_past_deadline",
  8: "determinism",
  9: "payments_reconcile"
}

const BILLABLE: ReadonlySet<string> = new Set(SPEC_BILLABLE_STATES)
const STOPPING: ReadonlySet<string> = new Set(["terminating", "terminated", "failed"])
/** States a resource stops in for good: it burns nothing more and no warning can be about it. */
const STOPPED_STATES: ReadonlySet<string> = new Set(["terminating", "terminated", "failed", "deleted"])

/**
 * One micro-dollar of rounding per settlement (SPEC §9.3), where the checker cannot know which
 * way a settlement rounded (a partial cycle's end). What a hold consumed it does know: billable
 * time × rate × units rounded once by the documented rule (sim/oracle.ts), so that is checked
 * exactly. (Found by mutation: `costMicros` rounding down instead of half up stayed within the
 * one micro, and passed every property run.)
 */
const ROUNDING_MICROS = 1n

/** GPUs a resource holds when fully running: GPUs × nodes, or GPUs × replicas. */
const unitsOf = (r: ResourceFacts): number =>
  r.kind === "inference_instance" ? r.context.gpu_count * r.context.regions.length
  : r.kind === "storage" ? 0
  : r.context.gpu_count * r.context.node_count

/** Milliseconds of [from, to) spent in billable states, from a resource's transitions log. */
export const billableWithin = (transitions: ReadonlyArray<Transition>, created_at: number, from: number, to: number): number => {
  let state = "pending"
  let since = created_at
  let ms = 0
  const add = (a: number, b: number) => {
    const lo = Math.max(a, from)
    const hi = Math.min(b, to)
    if (hi > lo) ms += hi - lo
  }
  for (const t of transitions) {
    if (BILLABLE.has(state)) add(since, t.at)
    state = t.to_state
    since = t.at
  }
  if (BILLABLE.has(state)) add(since, to)
  return ms
}

export type Violate = (invariant: number, v: { account?: string | null; resource?: string | null; at?: number | null; message: string }) => void

/**
 * An inference instance: one hold per 24-hour cycle (SPEC §4), each settled once; what each
 * cycle consumed equals the replicas' billable time within it (from the replicas' own
 * transitions, `id@region`); a full cycle lasts no longer than 24 h, a partial one consumes no
 * more than its hold (both within the watchdog lag).
 */
const checkInference = (
  r: Extract<ResourceFacts, { kind: "inference_instance" }>,
  f: { holds: ReadonlyArray<Hold>; transitionsByResource: Map<string, Transition[]>; terminatedNotices: Map<string, Notification[]>; end_ms: number; violate: Violate }
): void => {
  const ctx = r.context
  const rate = BigInt(ctx.hourly_rate_micros)
  const hourly = rate * BigInt(ctx.gpu_count) * BigInt(ctx.regions.length)
  const stopped = r.status === "terminated" || r.status === "failed" || r.status === "terminating"
  const holds = [...f.holds].sort((a, b) => a.placed_at - b.placed_at || (a.id < b.id ? -1 : 1))
  const stop = (f.transitionsByResource.get(r.id) ?? []).find((t) => STOPPING.has(t.to_state))
  if (holds.length !== ctx.cycle.number) {
    f.violate(2, { account: r.account, resource: r.id, message: `${holds.length} holds for ${ctx.cycle.number} cycles` })
  }
  holds.forEach((h, i) => {
    const last = i === holds.length - 1
    if ((last && !stopped) !== (h.status === "open")) {
      f.violate(2, { account: r.account, resource: r.id, message: `cycle hold ${h.id} is ${h.status} while the instance is ${r.status}` })
    }
    const end = h.settled_at ?? f.end_ms
    const full = hourly * BigInt(SPEC_INFERENCE_CYCLE_MS / MS_PER_HOUR)
    // The hold as SPEC §4 sizes it: the first is the full `rate × GPUs × replicas × 24` the
    // launch was admitted on; a renewal is that, or a partial hold of less.
    if (i === 0 ? h.held_micros !== full : h.held_micros > full) {
      f.violate(5, { account: r.account, resource: r.id, at: h.placed_at, message: `cycle hold ${h.id} of $${formatDollars(h.held_micros)}; a full one is $${formatDollars(full)}` })
    }
    const ms = ctx.regions.reduce((sum, region) => sum + billableWithin(f.transitionsByResource.get(`${r.id}@${region}`) ?? [], ctx.created_at, h.placed_at, end), 0)
    const expected = usageMicros(rate, ctx.gpu_count, ms)
    if (h.held_micros === full) {
      // A full hold covers 24 h of every replica, up to the instance's stop: a stop requested
      // while the world was behind (a Kubernetes watch gap) settles later, when the pods are
      // known gone, but nothing runs on the hold past the stop.
      const ran_to = last && stop !== undefined ? Math.min(end, stop.at) : end
      if (ran_to - h.placed_at > SPEC_INFERENCE_CYCLE_MS + SPEC_WATCHDOG_LAG_MS) {
        f.violate(7, { account: r.account, resource: r.id, at: ran_to, message: `cycle of ${h.id} ran ${ran_to - h.placed_at} ms on a hold that covers ${SPEC_INFERENCE_CYCLE_MS} ms` })
      }
    } else {
      // A partial hold runs until consumed (SPEC §4), however long its replicas take: it ends
      // when they have consumed it (within the watchdog lag), not at a moment set at its start,
      // neither past it nor, when it renews, before.
      const lag = usageMicros(rate, ctx.gpu_count, ctx.regions.length * SPEC_WATCHDOG_LAG_MS)
      if (expected > h.held_micros + lag) {
        f.violate(7, { account: r.account, resource: r.id, at: end, message: `partial cycle of ${h.id} consumed $${formatDollars(expected)} on a hold of $${formatDollars(h.held_micros)}` })
      }
      if (!last && expected + lag + ROUNDING_MICROS < h.held_micros) {
        f.violate(7, { account: r.account, resource: r.id, at: end, message: `partial cycle of ${h.id} renewed having consumed $${formatDollars(expected)} of $${formatDollars(h.held_micros)}` })
      }
    }
    if (h.status !== "settled") return
    const consumed = h.consumed_micros ?? 0n
    const diff = consumed > expected ? consumed - expected : expected - consumed
    if (diff > 0n) {
      f.violate(3, { account: r.account, resource: r.id, at: h.settled_at, message: `cycle ${h.id} consumed $${formatDollars(consumed)}, but ${ms} replica-ms billable × rate × ${ctx.gpu_count} GPUs is $${formatDollars(expected)}` })
    }
  })
  const notices = f.terminatedNotices.get(r.id) ?? []
  if ((r.status === "terminated" || r.status === "failed") && notices.length !== 1) {
    f.violate(6, { account: r.account, resource: r.id, at: (f.transitionsByResource.get(r.id) ?? []).at(-1)?.at ?? null, message: `${r.status} with ${notices.length} termination notices` })
  }
}

/**
 * Storage is charged on every day it is usable (SPEC §5): at each midnight after its creation
 * at which it was available or in use, the daily worker either charged it or, the balance
 * being short, suspended it, unless no engine ran at that midnight. Its status there is the
 * one its transitions gave before that instant: what else happens at the midnight itself may
 * come before the worker (an input: a delete, a top-up) or after it (a top-up its own charge
 * set off), so a usable storage suspended or deleted then is excused, and one restored then
 * is not asked for.
 */
const checkStorageDays = (
  r: Extract<ResourceFacts, { kind: "storage" }>,
  f: { charged: ReadonlySet<number>; transitions: ReadonlyArray<Transition>; end_ms: number; engine_down: ReadonlyArray<{ readonly from_ms: number; readonly to_ms: number }>; violate: Violate }
): void => {
  const day = SPEC_STORAGE_DAY_MS
  for (let midnight = Math.floor(r.context.created_at / day) * day + day; midnight < f.end_ms; midnight += day) {
    if (f.charged.has(midnight) || f.engine_down.some((d) => d.from_ms < midnight && midnight <= d.to_ms)) continue
    let status = "available"
    let excused = false
    for (const t of f.transitions) {
      if (t.at > midnight) break
      if (t.at < midnight) status = t.to_state
      else if (t.to_state === "suspended" || t.to_state === "deleted") excused = true
    }
    if ((status === "available" || status === "in_use") && !excused) {
      f.violate(3, { account: r.account, resource: r.id, at: midnight, message: `storage ${r.id} was ${status} at ${isoInstant(midnight)} and neither charged nor suspended` })
    }
  }
}

/** The stretches `[from, to)` in which a log of states (in order, from `pending`) is billable (`loading`/`running`); an open one ends at `end`. */
const heldStretches = (log: ReadonlyArray<{ readonly at: number; readonly state: string }>, end: number): Array<readonly [number, number]> => {
  const out: Array<readonly [number, number]> = []
  let since: number | null = null
  for (const { at, state } of log) {
    const held = BILLABLE.has(state)
    if (held && since === null) since = at
    else if (!held && since !== null) {
      if (at > since) out.push([since, at])
      since = null
    }
  }
  if (since !== null && end > since) out.push([since, end])
  return out
}

/**
 * 7. Billed only while the world held the GPUs (SPEC §9.7, "none is billed while pending or
 * preempted"): every stretch the engine billed (its transitions through `loading`/`running`)
 * lies inside a stretch in which the world's own log has the pod loading or running. The
 * engine's transitions alone cannot show this: a stop it learned late and logged late would
 * agree with its own billing.
 */
const checkBilledWhileHeld = (
  account: string,
  resource: string,
  transitions: ReadonlyArray<Transition>,
  world: ReadonlyArray<{ readonly at: number; readonly phase: string }>,
  end: number,
  violate: Violate,
  /** Billing ends here whatever the log says after (an inference replica: its instance's stop). */
  billedUntil = end
): void => {
  const billed = heldStretches(transitions.map((t) => ({ at: t.at, state: t.to_state })), end)
    .map(([from, to]) => [from, Math.min(to, billedUntil)] as const)
    .filter(([from, to]) => to > from)
  if (billed.length === 0) return
  const held = heldStretches(world.map((w) => ({ at: w.at, state: w.phase })), end)
  let i = 0
  for (const [from, to] of billed) {
    let at = from
    while (at < to) {
      while (i < held.length && held[i]![1] <= at) i++
      const stretch = held[i]
      if (stretch === undefined || stretch[0] > at) {
        const phase = [...world].reverse().find((w) => w.at <= at)?.phase ?? "not created"
        violate(7, { account, resource, at, message: `billed from ${isoInstant(at)} while its pod was ${phase} (the world's log)` })
        return
      }
      at = Math.min(to, stretch[1])
    }
  }
}

/** Appends `value` to the list under `key`, creating the list on first use. */
const push = <V>(map: Map<string, V[]>, key: string, value: V): void => {
  const list = map.get(key)
  if (list === undefined) map.set(key, [value])
  else list.push(value)
}

/**
 * The facts grouped the ways the checks look them up, each list in its source's order (rows
 * by id, holds by placement, notifications and transitions by id). Built in one pass over
 * each source: a full fleet has hundreds of thousands of rows, and a pass per index (or a
 * `filter` copy before each) costs more than all the checks together.
 */
interface FactIndex {
  readonly rowsByAccount: Map<string, LedgerRow[]>
  readonly rowsByHold: Map<string, LedgerRow[]>
  /** `storage_billing` rows, by the resource they charge. */
  readonly storageChargesByResource: Map<string, LedgerRow[]>
  /**
   * Instants at which each account's run-down may end, sorted: its credits (money into the
   * wallet: topups, positive adjustments, a hold's unused part given back, a failed card
   * refund returned) and the stops for good of its GPU resources and inference instances
   * (the first move into terminating, terminated or failed), after which the engine arms
   * its sent warnings again.
   */
  readonly rundownEndsByAccount: Map<string, number[]>
  readonly holdsById: Map<string, Hold>
  readonly holdsByAccount: Map<string, Hold[]>
  readonly holdsByResource: Map<string, Hold[]>
  readonly transitionsByResource: Map<string, Transition[]>
  readonly durationWarningsByResource: Map<string, Notification[]>
  readonly balanceWarningsByAccount: Map<string, Notification[]>
  readonly terminatedNoticesByResource: Map<string, Notification[]>
  readonly resourceById: Map<string, ResourceFacts>
}

/** Per-minute API requests by account, in the order they were admitted (the timeline's): instants and costs. */
type PerMinuteRequests = ReadonlyMap<string, { readonly ats: number[]; readonly micros: bigint[] }>

const perMinuteRequestsOf = (facts: RunFacts, costs: ReadonlyArray<bigint>): PerMinuteRequests => {
  const byAccount = new Map<string, { ats: number[]; micros: bigint[] }>()
  const api = facts.api_usage
  if (api === undefined || api.rows !== "per_minute") return byAccount
  api.requests.forEach((req, i) => {
    let list = byAccount.get(req.account)
    if (list === undefined) byAccount.set(req.account, (list = { ats: [], micros: [] }))
    list.ats.push(req.at)
    list.micros.push(costs[i]!)
  })
  return byAccount
}

/**
 * Per-minute API usage of `account` admitted by an inference renewal at `at_ms` and not posted
 * yet (src/metering.ts `spendableMicros`), from the requests, not the rows: a request at the
 * renewal's instant is an input and comes before it, and the row of the minute ending then is
 * posted after it (the metering flush follows the alarms of its instant), so both are pending
 * there; a request whose engine stopped before the renewal was lost with it. (Counted from rows
 * posted after the renewal's instant, the minute ending at that instant was missed, and so was a
 * row a restart at that instant lost: a renewal that held all that was spendable was reported.)
 */
const pendingApiUsageAt = (facts: RunFacts, requests: PerMinuteRequests, account: string, at_ms: number): bigint => {
  const list = requests.get(account)
  if (list === undefined) return 0n
  const stops = facts.api_usage?.engine_stops_ms ?? []
  let sum = 0n
  // Only a request of the minute before `at_ms` can still be pending.
  for (let i = upperBound(list.ats, at_ms) - 1; i >= 0 && list.ats[i]! >= at_ms - MS_PER_MINUTE; i--) {
    const req_at = list.ats[i]!
    const row_at = Math.min(req_at - (req_at % MS_PER_MINUTE) + MS_PER_MINUTE, facts.end_ms)
    if (row_at >= at_ms && !stops.some((s) => req_at <= s && s < at_ms)) sum += list.micros[i]!
  }
  return sum
}

/**
 * A card refund row (not a hold's): − when a top-up is refunded at the provider, + when that
 * refund failed there and its money came back; − when the top-up is disputed (a chargeback:
 * the provider's balance gave the money to the cardholder's bank), + when the dispute's money
 * was reinstated (src/payments.ts). A payment's card refund rows add up to what the provider
 * really refunded and kept disputed.
 */
const isCardRefund = (r: LedgerRow): boolean => r.kind === "refund" && r.hold_id === null

const indexFacts = (facts: RunFacts): FactIndex => {
  const index: FactIndex = {
    rowsByAccount: new Map(),
    rowsByHold: new Map(),
    storageChargesByResource: new Map(),
    rundownEndsByAccount: new Map(),
    holdsById: new Map(),
    holdsByAccount: new Map(),
    holdsByResource: new Map(),
    transitionsByResource: new Map(),
    durationWarningsByResource: new Map(),
    balanceWarningsByAccount: new Map(),
    terminatedNoticesByResource: new Map(),
    resourceById: new Map()
  }
  for (const r of facts.rows) {
    push(index.rowsByAccount, r.account, r)
    if (r.hold_id !== null) push(index.rowsByHold, r.hold_id, r)
    if (r.kind === "storage_billing" && r.resource !== null) push(index.storageChargesByResource, r.resource, r)
    // The credit back of a refund to the card that failed at the provider is a credit too.
    if (r.amount_micros > 0n && (r.kind === "topup" || r.kind === "adjustment" || r.kind === "refund")) push(index.rundownEndsByAccount, r.account, r.at)
  }
  for (const h of facts.holds) {
    index.holdsById.set(h.id, h)
    push(index.holdsByAccount, h.account, h)
    push(index.holdsByResource, h.resource, h)
  }
  for (const t of facts.transitions) push(index.transitionsByResource, t.resource, t)
  for (const n of facts.notifications) {
    if (n.kind === "duration_warning") push(index.durationWarningsByResource, n.resource ?? "", n)
    else if (n.kind === "balance_warning") push(index.balanceWarningsByAccount, n.account, n)
    else if (n.kind === "terminated") push(index.terminatedNoticesByResource, n.resource ?? "", n)
  }
  for (const r of facts.resources) {
    index.resourceById.set(r.id, r)
    if (r.kind === "storage") continue
    const stop = (index.transitionsByResource.get(r.id) ?? []).find((t) => STOPPING.has(t.to_state))
    if (stop !== undefined) push(index.rundownEndsByAccount, r.account, stop.at)
  }
  for (const list of index.rundownEndsByAccount.values()) list.sort((a, b) => a - b)
  return index
}

export const checkInvariants = (facts: RunFacts): Violation[] => {
  const violations: Violation[] = []
  const violate: Violate = (invariant, v) => {
    violations.push({
      invariant,
      name: INVARIANT_NAMES[invariant]!,
      account: v.account ?? null,
      resource: v.resource ?? null,
      // What the final state shows (a sum, a hold still open) is found at the end of the run.
      at: isoInstant(v.at ?? facts.end_ms),
      message: v.message
    })
  }

  const {
    rowsByAccount,
    rowsByHold,
    storageChargesByResource,
    rundownEndsByAccount,
    holdsById,
    holdsByAccount,
    holdsByResource,
    transitionsByResource,
    durationWarningsByResource,
    balanceWarningsByAccount,
    terminatedNoticesByResource,
    resourceById
  } = indexFacts(facts)

  /** An overage row: posted by a settlement, for exactly the hold's overage. */
  const isOverage = (r: LedgerRow): boolean => {
    if (r.kind !== "gpu_usage" || r.hold_id === null) return false
    const h = holdsById.get(r.hold_id)
    return h !== undefined && h.status === "settled" && h.settled_at === r.at && h.overage_micros !== null && r.amount_micros === -h.overage_micros
  }
  const lagBound = (resource: string | null): Micros => {
    const r = resource === null ? undefined : resourceById.get(resource)
    if (r === undefined || r.kind === "storage") return 0n
    return usageMicros(BigInt(r.context.hourly_rate_micros), unitsOf(r), SPEC_WATCHDOG_LAG_MS) + ROUNDING_MICROS
  }

  // 1. Conservation, 4. never below zero but for bounded overage, 5. holds covered when placed.
  for (const account of facts.accounts) {
    const rows = rowsByAccount.get(account.id) ?? []
    let running = 0n
    const sums = { topup: 0n, adjustment: 0n, card_refunds: 0n, api_usage: 0n, storage_billing: 0n }
    for (const r of rows) {
      running += r.amount_micros
      if (running !== r.balance_after_micros) {
        violate(1, { account: account.id, resource: r.resource, at: r.at, message: `row ${r.id}: balance_after $${formatDollars(r.balance_after_micros)} but rows sum to $${formatDollars(running)}` })
        running = r.balance_after_micros
      }
      if (r.kind === "topup") sums.topup += r.amount_micros
      if (r.kind === "adjustment") sums.adjustment += r.amount_micros
      if (isCardRefund(r)) sums.card_refunds -= r.amount_micros
      if (r.kind === "api_usage") sums.api_usage -= r.amount_micros
      if (r.kind === "storage_billing") sums.storage_billing -= r.amount_micros
      const overage = isOverage(r)
      // Decision (src/supervisor.ts postPayment): a refund to the card is booked in full even
      // below $0, and a credit never makes a balance negative; neither is §9.4's business.
      if (r.balance_after_micros < 0n && r.amount_micros < 0n && !isCardRefund(r)) {
        const bound = lagBound(r.resource)
        if (!overage || -r.amount_micros > bound) {
          violate(4, { account: account.id, resource: r.resource, at: r.at, message: `row ${r.id} (${r.kind} $${formatDollars(r.amount_micros)}) leaves the balance at $${formatDollars(r.balance_after_micros)}` })
        }
      }
      if (r.kind === "gpu_usage" && r.hold_id !== null && !overage && r.balance_after_micros < 0n) {
        violate(5, { account: account.id, resource: r.resource, at: r.at, message: `hold row ${r.id} of $${formatDollars(-r.amount_micros)} placed on a balance of $${formatDollars(r.balance_after_micros - r.amount_micros)}` })
      }
    }
    if (running !== account.balance_micros) {
      violate(1, { account: account.id, message: `ledger rows sum to $${formatDollars(running)}, the wallet holds $${formatDollars(account.balance_micros)}` })
    }
    let consumed = 0n
    let open = 0n
    for (const h of holdsByAccount.get(account.id) ?? []) {
      if (h.status === "settled") consumed += h.consumed_micros ?? 0n
      else open += h.held_micros
    }
    const expected = sums.topup - sums.card_refunds - consumed - sums.api_usage - sums.storage_billing + sums.adjustment - open
    if (expected !== account.balance_micros) {
      violate(1, { account: account.id, message: `topups − refunds − consumed − usage ± adjustments − open holds = $${formatDollars(expected)}, balance is $${formatDollars(account.balance_micros)}` })
    }
  }

  // 3. API usage (SPEC §6): each api_usage row is what its requests cost, by the checker's own arithmetic.
  const apiCosts = facts.api_usage === undefined ? [] : apiRequestCosts(facts.api_usage, violate)
  if (facts.api_usage !== undefined) checkApiUsage(facts.api_usage, apiCosts, facts.rows, facts.end_ms, violate)

  // 9. The provider's side and ours reconcile to the cent: per account, Σ charged − Σ refunded
  // − Σ disputed (withdrawn less reinstated) at the provider == Σ topup rows − Σ refund-to-card
  // rows (refunds and disputes) in the ledger. And per payment, its refund and dispute rows
  // together never give back more than it brought in, nor take more than it brought in.
  if (facts.provider_net !== undefined) {
    const byPayment = new Map<string, { account: string; topup: Micros; card: Micros }>()
    for (const r of facts.rows) {
      if (r.resource === null || (r.kind !== "topup" && !isCardRefund(r))) continue
      const p = byPayment.get(r.resource) ?? { account: r.account, topup: 0n, card: 0n }
      if (r.kind === "topup") p.topup += r.amount_micros
      else p.card += r.amount_micros
      byPayment.set(r.resource, p)
    }
    for (const [payment, p] of [...byPayment].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (p.card > 0n || p.topup + p.card < 0n) {
        violate(9, { account: p.account, resource: payment, message: `payment ${payment}: refund and dispute rows net $${formatDollars(p.card)} against its top-up of $${formatDollars(p.topup)}` })
      }
    }
    const ours = new Map<string, Micros>()
    for (const r of facts.rows) {
      if (r.kind === "topup" || isCardRefund(r)) ours.set(r.account, (ours.get(r.account) ?? 0n) + r.amount_micros)
    }
    for (const account of [...new Set([...ours.keys(), ...facts.provider_net.keys()])].sort()) {
      const provider = facts.provider_net.get(account) ?? 0n
      const ledger = ours.get(account) ?? 0n
      if (provider !== ledger) violate(9, { account, message: `the provider nets $${formatDollars(provider)}, the ledger's card rows net $${formatDollars(ledger)}` })
    }
  }

  // 6. Low-balance warnings (SPEC §7): within one run-down (between two credits of the
  // account, or stops for good of its resources), thresholds strictly in firing order, so
  // none twice.
  // A credit or a stop starts a new run-down only if a warning follows it before the next one:
  // a top-up too small to lift the account above any threshold re-arms nothing (SPEC §7), and
  // the warnings already sent still stand for the stop that follows. (The price: a credit
  // that should have re-armed a threshold, followed by no warning at all, is not caught here;
  // before a credit stop, sim/balanceWarningsCheck.ts (d) catches it where the re-arm is sure.)
  const rundownCredits = new Map<string, number[]>()
  for (const [account, credits] of rundownEndsByAccount) {
    const warned = (balanceWarningsByAccount.get(account) ?? []).map((w) => w.at)
    let w = 0
    const kept: number[] = []
    credits.forEach((credit, i) => {
      const next = credits[i + 1] ?? Infinity
      while (w < warned.length && warned[w]! < credit) w++
      if (w < warned.length && warned[w]! < next) kept.push(credit)
    })
    rundownCredits.set(account, kept)
  }
  // A run-down is counted by those credits at or before an instant (sorted; a binary search).
  const rundownAt = (account: string, at: number): number => upperBound(rundownCredits.get(account) ?? [], at)
  // A warning at the very instant of a credit may have come before it (an earlier unit of work
  // at that instant) or after it: only two warnings that no credit can separate share a run-down.
  for (const [account, list] of balanceWarningsByAccount) {
    let last: { minutes: number; earliest: number } | null = null
    for (const n of list) {
      const minutes = (JSON.parse(n.data ?? "{}") as { minutes?: number }).minutes ?? 0
      if (last !== null && last.earliest === rundownAt(account, n.at) && minutes >= last.minutes) {
        violate(6, { account, at: n.at, message: `${minutes}-minute balance warning after the ${last.minutes}-minute one in the same run-down` })
      }
      last = { minutes, earliest: rundownAt(account, n.at - 1) }
    }
  }

  // 6. A stop for credit_depleted is one the account was warned of: some low-balance warning
  // of the same run-down came at or before it (a stop at a credit's instant may have come
  // before the credit, in the run-down it ends).
  for (const n of facts.notifications) {
    if (n.kind !== "terminated" || !(n.data ?? "").includes("credit_depleted")) continue
    // The stop is decided when the resource leaves running for it; its notice may come later,
    // when its pods are gone, after the settlement's refund that started a new run-down.
    const decided = (transitionsByResource.get(n.resource ?? "") ?? []).find((t) => t.reason === "credit_depleted")?.at ?? n.at
    const earliest = rundownAt(n.account, decided - 1)
    const warned = (balanceWarningsByAccount.get(n.account) ?? []).some((w) => w.at <= decided && rundownAt(n.account, w.at) >= earliest)
    if (!warned) violate(6, { account: n.account, resource: n.resource, at: n.at, message: "stopped for credit_depleted without a low-balance warning first" })
  }

  // 6. Each low-balance warning tells the truth, on time; none owed before a credit stop is missing.
  checkBalanceWarnings({ facts, rowsByAccount, rowsByHold, holdsByResource, transitionsByResource, balanceWarningsByAccount, terminatedNoticesByResource, apiCosts }, violate)

  // 6. A low-balance warning warns of a stop still to come (SPEC §9.6: "before the termination
  // they warn of"): when it is sent, one of the account's resources has not stopped yet. (The
  // order and once-per-run-down checks above cannot see a warning sent after the account's
  // last resource stopped.) A stop and a warning at one instant may come in either order.
  const liveSpans = new Map<string, Array<{ readonly from: number; readonly to: number }>>()
  for (const r of facts.resources) {
    const stop = (transitionsByResource.get(r.id) ?? []).find((t) => STOPPED_STATES.has(t.to_state))?.at ?? Infinity
    const spans = liveSpans.get(r.account)
    const span = { from: r.context.created_at, to: stop }
    if (spans === undefined) liveSpans.set(r.account, [span])
    else spans.push(span)
  }
  for (const [account, list] of balanceWarningsByAccount) {
    const spans = liveSpans.get(account) ?? []
    for (const n of list) {
      if (!spans.some((s) => s.from <= n.at && n.at <= s.to)) {
        violate(6, { account, at: n.at, message: "low-balance warning sent when none of the account's resources was left to stop" })
      }
    }
  }

  // 2. Every hold settled exactly once, consumed + refunded == held; its rows add up.
  for (const h of facts.holds) {
    const rows = rowsByHold.get(h.id) ?? []
    const net = rows.reduce((sum, r) => sum + r.amount_micros, 0n)
    if (h.status === "settled") {
      const consumed = h.consumed_micros ?? 0n
      const refunded = h.refunded_micros ?? 0n
      const overage = h.overage_micros ?? 0n
      const expectRefund = h.held_micros > consumed ? h.held_micros - consumed : 0n
      const expectOverage = consumed > h.held_micros ? consumed - h.held_micros : 0n
      if (consumed - overage + refunded !== h.held_micros || refunded !== expectRefund || overage !== expectOverage) {
        violate(2, { account: h.account, resource: h.resource, at: h.settled_at, message: `hold ${h.id}: consumed $${formatDollars(consumed)} − overage $${formatDollars(overage)} + refunded $${formatDollars(refunded)} ≠ held $${formatDollars(h.held_micros)}` })
      }
      if (net !== -consumed) violate(2, { account: h.account, resource: h.resource, at: h.settled_at, message: `hold ${h.id}: its rows net $${formatDollars(net)}, consumed is $${formatDollars(consumed)}` })
      const settlementRows = rows.filter((r) => r.at === h.settled_at && (r.kind === "refund" || isOverage(r)))
      if (settlementRows.length > 1) violate(2, { account: h.account, resource: h.resource, at: h.settled_at, message: `hold ${h.id} settled by ${settlementRows.length} rows` })
    } else if (net !== -h.held_micros) {
      violate(2, { account: h.account, resource: h.resource, message: `open hold ${h.id}: its rows net $${formatDollars(net)}, held is $${formatDollars(h.held_micros)}` })
    }
  }

  for (const r of facts.resources) {
    if (r.kind === "storage") {
      // Storage (SPEC §5): charged only at 00:00 UTC, size_gb × daily rate, at most once a day.
      const charges = storageChargesByResource.get(r.id) ?? []
      // One day's charge as its row books it: a debit.
      const day_micros = -(BigInt(r.context.daily_rate_micros) * BigInt(r.context.size_gb))
      const days = new Set<number>()
      // A day is charged at its midnight, or when the storage is restored during it (a restore
      // pays for the day it comes back in: POLICY.md); either way once.
      const transitions = transitionsByResource.get(r.id) ?? []
      const restoredAt = new Set(transitions.filter((t) => t.from_state === "suspended" && t.to_state !== "deleted").map((t) => t.at))
      for (const c of charges) {
        const dayOf = c.at - (c.at % SPEC_STORAGE_DAY_MS)
        if ((c.at !== dayOf && !restoredAt.has(c.at)) || c.amount_micros !== day_micros || days.has(dayOf)) {
          violate(1, { account: r.account, resource: r.id, at: c.at, message: `storage charge $${formatDollars(c.amount_micros)} at ${isoInstant(c.at)} is not one day of ${r.context.size_gb} GB, at midnight or at a restore` })
        }
        days.add(dayOf)
      }
      // Storage usable again pays for the day it comes back in, at once.
      if (day_micros !== 0n) {
        for (const at of restoredAt) {
          if (!charges.some((c) => c.at === at)) violate(3, { account: r.account, resource: r.id, at, message: `storage ${r.id} restored at ${isoInstant(at)} without the day's charge` })
        }
      }
      if (day_micros !== 0n) checkStorageDays(r, { charged: days, transitions: transitionsByResource.get(r.id) ?? [], end_ms: facts.end_ms, engine_down: facts.engine_down ?? [], violate })
      continue
    }
    if (r.kind === "inference_instance") {
      checkInference(r, { holds: holdsByResource.get(r.id) ?? [], transitionsByResource, terminatedNotices: terminatedNoticesByResource, end_ms: facts.end_ms, violate })
      if (facts.world_phases !== undefined) {
        // A replica bills until the instance stops, whenever its own deletion is logged.
        const stoppedAt = (transitionsByResource.get(r.id) ?? []).find((t) => STOPPING.has(t.to_state))?.at ?? facts.end_ms
        for (const region of r.context.regions) {
          const replica = `${r.id}@${region}`
          checkBilledWhileHeld(r.account, replica, transitionsByResource.get(replica) ?? [], facts.world_phases.get(replica) ?? [], Math.min(facts.end_ms, stoppedAt), violate, stoppedAt)
        }
      }
      continue
    }
    if (facts.world_phases !== undefined) checkBilledWhileHeld(r.account, r.id, transitionsByResource.get(r.id) ?? [], facts.world_phases.get(r.id) ?? [], facts.end_ms, violate)
    const ctx = r.context
    const rate = BigInt(ctx.hourly_rate_micros)
    const units = unitsOf(r)
    const holds = holdsByResource.get(r.id) ?? []
    const transitions = transitionsByResource.get(r.id) ?? []
    const stop = transitions.find((t) => STOPPING.has(t.to_state))
    const stopped = STOPPING.has(r.status)

    if (holds.length !== 1) {
      violate(2, { account: r.account, resource: r.id, at: holds[1]?.placed_at ?? ctx.created_at, message: `${holds.length} holds for one GPU resource` })
      continue
    }
    const hold = holds[0]!
    if (stopped !== (hold.status === "settled")) {
      violate(2, { account: r.account, resource: r.id, at: stop?.at ?? hold.settled_at ?? null, message: `resource is ${r.status} but its hold is ${hold.status}` })
    }

    // 3. Consumed = billable time (from the transitions log) × rate × GPUs, rounded once (sim/oracle.ts): exact.
    let state = "pending"
    let since = ctx.created_at
    let billable_ms = 0
    let first_billable: number | null = null
    for (const t of transitions) {
      if (t.from_state !== state) {
        violate(3, { account: r.account, resource: r.id, at: t.at, message: `transition from ${t.from_state} while the log says ${state}` })
      }
      if (BILLABLE.has(state)) billable_ms += t.at - since
      if (BILLABLE.has(t.to_state) && first_billable === null) first_billable = t.at
      state = t.to_state
      since = t.at
    }
    if (hold.status === "settled") {
      const expected = usageMicros(rate, units, billable_ms)
      const consumed = hold.consumed_micros ?? 0n
      const diff = consumed > expected ? consumed - expected : expected - consumed
      if (diff > 0n) {
        violate(3, { account: r.account, resource: r.id, at: hold.settled_at, message: `consumed $${formatDollars(consumed)}, but ${billable_ms} ms billable × rate × ${units} GPUs is $${formatDollars(expected)}` })
      }
    }

    // 7. Deadline = started_at + committed hours; the stop comes by then (+ the watchdog lag).
    if (holdOfHours(rate, units, ctx.hours_committed) !== hold.held_micros) {
      violate(7, { account: r.account, resource: r.id, at: hold.placed_at, message: `held $${formatDollars(hold.held_micros)} is not ${ctx.hours_committed} h × rate × ${units} GPUs` })
    }
    if (ctx.started_at !== first_billable) {
      violate(7, { account: r.account, resource: r.id, at: first_billable ?? ctx.started_at, message: `started_at ${ctx.started_at === null ? "null" : isoInstant(ctx.started_at)} but the first billable transition is at ${first_billable === null ? "none" : isoInstant(first_billable)}` })
    }
    const deadline = first_billable === null ? null : first_billable + ctx.hours_committed * MS_PER_HOUR
    if (deadline !== null) {
      // §9.7 and §9.4 allow the watchdog lag past a deadline; the simulator's deadline alarm has
      // none, unless the engine was down then: elsewhere a duration_expired stop is at the
      // deadline exactly, and no overage is owed. (Found by mutation: a deadline alarm 30 s
      // late passed every property run.)
      const downNearDeadline = (facts.engine_down ?? []).some((d) => d.from_ms < deadline + SPEC_WATCHDOG_LAG_MS && deadline <= d.to_ms)
      if (!downNearDeadline && ctx.termination_reason === "duration_expired" && stop !== undefined && stop.at !== deadline) {
        violate(7, { account: r.account, resource: r.id, at: stop.at, message: `stopped for duration_expired at ${isoInstant(stop.at)}, deadline ${isoInstant(deadline)}, no outage` })
      }
      if (!downNearDeadline && hold.status === "settled" && (hold.overage_micros ?? 0n) > 0n) {
        violate(4, { account: r.account, resource: r.id, at: hold.settled_at, message: `overage $${formatDollars(hold.overage_micros ?? 0n)} with no outage at the deadline` })
      }
      const stopAt = stop?.at ?? facts.end_ms
      if (stopAt > deadline + SPEC_WATCHDOG_LAG_MS) {
        violate(7, { account: r.account, resource: r.id, at: stopAt, message: `ran ${stopAt - deadline} ms past its deadline ${isoInstant(deadline)}` })
      }
      if (ctx.termination_reason === "duration_expired" && stop !== undefined && stop.at < deadline) {
        violate(7, { account: r.account, resource: r.id, at: stop.at, message: `stopped for duration_expired before its deadline ${isoInstant(deadline)}` })
      }
    }

    // 6. Duration warnings: per deadline, thresholds in order, each once, on time, before the
    // stop, and (below) none owed missing.
    const warnings = durationWarningsByResource.get(r.id) ?? []
    // Of several termination notices (not itself checked for a GPU resource), the last counts.
    const notice = terminatedNoticesByResource.get(r.id)?.at(-1)
    // When the engine knew of the stop: a failure found late is logged when it happened (what
    // was billed) but told, and known, when found; a warning sent in between was on time.
    const stopKnownAt = stop === undefined ? undefined : stop.to_state === "failed" && notice !== undefined && notice.at > stop.at ? notice.at : stop.at
    const seen = new Map<string, number>()
    const sent = new Set<string>()
    for (const w of warnings) {
      const data = JSON.parse(w.data ?? "{}") as { minutes?: number; deadline_at?: number }
      if (data.minutes === undefined || data.deadline_at === undefined) {
        violate(6, { account: r.account, resource: r.id, at: w.at, message: "duration warning without its threshold and deadline" })
        continue
      }
      const key = String(data.deadline_at)
      const previous = seen.get(key)
      if (previous !== undefined && data.minutes >= previous) {
        violate(6, { account: r.account, resource: r.id, at: w.at, message: `${data.minutes}-minute warning after the ${previous}-minute one for the same deadline` })
      }
      seen.set(key, data.minutes)
      sent.add(`${key}:${data.minutes}`)
      const due = data.deadline_at - data.minutes * MS_PER_MINUTE
      if (w.at < due || w.at > due + SPEC_WATCHDOG_LAG_MS) {
        violate(6, { account: r.account, resource: r.id, at: w.at, message: `${data.minutes}-minute warning sent at ${isoInstant(w.at)}, due ${isoInstant(due)}` })
      }
      if (stopKnownAt !== undefined && w.at > stopKnownAt) {
        violate(6, { account: r.account, resource: r.id, at: w.at, message: `warning sent after the stop at ${isoInstant(stopKnownAt)}` })
      }
    }
    // Every threshold of the deadline in force is armed (an extension adds at least an hour
    // before the old deadline, a start commits at least one), so each one due before the stop
    // was known, or the end of the run, was owed. A moment that passed while no engine ran
    // may be dropped (machines/gpuInstance.ts).
    if (deadline !== null) {
      const until = stopKnownAt ?? facts.end_ms
      const down = facts.engine_down ?? []
      for (const minutes of SPEC_DURATION_WARNING_MINUTES) {
        const due = deadline - minutes * MS_PER_MINUTE
        if (due >= until || down.some((d) => d.from_ms < due && due <= d.to_ms + SPEC_WATCHDOG_LAG_MS)) continue
        if (!sent.has(`${deadline}:${minutes}`)) {
          violate(6, { account: r.account, resource: r.id, at: due, message: `no ${minutes}-minute warning for the deadline ${isoInstant(deadline)}` })
        }
      }
    }
    if ((r.status === "terminated" || r.status === "failed") && notice === undefined) {
      violate(6, { account: r.account, resource: r.id, at: stop?.at ?? null, message: `${r.status} without a notification` })
    }
    if (notice !== undefined && warnings.some((w) => w.at > notice.at)) {
      violate(6, { account: r.account, resource: r.id, at: notice.at, message: "a warning came after the termination notice" })
    }
  }

  // §5 (SPEC §4: a renewal holds in full if the balance covers it, else "partial (all of the
  // balance …)"): an inference renewal hold below the full one leaves nothing spendable. Found
  // by mutation: a partial hold of the balance less one micro, and a renewal that did not count
  // the cycle's own refund, passed every property run.
  const perMinute = perMinuteRequestsOf(facts, apiCosts)
  for (const r of facts.resources) {
    if (r.kind !== "inference_instance") continue
    const full = BigInt(r.context.hourly_rate_micros) * BigInt(r.context.gpu_count) * BigInt(r.context.regions.length) * 24n
    const hs = [...(holdsByResource.get(r.id) ?? [])].sort((a, b) => a.placed_at - b.placed_at || (a.id < b.id ? -1 : 1))
    hs.forEach((h, i) => {
      if (i === 0 || h.held_micros >= full) return
      const row = (rowsByHold.get(h.id) ?? []).find((x) => x.kind === "gpu_usage" && x.at === h.placed_at && x.amount_micros === -h.held_micros)
      if (row === undefined) return
      // Per-minute API usage admitted before the hold but not posted yet was not spendable.
      const pending = pendingApiUsageAt(facts, perMinute, r.account, h.placed_at)
      if (row.balance_after_micros > pending) violate(5, { account: r.account, resource: r.id, at: h.placed_at, message: `partial hold ${h.id} of $${formatDollars(h.held_micros)} left $${formatDollars(row.balance_after_micros)} unheld` })
    })
  }
  return violations
}
