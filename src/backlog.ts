/**
 * The engine's backlog: what waits while another connection holds SQLite's write lock past the
 * busy timeout (an operator's `sqlite3` shell, a backup), docs/ENGINE.md "When another
 * connection holds the database".
 *
 * A request refused then answers 503 `database_busy` and its client retries. A unit of work the
 * engine starts itself (an alarm, the watchdog, a cluster event, a payment provider's answer)
 * has nobody to retry it, so it waits here, and so does everything the engine would do after
 * it, in the order it would have done it:
 *
 * - The unit whose BEGIN was refused (nothing of it ran) waits first.
 * - While anything waits, every later unit the engine starts waits behind it without asking for
 *   the lock, and so does every timer of the engine's that comes due (its whole callback, not
 *   only its unit): a timer the units before it cancel when they run is dropped, as it would
 *   never have fired had they run on time. Requests that would write are refused (503) instead
 *   of overtaking them.
 * - Every `DATABASE_BUSY_RETRY_MS` the backlog asks whether the lock is free, without waiting
 *   for it, and once it is runs what waits, in order, each as of the instant it came due
 *   (`clock.now()` answers that instant while it runs): its rows, amounts and notifications are
 *   those it would have written on time. A timer one of them arms for an instant already past
 *   takes its place among what waits, by that instant, and runs in the same catch-up. It stops
 *   again at the first unit refused.
 *
 * The operator reads one warning when the engine starts to wait and one line when it has caught
 * up, not one per retry. A supervisor that stops (shutdown, fencing) drops what waits: the next
 * start recovers from the database, as after a crash.
 */
import { assert } from "./errors.js"
import { Lane, type EngineClock, type ScheduleOptions, type TimerHandle } from "./clock.js"
import * as policy from "./policy.js"
import type { EngineLogPort } from "./services.js"

/** The supervisor, as the backlog sees it. */
export interface BacklogHost {
  /**
   * Runs `fn` as a unit of work the engine started (the supervisor's `background`). While the
   * backlog runs what waits, it asks for the lock at once; refused, it gives `fn` back (`refused`).
   */
  background(fn: () => void): void
  /** Whether the write lock is free now, asked without waiting for it (`LedgerStore.writeLockFree`). */
  writeLockFree(): boolean
  /** More waits than `DATABASE_BUSY_BACKLOG_MAX`: the engine stops, as after a defect. Throws. */
  overflow(message: string): never
  readonly log: EngineLogPort
}

interface Waiting {
  /** The instant the engine's clock read when it came due: it runs as of then. */
  readonly at: number
  /** A unit of work (through `BacklogHost.background`), or a timer's callback (which starts its own). */
  readonly run: () => void
  /** A timer's handle, or null for a unit of work. */
  readonly handle: TimerHandle | null
  /** Set when its timer is cleared while it waits: it is dropped, unrun. */
  cancelled: boolean
  /** A timer's lane and key (clock.ts order of one instant); a unit of work: -1, before any timer armed for its instant. */
  readonly lane: number
  readonly key: string
}

export class Backlog {
  /**
   * The engine's clock as its units read it: the world's clock, except that `now()` answers the
   * instant a waiting unit came due while it runs, and that a timer coming due while units wait
   * waits behind them. Everything of the supervisor's (its alarms, the monitor's, the payment
   * book's) reads and arms time through it; the world (the cluster) keeps the world's clock.
   */
  readonly clock: EngineClock
  /** What waits, from `head` on, in the order of its instants (`at`, never decreasing). */
  private readonly waiting: Waiting[] = []
  private head = 0
  /** The waiting timers by handle, for `clearTimeout`. */
  private readonly timers = new Map<TimerHandle, Waiting>()
  /** Handles of timers armed straight into the backlog (`waitFor`): the world's clock never saw them. */
  private readonly tokens = new WeakSet<TimerHandle>()
  private tokensMade = 0
  /** What `clock.now()` answers while a waiting unit runs, or null. */
  private pinned: number | null = null
  private draining = false
  /** Set when a unit was refused again while the backlog ran: it stops there and retries. */
  private stalled = false
  /**
   * While the backlog runs, where (after `head`) what the running one starts goes: before what
   * waited behind it, in the order it starts them (a timer's callback refused, and a second unit
   * it starts after, keep their order).
   */
  private insertAt = 0
  private retryTimer: TimerHandle | null = null
  /** When the current stretch of waiting began (engine ms), and how many waits it has run. */
  private since = 0
  private ran = 0
  private stopped = false

  constructor(
    private readonly world: EngineClock,
    private readonly host: BacklogHost
  ) {
    this.clock = {
      now: () => this.pinned ?? world.now(),
      setTimeout: (fn, delay_ms) => {
        const due = world.now() + delay_ms
        const handle: TimerHandle = world.setTimeout(() => this.fire(handle, fn, Lane.engine, "", due), delay_ms)
        return handle
      },
      clearTimeout: (handle) => this.clearTimeout(handle),
      schedule: (at_ms: number, fn: () => void, options?: ScheduleOptions) => {
        if (this.draining && at_ms <= world.now()) return this.waitFor(at_ms, fn, options?.lane ?? Lane.engine, options?.key ?? "")
        const handle: TimerHandle = world.schedule(at_ms, () => this.fire(handle, fn, options?.lane ?? Lane.engine, options?.key ?? "", at_ms), options)
        return handle
      },
      effectClock: world.effectClock,
      ...(world.effectScheduler === undefined ? {} : { effectScheduler: world.effectScheduler }),
      ...(world.notBefore === undefined ? {} : { notBefore: (at_ms: number) => world.notBefore!(at_ms) })
    }
  }

  /** True while a unit that waited runs as of an instant the world's clock has passed: what it reads of the world may be later than its instant. */
  get catchingUp(): boolean {
    return this.pinned !== null && this.pinned < this.world.now()
  }

  /** True while something waits and nothing of it runs (or what runs was refused): what comes next must wait behind it. */
  get holds(): boolean {
    return this.waiting.length > this.head && (!this.draining || this.stalled)
  }

  /** A unit the engine started while others wait: it waits behind them, as of now (in a run, as of the running one's instant). */
  join(fn: () => void): void {
    this.put({ at: this.clock.now(), run: () => this.host.background(fn), handle: null, cancelled: false, lane: -1, key: "" })
  }

  /**
   * A unit whose BEGIN was refused (nothing of it ran), as of `at`, the instant it read the
   * clock before it asked. Refused while the backlog runs, it goes back to the front and the
   * backlog stops there; otherwise it is the first to wait, and the engine starts waiting.
   */
  refused(fn: () => void, at: number): void {
    const waiting: Waiting = { at, run: () => this.host.background(fn), handle: null, cancelled: false, lane: -1, key: "" }
    if (this.draining) {
      this.stalled = true
      return this.put(waiting)
    }
    // Outside a run nothing asks for the lock while something waits: it joins instead.
    assert(this.waiting.length === 0, () => "a unit asked for the database while others waited for it")
    this.put(waiting)
    this.since = at
    this.ran = 0
    this.host.log.warn(
      { retry_ms: policy.DATABASE_BUSY_RETRY_MS },
      "database busy: another connection holds the SQLite write lock past the busy timeout; the engine's own units of work " +
        "(alarms, cluster events, payment answers) wait and will run in order, as of when they came due, once it is free; " +
        "writes answer 503 database_busy meanwhile"
    )
    this.armRetry()
  }

  /**
   * A request that would write while units wait: once the lock is free, what waits runs now,
   * in order, as the next retry would have run it, and the request after it; without this it
   * would be refused until that retry, up to `DATABASE_BUSY_RETRY_MS` after the lock went (found
   * by CI: a client that retried at once was refused again). Whether nothing waits any more.
   */
  catchUp(): boolean {
    if (!this.holds) return true
    if (this.draining || this.stopped || this.retryTimer === null || !this.host.writeLockFree()) return false
    this.world.clearTimeout(this.retryTimer)
    this.retry()
    return !this.holds
  }

  /** Drops what waits, unrun, and the retry (the supervisor stops). Idempotent. */
  stop(): void {
    this.stopped = true
    if (this.retryTimer !== null) this.world.clearTimeout(this.retryTimer)
    this.retryTimer = null
    this.waiting.length = 0
    this.head = 0
    this.timers.clear()
  }

  /** At the back; in a run, after what the running one started before it. */
  private put(waiting: Waiting): void {
    this.bound()
    if (this.draining) this.waiting.splice(this.head + this.insertAt++, 0, waiting)
    else this.waiting.push(waiting)
    if (waiting.handle !== null) this.timers.set(waiting.handle, waiting)
  }

  private bound(): void {
    if (this.waiting.length - this.head < policy.DATABASE_BUSY_BACKLOG_MAX) return
    this.host.overflow(`more than ${policy.DATABASE_BUSY_BACKLOG_MAX} units of work waiting for the database: the engine stops; a restart recovers from the database`)
  }

  /**
   * A timer of the engine's comes due. While something waits it waits too, as of the instant it
   * was due (`due`), not when it fired: the live clock fires late while a refused BEGIN blocks
   * the event loop for the busy timeout. Never before what waits ahead of it, so the instants
   * of what waits never decrease.
   */
  private fire(handle: TimerHandle, fn: () => void, lane: number, key: string, due: number): void {
    if (!this.holds) return fn()
    const last = this.waiting.length > this.head ? this.waiting[this.waiting.length - 1]!.at : due
    this.put({ at: Math.max(Math.trunc(due), last), run: fn, handle, cancelled: false, lane, key })
  }

  /**
   * A timer a unit that waited arms, while the backlog runs, for an instant already past: had
   * that unit run on time, it would have fired there. So it takes its place among what waits,
   * by that instant (no earlier than the running one's), and runs as of it in this run, where
   * the world's clock would fire it late, as of the moment it does.
   */
  private waitFor(at_ms: number, fn: () => void, lane: number, key: string): TimerHandle {
    this.bound()
    const handle = { backlog: ++this.tokensMade } as unknown as TimerHandle
    this.tokens.add(handle)
    const waiting: Waiting = { at: Math.max(Math.trunc(at_ms), this.clock.now()), run: fn, handle, cancelled: false, lane, key }
    // After everything due at or before it (binary search: the instants never decrease).
    let lo = this.head + this.insertAt
    let hi = this.waiting.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const w = this.waiting[mid]!
      // The world clock's order within an instant: lane, then key; a new timer after its equals.
      if (w.at < waiting.at || (w.at === waiting.at && (w.lane < lane || (w.lane === lane && w.key <= key)))) lo = mid + 1
      else hi = mid
    }
    this.waiting.splice(lo, 0, waiting)
    this.timers.set(handle, waiting)
    return handle
  }

  private clearTimeout(handle: TimerHandle): void {
    if (this.tokensMade === 0 || !this.tokens.has(handle)) this.world.clearTimeout(handle)
    if (this.timers.size === 0) return
    const waiting = this.timers.get(handle)
    if (waiting === undefined) return
    waiting.cancelled = true
    this.timers.delete(handle)
  }

  private armRetry(): void {
    if (this.stopped) return
    this.retryTimer = this.world.schedule(this.world.now() + policy.DATABASE_BUSY_RETRY_MS, () => this.retry(), { lane: Lane.engine, key: "database_busy" })
  }

  /** Once the lock is free, runs what waits, in order, each as of its instant; stops at the first refusal. */
  private retry(): void {
    this.retryTimer = null
    if (!this.host.writeLockFree()) return this.armRetry()
    this.draining = true
    try {
      while (this.waiting.length > this.head && !this.stopped) {
        const next = this.waiting[this.head++]!
        if (next.handle !== null) this.timers.delete(next.handle)
        if (next.cancelled) continue
        this.pinned = next.at
        this.insertAt = 0
        next.run()
        if (this.stalled) break
        this.ran++
      }
    } finally {
      this.pinned = null
      this.draining = false
      // What ran leaves at once, not one shift at a time (a long backlog would move n² items).
      this.waiting.splice(0, this.head)
      this.head = 0
    }
    // Fenced while it ran (another process took the database): the supervisor stopped, and
    // dropped the rest.
    if (this.stopped) return
    if (this.stalled) {
      this.stalled = false
      return this.armRetry()
    }
    this.host.log.info({ waited_ms: this.world.now() - this.since, units: this.ran }, "database free again: the engine ran what waited for it, in order")
  }
}
