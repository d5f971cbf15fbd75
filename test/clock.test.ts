import { Clock, Duration, Effect, Exit, Fiber, Layer, Option, Runtime, Scope } from "effect"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { createActor, setup } from "xstate"
import { Lane, LiveClock, type TimerHandle, VirtualClock } from "../src/clock.js"
import { clockLayer } from "../src/services.js"

/** Lets Effect's scheduler run what a fired timer resumed (it resumes fibers asynchronously). */
const flushEffect = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0))

describe("VirtualClock ordering", () => {
  it("fires timers in (due, lane, key, seq) order whatever order they were scheduled in", () => {
    // Proves the tie-break: earlier due first; at one instant lane first, then key, then scheduling order.
    const clock = new VirtualClock(0)
    const fired: string[] = []
    const at = (t: number, name: string, lane?: Lane, key?: string): void => {
      clock.schedule(t, () => fired.push(name), { ...(lane === undefined ? {} : { lane }), ...(key === undefined ? {} : { key }) })
    }
    at(200, "t200-engine")
    at(100, "t100-engine-b-1", Lane.engine, "b")
    at(100, "t100-engine-a", Lane.engine, "a")
    at(100, "t100-world-z", Lane.world, "z")
    at(100, "t100-input-y", Lane.input, "y")
    at(100, "t100-engine-b-2", Lane.engine, "b")
    at(100, "t100-input-x", Lane.input, "x")
    at(50, "t50-engine")
    clock.advanceTo(1_000)
    expect(fired).toEqual([
      "t50-engine",
      "t100-input-x",
      "t100-input-y",
      "t100-world-z",
      "t100-engine-a",
      "t100-engine-b-1",
      "t100-engine-b-2",
      "t200-engine"
    ])
  })

  it("defaults to the engine lane with an empty key", () => {
    // Proves a plain setTimeout ties after world events at the same instant and before keyed engine alarms.
    const clock = new VirtualClock(0)
    const fired: string[] = []
    clock.schedule(10, () => fired.push("engine-keyed"), { lane: Lane.engine, key: "a" })
    clock.setTimeout(() => fired.push("default"), 10)
    clock.schedule(10, () => fired.push("world"), { lane: Lane.world })
    clock.advanceTo(10)
    expect(fired).toEqual(["world", "default", "engine-keyed"])
  })

  it("fires in sorted (due, lane, key, seq) order for any random schedule", () => {
    // Proves the heap never breaks the documented order, for arbitrary due times, lanes and keys.
    const timerSpec = fc.record({
      due: fc.integer({ min: 0, max: 50 }),
      lane: fc.constantFrom(Lane.input, Lane.world, Lane.engine),
      key: fc.constantFrom("", "a", "b", "gi-1", "gi-2", "z")
    })
    fc.assert(
      fc.property(fc.array(timerSpec, { maxLength: 200 }), fc.integer({ min: 0, max: 60 }), (specs, target) => {
        const clock = new VirtualClock(0)
        const fired: Array<{ seq: number; now: number }> = []
        specs.forEach((s, seq) => clock.schedule(s.due, () => fired.push({ seq, now: clock.now() }), { lane: s.lane, key: s.key }))
        clock.advanceTo(target)
        const expected = specs
          .map((s, seq) => ({ ...s, seq }))
          .filter((s) => s.due <= target)
          .sort((a, b) => a.due - b.due || a.lane - b.lane || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0) || a.seq - b.seq)
        expect(fired.map((f) => f.seq)).toEqual(expected.map((s) => s.seq))
        expect(fired.map((f) => f.now)).toEqual(expected.map((s) => s.due))
        expect(clock.pending).toBe(specs.length - expected.length)
        expect(clock.now()).toBe(target)
      })
    )
  })

  it("keeps the order when a cancelled timer's place is taken by one that must move up", () => {
    // Proves the heap's removal sifts both ways (a case a removal that only sifts down gets wrong).
    const clock = new VirtualClock(0)
    const fired: number[] = []
    const dues = [8, 16, 8, 16, 8, 8, 4]
    const handles = dues.map((due, i) => clock.schedule(due, () => fired.push(i)))
    clock.clearTimeout(handles[3]!)
    clock.advanceTo(100)
    expect(fired).toEqual([6, 0, 2, 4, 5, 1])
  })

  it("fires the timers not cancelled in the same order, whichever were cancelled, before or while firing", () => {
    // Proves taking a cancelled timer out of the heap at once (anywhere in it) keeps the order.
    const timerSpec = fc.record({
      due: fc.integer({ min: 0, max: 50 }),
      lane: fc.constantFrom(Lane.input, Lane.world, Lane.engine),
      key: fc.constantFrom("", "a", "b", "z"),
      /** Cancelled before the advance, or by the timer that fires just before it, or never. */
      cancel: fc.constantFrom("no", "no", "before", "while")
    })
    fc.assert(
      fc.property(fc.array(timerSpec, { maxLength: 200 }), fc.integer({ min: 0, max: 60 }), (specs, target) => {
        const clock = new VirtualClock(0)
        const fired: number[] = []
        const handles: TimerHandle[] = []
        // Every callback cancels every "while" timer: the first one to run takes them all out.
        const cancelWhile = specs.map((s, seq) => (s.cancel === "while" ? seq : -1)).filter((seq) => seq >= 0)
        specs.forEach((s, seq) => {
          handles.push(
            clock.schedule(
              s.due,
              () => {
                fired.push(seq)
                for (const c of cancelWhile) clock.clearTimeout(handles[c]!)
              },
              { lane: s.lane, key: s.key }
            )
          )
        })
        specs.forEach((s, seq) => s.cancel === "before" && clock.clearTimeout(handles[seq]!))
        clock.advanceTo(target)
        const order = specs
          .map((s, seq) => ({ ...s, seq }))
          .filter((s) => s.due <= target && s.cancel !== "before")
          .sort((a, b) => a.due - b.due || a.lane - b.lane || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0) || a.seq - b.seq)
        // The first to fire cancels every "while" timer still armed, so only it can be one.
        const expected = order.filter((s, i) => i === 0 || s.cancel !== "while").map((s) => s.seq)
        expect(fired).toEqual(expected)
        const armed = specs.filter((s) => s.due > target && s.cancel !== "before" && !(s.cancel === "while" && fired.length > 0)).length
        expect(clock.pending).toBe(armed)
      })
    )
  })
})

describe("VirtualClock.advanceTo", () => {
  it("leaves now() at the target and shows each callback its own due time", () => {
    // Proves callbacks run at their instants, not at the advance's target.
    const clock = new VirtualClock(1_000)
    const seen: Array<[number, number]> = []
    for (const due of [1_500, 1_200, 3_000, 9_999]) clock.schedule(due, () => seen.push([due, clock.now()]))
    clock.advanceTo(5_000)
    expect(seen).toEqual([
      [1_200, 1_200],
      [1_500, 1_500],
      [3_000, 3_000]
    ])
    expect(clock.now()).toBe(5_000)
    expect(clock.pending).toBe(1)
    expect(clock.nextDueAt()).toBe(9_999)
  })

  it("fires a timer at its exact deadline and not one millisecond before", () => {
    // Proves the boundary: advancing to due − 1 fires nothing, advancing to due fires it.
    const clock = new VirtualClock(0)
    let fired = 0
    clock.setTimeout(() => fired++, 1_000)
    clock.advanceTo(999)
    expect(fired).toBe(0)
    clock.advanceTo(1_000)
    expect(fired).toBe(1)
  })

  it("fires a timer scheduled during a step for the same instant in the same advance", () => {
    // Proves the work a timer causes at an instant completes within that instant, before later timers.
    const clock = new VirtualClock(0)
    const fired: Array<[string, number]> = []
    clock.schedule(100, () => {
      fired.push(["first", clock.now()])
      clock.setTimeout(() => fired.push(["zero-delay", clock.now()]), 0)
      clock.schedule(100, () => fired.push(["same-instant", clock.now()]))
    })
    clock.schedule(101, () => fired.push(["later", clock.now()]))
    clock.advanceTo(100)
    expect(fired).toEqual([
      ["first", 100],
      ["zero-delay", 100],
      ["same-instant", 100]
    ])
    clock.advanceTo(101)
    expect(fired.at(-1)).toEqual(["later", 101])
  })

  it("orders a timer added mid-instant with that instant's remaining timers by lane", () => {
    // Proves a same-instant timer added mid-step is ordered with the rest of that instant by lane.
    const clock = new VirtualClock(0)
    const fired: string[] = []
    clock.schedule(100, () => {
      fired.push("engine-1")
      clock.schedule(100, () => fired.push("input-added"), { lane: Lane.input })
    })
    clock.schedule(100, () => fired.push("engine-2"))
    clock.advanceTo(100)
    expect(fired).toEqual(["engine-1", "input-added", "engine-2"])
  })

  it("fires an input's world timers at its own instant right after it, before the next input; the world's others after every input", () => {
    // Proves file order for what inputs make happen (docs/POLICY.md, Time and order): the world
    // timer input 1 schedules at its instant (and the one that schedules in turn) comes before
    // input 2; one it schedules later, one an engine timer schedules, and one armed earlier, come after.
    const clock = new VirtualClock(0)
    const fired: string[] = []
    clock.schedule(100, () => fired.push("world-armed-earlier"), { lane: Lane.world, key: "a" })
    clock.schedule(100, () => {
      fired.push("input-1")
      clock.schedule(100, () => {
        fired.push("input-1/world")
        clock.schedule(100, () => fired.push("input-1/world/world"), { lane: Lane.world, key: "z" })
      }, { lane: Lane.world, key: "b" })
      clock.schedule(101, () => fired.push("input-1/world-later"), { lane: Lane.world, key: "b" })
    }, { lane: Lane.input, key: "000000001" })
    clock.schedule(100, () => fired.push("input-2"), { lane: Lane.input, key: "000000002" })
    clock.schedule(100, () => {
      fired.push("engine")
      clock.schedule(100, () => fired.push("engine/world"), { lane: Lane.world, key: "0" })
    })
    clock.advanceTo(101)
    expect(fired).toEqual(["input-1", "input-1/world", "input-1/world/world", "input-2", "world-armed-earlier", "engine", "engine/world", "input-1/world-later"])
  })

  it("calls the step wrapper once per distinct instant, with that instant", () => {
    // Proves the simulator can wrap one clock step (one SQLite transaction) per instant.
    const clock = new VirtualClock(0)
    const fired: number[] = []
    for (const due of [10, 10, 20, 10, 30, 20]) clock.schedule(due, () => fired.push(due))
    // A timer scheduled during the instant 30 for that same instant is part of the same step.
    clock.schedule(30, () => clock.schedule(30, () => fired.push(30)))
    const steps: Array<{ instant: number; now: number }> = []
    clock.advanceTo(100, (instant, fire) => {
      steps.push({ instant, now: clock.now() })
      fire()
    })
    expect(steps).toEqual([
      { instant: 10, now: 10 },
      { instant: 20, now: 20 },
      { instant: 30, now: 30 }
    ])
    expect(fired).toEqual([10, 10, 10, 20, 20, 30, 30])
  })

  it("fires a timer scheduled in the past at now(), after timers already due at now()", () => {
    // Proves a late schedule is never lost and never fires at an instant already gone.
    const clock = new VirtualClock(0)
    clock.advanceTo(500)
    const seen: Array<[string, number]> = []
    clock.schedule(100, () => seen.push(["past", clock.now()]))
    clock.setTimeout(() => seen.push(["negative-delay", clock.now()]), -50)
    expect(clock.nextDueAt()).toBe(500)
    clock.advanceTo(500)
    expect(seen).toEqual([
      ["past", 500],
      ["negative-delay", 500]
    ])
  })

  it("refuses to go back in time", () => {
    // Proves the clock is monotonic.
    const clock = new VirtualClock(1_000)
    expect(() => clock.advanceTo(999)).toThrow(/cannot go back/)
    expect(clock.now()).toBe(1_000)
  })
})

describe("VirtualClock.clearTimeout", () => {
  it("prevents a cleared timer from firing and keeps the others", () => {
    // Proves cancellation: the cleared callback never runs, pending and nextDueAt forget it.
    const clock = new VirtualClock(0)
    const fired: string[] = []
    const a = clock.setTimeout(() => fired.push("a"), 100)
    clock.setTimeout(() => fired.push("b"), 200)
    expect(clock.pending).toBe(2)
    clock.clearTimeout(a)
    expect(clock.pending).toBe(1)
    expect(clock.nextDueAt()).toBe(200)
    clock.advanceTo(1_000)
    expect(fired).toEqual(["b"])
    expect(clock.pending).toBe(0)
  })

  it("clears a timer due at the same instant from inside an earlier callback", () => {
    // Proves a callback can cancel a sibling due at the same instant before it fires.
    const clock = new VirtualClock(0)
    const fired: string[] = []
    const handles: Array<ReturnType<VirtualClock["setTimeout"]>> = []
    clock.schedule(100, () => {
      fired.push("first")
      const second = handles[0]
      if (second !== undefined) clock.clearTimeout(second)
    })
    handles.push(clock.schedule(100, () => fired.push("second")))
    clock.advanceTo(100)
    expect(fired).toEqual(["first"])
    expect(clock.pending).toBe(0)
  })

  it("ignores clearing a timer twice or after it fired", () => {
    // Proves pending never goes negative from redundant clears.
    const clock = new VirtualClock(0)
    const fired = clock.setTimeout(() => {}, 10)
    const cleared = clock.setTimeout(() => {}, 20)
    clock.advanceTo(10)
    clock.clearTimeout(fired)
    clock.clearTimeout(cleared)
    clock.clearTimeout(cleared)
    expect(clock.pending).toBe(0)
  })
})

describe("VirtualClock drives XState", () => {
  it("runs an `after: { 1000 }` transition only when the virtual clock reaches it", () => {
    // Proves createActor(machine, { clock }) arms XState's delayed events on the virtual clock.
    const machine = setup({}).createMachine({
      initial: "waiting",
      states: {
        waiting: { after: { 1000: "done" } },
        done: {}
      }
    })
    const clock = new VirtualClock(0)
    const actor = createActor(machine, { clock })
    actor.start()
    expect(clock.pending).toBe(1)
    clock.advanceTo(999)
    expect(actor.getSnapshot().value).toBe("waiting")
    clock.advanceTo(1_000)
    expect(actor.getSnapshot().value).toBe("done")
    actor.stop()
  })

  it("cancels the delayed event when the state is left early", () => {
    // Proves XState's clearTimeout reaches the virtual clock: leaving the state disarms its `after`.
    const machine = setup({ types: { events: {} as { type: "skip" } } }).createMachine({
      initial: "waiting",
      states: {
        waiting: { after: { 1000: "timedOut" }, on: { skip: "skipped" } },
        timedOut: {},
        skipped: {}
      }
    })
    const clock = new VirtualClock(0)
    const actor = createActor(machine, { clock })
    actor.start()
    clock.advanceTo(500)
    actor.send({ type: "skip" })
    expect(clock.pending).toBe(0)
    clock.advanceTo(2_000)
    expect(actor.getSnapshot().value).toBe("skipped")
    actor.stop()
  })
})

describe("VirtualClock drives Effect", () => {
  it("resolves Effect.sleep under Effect.withClock only when the virtual clock advances", async () => {
    // Proves an Effect sleeping on the clock never wakes on wall time, and wakes at its virtual instant.
    const clock = new VirtualClock(0)
    const program = Effect.sleep("1 second").pipe(
      Effect.zipRight(Clock.currentTimeMillis),
      Effect.withClock(clock.effectClock)
    )
    const fiber = Effect.runFork(program)
    await flushEffect()
    expect(clock.pending).toBe(1)
    clock.advanceTo(999)
    await flushEffect()
    expect(Option.isNone(await Effect.runPromise(Fiber.poll(fiber)))).toBe(true)
    clock.advanceTo(1_000)
    await flushEffect()
    const polled = await Effect.runPromise(Fiber.poll(fiber))
    expect(Option.isSome(polled) && Exit.isSuccess(polled.value) ? polled.value.value : "not done").toBe(1_000)
  })

  it("resolves Effect.sleep under Layer.setClock only when the virtual clock advances", async () => {
    // Proves the same clock provided as a layer replaces Effect's default clock.
    const clock = new VirtualClock(10_000)
    let woke_at: number | null = null
    const program = Effect.gen(function* () {
      yield* Effect.sleep("5 seconds")
      woke_at = yield* Clock.currentTimeMillis
    }).pipe(Effect.provide(Layer.setClock(clock.effectClock)))
    const done = Effect.runPromise(program)
    await flushEffect()
    clock.advanceTo(14_999)
    await flushEffect()
    expect(woke_at).toBe(null)
    clock.advanceTo(15_000)
    await done
    expect(woke_at).toBe(15_000)
  })

  it("disarms the virtual timer when a sleeping fiber is interrupted", async () => {
    // Proves interruption runs the sleep's canceller, so no stale timer fires later.
    const clock = new VirtualClock(0)
    const fiber = Effect.runFork(Effect.sleep("1 second").pipe(Effect.withClock(clock.effectClock)))
    await flushEffect()
    expect(clock.pending).toBe(1)
    await Effect.runPromise(Fiber.interrupt(fiber))
    expect(clock.pending).toBe(0)
  })
})

describe("the engine's clock layer", () => {
  it("runs a fiber woken by a virtual timer inside that timer, so chained sleeps land on time", () => {
    // Proves clockLayer's scheduler: two sleeps of 1 s record 1000 and 2000 in one advance.
    const clock = new VirtualClock(0)
    const seen: number[] = []
    const scope = Effect.runSync(Scope.make())
    const runtime = Effect.runSync(Layer.toRuntime(clockLayer(clock)).pipe(Scope.extend(scope)))
    Runtime.runFork(runtime)(
      Effect.gen(function* () {
        yield* Effect.sleep(1_000)
        seen.push(yield* Clock.currentTimeMillis)
        yield* Effect.sleep(1_000)
        seen.push(yield* Clock.currentTimeMillis)
      })
    )
    clock.advanceTo(2_000)
    expect(seen).toEqual([1_000, 2_000])
    expect(clock.nextDueAt()).toBeUndefined()
  })

  it("lets a fiber sleep forever on the virtual clock without arming a timer", () => {
    // Proves Duration.infinity is a wait without end, not a crash ("cannot schedule at Infinity").
    const clock = new VirtualClock(0)
    const scope = Effect.runSync(Scope.make())
    const runtime = Effect.runSync(Layer.toRuntime(clockLayer(clock)).pipe(Scope.extend(scope)))
    const fiber = Runtime.runFork(runtime)(Effect.sleep(Duration.infinity))
    clock.advanceTo(10_000_000)
    expect(Option.isNone(Effect.runSync(Fiber.poll(fiber)))).toBe(true)
    expect(clock.pending).toBe(0)
  })
})

describe("LiveClock never goes back", () => {
  it("stands still while the wall clock is behind what it answered, says so once, and follows the wall clock again once it is past", () => {
    // Proves the live clock is monotonic (it returned raw Date.now()): the wall-time source is injected.
    let wall_ms = 1_000_000
    const lines: string[] = []
    const clock = new LiveClock({ wall: () => wall_ms, log: (line) => lines.push(line) })
    expect(clock.now()).toBe(1_000_000)
    wall_ms = 1_000_000 - 600_000
    expect(clock.now()).toBe(1_000_000)
    wall_ms += 300_000
    expect(clock.now()).toBe(1_000_000)
    expect(lines).toEqual([
      "live clock: the wall clock is 600000 ms behind the engine's latest instant (1970-01-01T00:16:40.000Z); engine time stands still until it catches up (a database run with --clock-speed runs on from its latest instant when started with --clock-speed again)"
    ])
    wall_ms = 1_000_005
    expect(clock.now()).toBe(1_000_005)
    // A second stretch behind is said again.
    wall_ms = 1_000_001
    expect(clock.now()).toBe(1_000_005)
    expect(lines).toHaveLength(2)
    expect(lines[1]).toContain("is 4 ms behind")
  })

  it("starts no earlier than notBefore (the database's latest instant); a fast clock runs on from it", () => {
    // Proves a restart on a wall clock behind the database answers the database's instant until
    // the wall clock passes it, and a fast demo clock restarted on a database it ran ahead
    // continues from the database's instant at its speed instead of standing still.
    let wall_ms = 5_000
    const lines: string[] = []
    const clock = new LiveClock({ wall: () => wall_ms, log: (line) => lines.push(line) })
    clock.notBefore(9_000)
    clock.notBefore(8_000)
    expect(clock.now()).toBe(9_000)
    wall_ms = 9_500
    expect(clock.now()).toBe(9_500)
    expect(lines).toEqual([expect.stringContaining("is 4000 ms behind")])
    expect(lines[0]).toContain("started with --clock-speed again")

    let fastWall_ms = 0
    const fastLines: string[] = []
    const fast = new LiveClock({ speed: 10, wall: () => fastWall_ms, log: (line) => fastLines.push(line) })
    // Ten days ahead of the wall clock: a demo database that ran at speed 10 for a day.
    fast.notBefore(10 * 86_400_000)
    expect(fast.now()).toBe(10 * 86_400_000)
    fastWall_ms = 200
    expect(fast.now()).toBe(10 * 86_400_000 + 2_000)
    // An instant behind it changes nothing.
    fast.notBefore(1_000)
    expect(fast.now()).toBe(10 * 86_400_000 + 2_000)
    expect(fastLines).toEqual([])
  })

  it("fires a timer due while time stands still once the wall clock reaches it, without waking in between", async () => {
    // Proves timers wait on the wall clock's reading: due 30 ms after a floor 30 ms ahead, the timer fires after ~60 ms, once.
    const shift_ms = -30
    const clock = new LiveClock({ wall: () => Date.now() + shift_ms, log: () => {} })
    const floor = clock.now() + 30
    clock.notBefore(floor)
    let fired_at: number | null = null
    clock.schedule(floor + 30, () => (fired_at = clock.now()))
    expect(clock.now()).toBe(floor)
    await new Promise((r) => setTimeout(r, 20))
    expect(fired_at).toBeNull()
    await new Promise((r) => setTimeout(r, 200))
    expect(fired_at).not.toBeNull()
    expect(fired_at!).toBeGreaterThanOrEqual(floor + 30)
  })
})
