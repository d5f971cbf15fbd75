/**
 * The account-level low-balance monitor (SPEC §7): after every unit of work that moved an
 * account's money or changed what it burns, work out when its money runs out and send, skip
 * or arm the 60/30/20/10/5/3/1-minute warnings. The arithmetic is src/lowBalance.ts's; this is
 * the state around it: which accounts the unit touched, each account's burn as last measured,
 * and one clock alarm per account for its next warning, at its exact instant.
 *
 * The supervisor owns the resources, so it measures the burn (`BalanceMonitorHost.measureBurn`)
 * and runs the alarm's unit of work; the monitor never looks at a machine itself.
 */
import { Lane, type EngineClock, type TimerHandle } from "./clock.js"
import type { LedgerStore } from "./ledger/store.js"
import { microMs, planWarnings, zeroAt } from "./lowBalance.js"
import type { Micros } from "./money.js"
import * as policy from "./policy.js"
import type { JournalPort, NotifierPort } from "./services.js"

/**
 * An account's burn as of `at`: the rate (micros per hour) of its resources holding GPUs and
 * what their holds have not consumed yet (micro-ms). Between two events of those resources
 * the unconsumed part falls exactly by the burn per millisecond, so an API charge or a top-up
 * needs no new measure.
 */
export interface BurnMeasure {
  readonly at: number
  readonly burn: bigint
  readonly unconsumed: bigint
  /**
   * Each active GPU resource's deadline and each active inference instance's next cycle end,
   * in the engine's order (`foreseenBefore`), with what its hold gives back then if it keeps
   * billing as now (negative: an overage; the settlement lands before the renewal looks at
   * the balance), and for a cycle end the full hold it renews on and the least partial one.
   */
  readonly renewals: ReadonlyArray<ForeseenRenewal>
  /** The index in `renewals` of the last cycle end, or −1: past it nothing renews, so nothing stops. */
  readonly last_cycle_end: number
  /**
   * The daily charge of each storage resource the next midnight will charge (available or in
   * use, not free), in id order: the storage worker's order, each on the balance the ones
   * before it left.
   */
  readonly storage_daily_micros: ReadonlyArray<bigint>
}

export interface ForeseenRenewal {
  /**
   * `deadline`: a GPU resource stops at its deadline and gives back what its hold did not use;
   * nothing renews (the hold fields are 0). `cycle_end`: an inference cycle settles and renews.
   */
  readonly kind: "deadline" | "cycle_end"
  readonly id: string
  readonly ends_at: number
  readonly refund_micros: bigint
  readonly full_micros: bigint
  readonly min_micros: bigint
  /**
   * The hourly cost of the replicas that would consume a partial hold (`liveHourlyMicros`):
   * a partial hold of `b` runs out `b × 3,600,000 ÷ this` ms after the renewal, where the
   * engine ends that cycle and renews again (or stops).
   */
  readonly live_hourly_micros: bigint
}

export interface BalanceMonitorHost {
  readonly clock: EngineClock
  readonly ledger: LedgerStore
  readonly notifier: NotifierPort
  readonly journal: JournalPort
  /** What the account can spend now: its balance less API usage admitted but not posted. */
  spendable(account: string): Micros
  measureBurn(account: string, at: number): BurnMeasure
  /** Runs an alarm's work as a unit of work (whose end calls `afterUnit`). */
  unitOfWork(fn: () => void): void
  /** Auto-recharge looks at the balance the unit of work left, before the warnings (src/payments.ts). */
  afterUnitOf?(accounts: ReadonlyArray<string>): void
}

/** A partial hold foreseen by `firstStopOf`: it runs out at `at`, and its instance renews then. */
interface ForeseenPartialEnd {
  readonly at: number
  readonly renewal: ForeseenRenewal
}

/**
 * The engine's order of what ends at one instant (the supervisor's alarm keys): every GPU
 * deadline settles before any cycle end renews, and each kind goes by id.
 */
export const foreseenBefore = (a: ForeseenRenewal, b: ForeseenRenewal): boolean => endsBefore(a.ends_at, a.kind, a.id, b)

/** Whether something of `kind` ending at `at` comes before `other` in the engine's order. */
const endsBefore = (at: number, kind: ForeseenRenewal["kind"], id: string, other: ForeseenRenewal): boolean => {
  if (at !== other.ends_at) return at < other.ends_at
  if (kind !== other.kind) return kind === "deadline"
  return id < other.id
}

/**
 * When the first inference instance of the account stops at a cycle end for want of money, or
 * null: the renewals played in the engine's order, each on the balance the ones before it
 * left. A full hold takes its amount, a partial one takes everything (SPEC §4), so an instance
 * renewing after a partial hold at the same instant has only its own refund to renew on.
 * A partial hold is played to its end too: its replicas consume it all by then, and the
 * instance renews on what the renewals in between left (usually nothing: it stops there).
 * Before, the partial hold's end was not foreseen, and with other resources' holds pooled in,
 * the estimate landed hours after the real stop: the 60-minute warning never came.
 * No list is made unless a partial hold is foreseen (the monitor runs after most units of work).
 */
export const firstStopOf = (measure: BurnMeasure, spendable: bigint, now: number): number | null => {
  const { renewals, storage_daily_micros: storage } = measure
  let balance = spendable
  let partials: ForeseenPartialEnd[] | null = null
  // Past the last cycle end nothing renews, so nothing more can stop: the play ends there
  // (deadlines far ahead need no walk over the midnights before them, nor an account of GPU
  // instances alone a walk over their deadlines).
  const last = measure.last_cycle_end
  // The next midnight's storage charges, if any (the storage worker runs after the alarms of
  // its instant; one that already ran at `now` touched the account, so a look follows it).
  let midnight = storage.length === 0 ? Infinity : nextMidnightAfter(now)
  let suspended: boolean[] | null = null
  let i = 0
  // Bound: a step takes a renewal from the list or a partial end. A partial end is made only by
  // a partial renewal, which takes the whole balance (at least one micro, the least partial
  // hold), and only the opening balance or a refund from the list refills it: at most one
  // partial at each listed cycle end and one more per listed refund, plus the opening one.
  const steps_max = 4 * renewals.length + 2
  for (let step = 0; ; step++) {
    if (step > steps_max) throw new Error(`firstStopOf: more than ${steps_max} steps for ${renewals.length} renewals`)
    // A deadline after the last cycle end still counts while a partial hold runs past it.
    const listed = i <= last || (partials !== null && partials.length > 0) ? renewals[i] : undefined
    const partial = partials?.[0]
    let r: ForeseenRenewal
    let at: number
    let refund = 0n
    if (partial !== undefined && (listed === undefined || endsBefore(partial.at, "cycle_end", partial.renewal.id, listed))) {
      partials!.shift()
      // All of it consumed: nothing comes back.
      r = partial.renewal
      at = partial.at
    } else if (listed !== undefined) {
      i++
      r = listed
      at = listed.ends_at
      refund = listed.refund_micros
    } else {
      return null
    }
    // Each midnight before it charges the storage in id order, or suspends what the balance
    // cannot cover (src/supervisor.ts onStorageBilling); suspended storage is not charged.
    for (; midnight < at; midnight += policy.STORAGE_BILLING_INTERVAL_MS) {
      for (let k = 0; k < storage.length; k++) {
        if (suspended?.[k] === true) continue
        if (balance >= storage[k]!) balance -= storage[k]!
        else (suspended ??= storage.map(() => false))[k] = true
      }
    }
    balance += refund
    if (r.kind === "deadline") continue
    if (balance >= r.full_micros) {
      balance -= r.full_micros
      continue
    }
    if (balance < r.min_micros || r.live_hourly_micros <= 0n) return at
    const end = at + Number(microMs(balance) / r.live_hourly_micros)
    balance = 0n
    partials ??= []
    let k = partials.length
    while (k > 0 && !(partials[k - 1]!.at < end || (partials[k - 1]!.at === end && partials[k - 1]!.renewal.id < r.id))) k--
    partials.splice(k, 0, { at: end, renewal: r })
  }
}

/** The first 00:00 UTC after `at` (the storage worker's marks, aligned to the epoch). */
const nextMidnightAfter = (at: number): number => (Math.floor(at / policy.STORAGE_BILLING_INTERVAL_MS) + 1) * policy.STORAGE_BILLING_INTERVAL_MS

export class BalanceMonitor {
  /** Accounts whose money or burn changed in this unit of work. */
  private readonly touched = new Set<string>()
  /**
   * Accounts whose run-down may have ended in this unit of work (a credit, or a resource that
   * stopped for good): their sent warnings may be armed again.
   */
  private readonly rearmed = new Set<string>()
  private readonly burnCache = new Map<string, BurnMeasure>()
  private readonly alarms = new Map<string, { readonly at: number; readonly handle: TimerHandle }>()

  constructor(private readonly host: BalanceMonitorHost) {}

  /** The account's money moved (a charge, a settlement): look again at the unit's end. */
  touch(account: string): void {
    this.touched.add(account)
  }

  /** Money came in: look again, and a warned threshold the account is lifted above is armed again. */
  credit(account: string): void {
    this.touched.add(account)
    this.rearmed.add(account)
  }

  /**
   * One of the account's GPU resources or inference instances stopped for good (terminating,
   * terminated or failed): the run-down toward its end is over, so a warned threshold the
   * account is now clearly above is armed again, for the next stop (SPEC §7: the warnings
   * "give you time to adjust usage before things get terminated", each termination).
   */
  resourceStopped(account: string): void {
    this.burnChanged(account)
    this.rearmed.add(account)
  }

  /** One of the account's resources changed: its burn is measured again. */
  burnChanged(account: string): void {
    this.touched.add(account)
    this.burnCache.delete(account)
  }

  /** At the end of a unit of work: every account it touched, in id order. */
  afterUnit(): void {
    if (this.touched.size === 0) return
    // Most units of work (a `/v1` request, one machine's event) touch a single account.
    const accounts = this.touched.size === 1 ? [this.touched.values().next().value as string] : [...this.touched].sort()
    this.touched.clear()
    this.host.afterUnitOf?.(accounts)
    for (const account of accounts) this.look(account, this.rearmed.has(account))
    this.rearmed.clear()
  }

  /** Cancels every alarm and forgets everything (the supervisor stops). */
  stop(): void {
    for (const alarm of this.alarms.values()) this.host.clock.clearTimeout(alarm.handle)
    this.alarms.clear()
    this.burnCache.clear()
    this.touched.clear()
    this.rearmed.clear()
  }

  private look(account: string, rearm: boolean): void {
    const { clock, ledger } = this.host
    const at = clock.now()
    let cached = this.burnCache.get(account)
    if (cached === undefined) {
      cached = this.host.measureBurn(account, at)
      this.burnCache.set(account, cached)
    }
    const burn = cached.burn
    const spendable = this.host.spendable(account)
    // Holds are per resource: an inference instance whose cycle ends when the balance cannot
    // renew it stops then, however much other resources still hold (SPEC §4).
    const stopAt = firstStopOf(cached, spendable, at)
    const before = ledger.warned(account)
    // Nothing burns, nothing stops, nothing was sent: nothing to warn of, nothing to arm.
    if (burn === 0n && stopAt === null && before.length === 0 && !this.alarms.has(account)) return
    // The funds: the balance plus what the holds have not consumed yet, exact (micro-ms). A
    // balance below $0 (a card refund of spent credit, an overage) counts as $0 here: it
    // cannot stop a prepaid hold sooner, it only leaves nothing to renew or extend with (the
    // renewals above see it whole). Otherwise a refund would warn "1 minute" of a stop
    // that comes hours later.
    const funds = spendable > 0n ? spendable : 0n
    const pooled = burn === 0n ? null : zeroAt(at, microMs(funds) + cached.unconsumed - burn * BigInt(at - cached.at), burn)
    const zero = pooled === null ? stopAt : stopAt === null ? pooled : Math.min(pooled, stopAt)
    const plan = planWarnings(at, zero, before, rearm)
    if (plan.now !== null) {
      const minutes = plan.now
      const severity = policy.BALANCE_WARNINGS.find((w) => w.minutes === minutes)!.severity
      this.host.notifier.notify({ account, resource: null, at, severity, kind: "balance_warning", text: policy.texts.balanceWarning(minutes), data: { minutes } })
    }
    // `planWarnings` hands back the same list when nothing changed, which spares the join.
    if (plan.warned !== before && plan.warned.join() !== before.join()) ledger.setWarned(account, plan.warned)
    const armed = this.alarms.get(account)
    if (armed !== undefined && plan.next !== null && armed.at === plan.next.at) return
    if (armed !== undefined) clock.clearTimeout(armed.handle)
    this.alarms.delete(account)
    if (plan.next === null) return
    const handle = clock.schedule(
      plan.next.at,
      () => {
        this.alarms.delete(account)
        this.host.unitOfWork(() => {
          this.host.journal.append(clock.now(), "balance_alarm", { account })
          this.touched.add(account)
        })
      },
      { lane: Lane.engine, key: `balance:${account}` }
    )
    this.alarms.set(account, { at: plan.next.at, handle })
  }
}
