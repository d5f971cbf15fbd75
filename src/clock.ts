/**
 * One clock for the whole engine, in two implementations (DESIGN.md "Time").
 *
 * - `VirtualClock`: a deterministic timer queue. Timers fire in the order
 *   (due time, lane, key, sequence number), each at its own due time, one at a time, and
 *   the work a timer causes finishes before the next fires. The same object serves XState
 *   (`createActor(machine, { clock })`) and Effect (`Layer.setClock(clock.effectClock)`).
 * - `LiveClock`: wall time and Node timers, never going back. It is the only code that reads
 *   the wall clock.
 *
 * Lanes make ties independent of history: timeline inputs fire before the world's events,
 * which fire before the engine's own alarms, whatever order they were scheduled in. Within
 * a lane, a key (a resource id) orders ties, so a supervisor that re-arms its alarms after
 * a restart fires them in the same order as one that never stopped.
 */
import { Clock as EffectClock, Duration, Effect, Scheduler } from "effect"

export type TimerHandle = { readonly __timer: unique symbol }

export const Lane = {
  /** Inputs from outside: timeline events, API commands scheduled by a simulation. */
  input: 0,
  /** The world: the cluster's pod events, payments. */
  world: 1,
  /** The engine's own workers: deadlines, warnings, the watchdog. */
  engine: 2
} as const
export type Lane = (typeof Lane)[keyof typeof Lane]

export interface ScheduleOptions {
  readonly lane?: Lane
  readonly key?: string
}

/** What every part of the engine sees of time. XState's `Clock` is a subset of it. */
export interface EngineClock {
  now(): number
  /** XState's clock interface: run `fn` after `delay_ms`. */
  setTimeout(fn: () => void, delay_ms: number): TimerHandle
  clearTimeout(handle: TimerHandle): void
  /** Runs `fn` at the absolute instant `at_ms` (at once, in order, if it already passed). */
  schedule(at_ms: number, fn: () => void, options?: ScheduleOptions): TimerHandle
  /** Effect's view of the same clock, for `Layer.setClock`. */
  readonly effectClock: EffectClock.Clock
  /**
   * Live clocks only: from now on, never answer less than `at_ms` (at start, the latest
   * instant the database holds). A virtual clock has none: a simulation sets its own time.
   */
  notBefore?(at_ms: number): void
  /**
   * The Effect scheduler that goes with it, if not Effect's default. The virtual clock runs a
   * fiber woken by one of its timers at once, inside that timer, so the fiber's work happens
   * at the timer's instant and finishes before the next timer fires.
   */
  readonly effectScheduler?: Scheduler.Scheduler
}

/** A timer as the engine's clocks order them (exported for test clocks that must fire in the same order). */
export interface Timer {
  readonly due_ms: number
  readonly lane: number
  readonly key: string
  readonly seq: number
  fn: (() => void) | null
}

/** The one order every virtual clock fires timers in: due time, lane, key, sequence number. */
export const before = (a: Timer, b: Timer): boolean => {
  if (a.due_ms !== b.due_ms) return a.due_ms < b.due_ms
  if (a.lane !== b.lane) return a.lane < b.lane
  if (a.key !== b.key) return a.key < b.key
  return a.seq < b.seq
}

/** A timer in the virtual clock's heap: where it sits, so that a cancelled one leaves at once. */
interface HeapTimer extends Timer {
  index: number
  /** The key of the input this timer is or follows (`FOLLOW_UP`), or null. */
  readonly input: string | null
}

/**
 * Between an input's key and its follow-ups' world keys: below every character a key holds,
 * so an input's follow-ups sort after it and before the next input.
 */
const FOLLOW_UP = "\u0001"

/**
 * The input a timer due at `due_ms`, scheduled on `lane` at `now_ms` while `cause` fires (or
 * settles its consequences), follows, or null: an input's own consequences in the world at its
 * instant (a pod that starts at once, a payment's answer and webhook without delay), scheduled
 * on the world's lane by an input or one of its follow-ups, go on the input's lane right after
 * that input (`followUpKey`), before the next one (TIMELINE.md: "Events at the same instant
 * apply in file order"). The world's other timers of the instant come after every input. Every
 * virtual clock places timers so. (It answers a key, not a placement, so that scheduling a
 * timer allocates nothing more than the timer.)
 */
export const followedInput = (cause: { readonly due_ms: number; readonly input: string | null } | null, now_ms: number, due_ms: number, lane: number): string | null =>
  lane === Lane.world && due_ms === now_ms && cause !== null && cause.input !== null && cause.due_ms === due_ms ? cause.input : null

/** A follow-up's key: right after its input's, before the next input's. */
export const followUpKey = (input: string, key: string): string => `${input}${FOLLOW_UP}${key}`

/**
 * A binary min-heap of timers. A cancelled timer is taken out at once (`remove`), so the heap
 * holds only armed timers however often a timer is moved (the low-balance alarm is cancelled
 * and armed again after most `/v1` requests). Pops come in the same order either way.
 */
class TimerHeap {
  private readonly items: HeapTimer[] = []

  get size(): number {
    return this.items.length
  }

  peek(): HeapTimer | undefined {
    return this.items[0]
  }

  push(timer: HeapTimer): void {
    timer.index = this.items.length
    this.items.push(timer)
    this.up(timer.index)
  }

  pop(): HeapTimer | undefined {
    return this.items.length === 0 ? undefined : this.remove(0)
  }

  /** Takes out the timer at `i`; the last one fills its place and moves to where it belongs. */
  remove(i: number): HeapTimer {
    const items = this.items
    const removed = items[i]!
    const last = items.pop()!
    if (i < items.length) {
      items[i] = last
      last.index = i
      this.down(i)
      this.up(last.index)
    }
    removed.index = -1
    return removed
  }

  private up(i: number): void {
    const items = this.items
    const timer = items[i]!
    while (i > 0) {
      const parent = (i - 1) >> 1
      const above = items[parent]!
      if (!before(timer, above)) break
      items[i] = above
      above.index = i
      i = parent
    }
    items[i] = timer
    timer.index = i
  }

  private down(i: number): void {
    const items = this.items
    const n = items.length
    const timer = items[i]!
    for (;;) {
      const l = 2 * i + 1
      if (l >= n) break
      const r = l + 1
      const child = r < n && before(items[r]!, items[l]!) ? r : l
      const below = items[child]!
      if (!before(below, timer)) break
      items[i] = below
      below.index = i
      i = child
    }
    items[i] = timer
    timer.index = i
  }
}

const makeEffectClock = (clock: { now(): number; setTimeout(fn: () => void, ms: number): TimerHandle; clearTimeout(h: TimerHandle): void }): EffectClock.Clock => ({
  [EffectClock.ClockTypeId]: EffectClock.ClockTypeId,
  unsafeCurrentTimeMillis: () => clock.now(),
  currentTimeMillis: Effect.sync(() => clock.now()),
  unsafeCurrentTimeNanos: () => BigInt(clock.now()) * 1_000_000n,
  currentTimeNanos: Effect.sync(() => BigInt(clock.now()) * 1_000_000n),
  sleep: (duration: Duration.Duration) =>
    Effect.async<void>((resume) => {
      const handle = clock.setTimeout(() => resume(Effect.void), Duration.toMillis(duration))
      return Effect.sync(() => clock.clearTimeout(handle))
    })
})

/** Bound on timers fired by one `advanceTo`: a runaway loop of zero-delay timers stops loudly. */
export const VIRTUAL_CLOCK_FIRES_PER_ADVANCE_MAX = 50_000_000

export class VirtualClock implements EngineClock {
  private now_ms: number
  private seq = 0
  private readonly heap = new TimerHeap()
  private live = 0
  /** The timer whose function runs now, or null. */
  private firing: HeapTimer | null = null
  readonly effectClock: EffectClock.Clock
  readonly effectScheduler: Scheduler.Scheduler = Scheduler.make((task) => task(), () => false)

  constructor(start_ms: number) {
    if (!Number.isSafeInteger(start_ms)) throw new Error(`VirtualClock start must be integer ms, got ${start_ms}`)
    this.now_ms = start_ms
    this.effectClock = makeEffectClock(this)
  }

  now(): number {
    return this.now_ms
  }

  /** Number of timers still armed. */
  get pending(): number {
    return this.live
  }

  setTimeout(fn: () => void, delay_ms: number): TimerHandle {
    // A wait without end (Effect's `Duration.infinity`) is a timer that never fires.
    if (delay_ms === Infinity) return { due_ms: Infinity, lane: 0, key: "", seq: -1, fn: null, input: null } as unknown as TimerHandle
    return this.schedule(this.now_ms + Math.max(0, Math.ceil(delay_ms || 0)), fn)
  }

  clearTimeout(handle: TimerHandle): void {
    const timer = handle as unknown as HeapTimer
    if (timer && timer.fn !== null) {
      timer.fn = null
      this.live--
      if (timer.index >= 0) this.heap.remove(timer.index)
    }
  }

  /** An input's own consequences at its instant follow it at once (`followedInput`). */
  schedule(at_ms: number, fn: () => void, options?: ScheduleOptions): TimerHandle {
    if (!Number.isFinite(at_ms)) throw new Error(`cannot schedule at ${at_ms}`)
    const due_ms = Math.max(Math.trunc(at_ms), this.now_ms)
    const lane: number = options?.lane ?? Lane.engine
    const key = options?.key ?? ""
    const follows = followedInput(this.firing, this.now_ms, due_ms, lane)
    const timer: HeapTimer =
      follows === null
        ? { due_ms, lane, key, input: lane === Lane.input ? key : null, seq: this.seq++, fn, index: -1 }
        : { due_ms, lane: Lane.input, key: followUpKey(follows, key), input: follows, seq: this.seq++, fn, index: -1 }
    this.heap.push(timer)
    this.live++
    return timer as unknown as TimerHandle
  }

  /** The due time of the next armed timer, if any. */
  nextDueAt(): number | undefined {
    this.dropCancelled()
    return this.heap.peek()?.due_ms
  }

  /**
   * Fires every timer due at or before `target_ms`, in order, each at its own due time,
   * then leaves the clock at `target_ms`. `step` wraps each instant's batch of timers
   * (the simulator uses it to commit one SQLite transaction per clock step).
   */
  advanceTo(target_ms: number, step: (instant_ms: number, fire: () => void) => void = (_, fire) => fire()): void {
    if (target_ms < this.now_ms) throw new Error(`clock cannot go back from ${this.now_ms} to ${target_ms}`)
    let fired = 0
    for (;;) {
      const due = this.nextDueAt()
      if (due === undefined || due > target_ms) break
      this.now_ms = due
      step(due, () => {
        for (;;) {
          this.dropCancelled()
          const top = this.heap.peek()
          if (top === undefined || top.due_ms !== due) break
          this.heap.pop()
          const fn = top.fn!
          top.fn = null
          this.live--
          if (++fired > VIRTUAL_CLOCK_FIRES_PER_ADVANCE_MAX) {
            throw new Error(`virtual clock fired more than ${VIRTUAL_CLOCK_FIRES_PER_ADVANCE_MAX} timers in one advance`)
          }
          this.firing = top
          try {
            fn()
          } finally {
            this.firing = null
          }
        }
      })
    }
    this.now_ms = target_ms
  }

  private dropCancelled(): void {
    while (this.heap.size > 0 && this.heap.peek()!.fn === null) this.heap.pop()
  }
}

/** Node's timers overflow past 2^31 - 1 ms (about 24.8 days) and would fire at once. */
const NODE_TIMER_DELAY_MAX_MS = 2_147_483_647

interface LiveTimer {
  node: NodeJS.Timeout | null
}

/** The fastest a live clock may run: an hour of engine time in 36 ms of wall time. */
export const LIVE_CLOCK_SPEED_MAX = 100_000

export interface LiveClockOptions {
  /**
   * Engine milliseconds per wall millisecond (default 1). Above 1 it is the "fast virtual
   * clock" of demos and end-to-end tests: engine time starts at the wall time of
   * construction and runs `speed` times faster, and timers fire after `delay / speed` of wall
   * time. A database used at speed > 1 holds instants ahead of the wall clock: keep it for
   * demos and tests, not production.
   */
  readonly speed?: number
  /** The wall clock, in ms since the Unix epoch (default `Date.now`; tests inject their own). */
  readonly wall?: () => number
  /** Where the clock says that the wall clock is behind it (default: a line on stderr). */
  readonly log?: (line: string) => void
}

/**
 * The production clock: wall time and Node's timers. The one place the wall clock is read.
 *
 * It never goes back. It answers the largest instant it answered before (or was told,
 * `notBefore`) while the wall clock reads less: a clock set back by NTP or by hand, or a
 * restart on a wall clock behind the database's latest instant (another machine's clock, a
 * fast-clock demo database). Time then stands still until the wall clock catches up, and it
 * says so once, with how far behind the wall clock is. Otherwise rows would be written before
 * rows already written: a transition out of order, a hold settled before it was placed.
 * Timers due meanwhile fire when the engine time reaches them, once the wall clock has.
 *
 * A fast clock (`speed` above 1, a demo) is not wall time, so it does not wait for it: told
 * an instant ahead of it (`notBefore`, at start: a database run fast before), it jumps there
 * and runs on at its speed. Otherwise restarting a fast demo stood still for as long as the
 * demo had run before.
 */
export class LiveClock implements EngineClock {
  readonly effectClock: EffectClock.Clock = makeEffectClock(this)
  private readonly speed: number
  private readonly wall: () => number
  private readonly log: (line: string) => void
  private readonly wall_origin_ms: number
  /** A fast clock's engine instant at `wall_origin_ms` (moved forward by `notBefore`). */
  private engine_origin_ms: number
  /** The largest instant answered or given (`notBefore`): `now()` never answers less. */
  private floor_ms = Number.MIN_SAFE_INTEGER
  /** Whether the wall clock is behind `floor_ms` now (said once per stretch). */
  private behind = false

  constructor(options: LiveClockOptions = {}) {
    const speed = options.speed ?? 1
    if (!Number.isFinite(speed) || speed < 1 || speed > LIVE_CLOCK_SPEED_MAX) {
      throw new Error(`LiveClock speed must be from 1 to ${LIVE_CLOCK_SPEED_MAX}, got ${speed}`)
    }
    this.speed = speed
    this.wall = options.wall ?? (() => Date.now())
    this.log = options.log ?? ((line) => void process.stderr.write(`${line}\n`))
    // At speed 1 engine time is wall time: no origin needed (and no extra wall read).
    this.wall_origin_ms = speed === 1 ? 0 : this.wall()
    this.engine_origin_ms = this.wall_origin_ms
  }

  now(): number {
    const read = this.read()
    if (read >= this.floor_ms) {
      this.floor_ms = read
      this.behind = false
      return read
    }
    if (!this.behind) {
      this.behind = true
      this.log(
        `live clock: the wall clock is ${this.floor_ms - read} ms behind the engine's latest instant (${new Date(this.floor_ms).toISOString()}); ` +
          "engine time stands still until it catches up" +
          (this.speed === 1 ? " (a database run with --clock-speed runs on from its latest instant when started with --clock-speed again)" : "")
      )
    }
    return this.floor_ms
  }

  notBefore(at_ms: number): void {
    if (this.speed !== 1) {
      const ahead_ms = at_ms - this.read()
      if (ahead_ms > 0) this.engine_origin_ms += ahead_ms
    }
    if (at_ms > this.floor_ms) this.floor_ms = at_ms
  }

  /** Engine time as the wall clock gives it, which may be behind what `now()` answered. */
  private read(): number {
    const wall = this.wall()
    return this.speed === 1 ? wall : this.engine_origin_ms + Math.floor((wall - this.wall_origin_ms) * this.speed)
  }

  setTimeout(fn: () => void, delay_ms: number): TimerHandle {
    return this.schedule(this.now() + Math.max(0, delay_ms), fn)
  }

  clearTimeout(handle: TimerHandle): void {
    const timer = handle as unknown as LiveTimer
    if (timer.node !== null) globalThis.clearTimeout(timer.node)
    timer.node = null
  }

  /**
   * Long delays (a 30-day deadline) are armed in hops no longer than Node allows. The wait is
   * measured on the wall clock's reading, not `now()`: while time stands still, a timer due
   * just after it waits for the wall clock to get there, instead of waking again and again.
   */
  schedule(at_ms: number, fn: () => void): TimerHandle {
    const timer: LiveTimer = { node: null }
    const arm = (): void => {
      const delay_ms = Math.max(0, Math.ceil((at_ms - this.read()) / this.speed))
      timer.node = globalThis.setTimeout(() => {
        if (at_ms > this.now()) return arm()
        timer.node = null
        fn()
      }, Math.min(delay_ms, NODE_TIMER_DELAY_MAX_MS))
    }
    arm()
    return timer as unknown as TimerHandle
  }
}
