/**
 * A run on the virtual clock never touches the wall clock (DESIGN.md "Time"): no code of
 * ours reads Date.now, performance.now, `new Date()`, Math.random or arms a Node timer
 * during a simulation, and the output does not change with the wall time it runs at.
 *
 * XState and Effect read the wall clock internally for ids and bookkeeping (DESIGN.md
 * "Known pitfalls"); those reads are allowed because none of them reaches the output,
 * which the second test checks by running at two wall times ten years apart.
 */
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { LiveClock } from "../src/clock.js"
import { HOUR, launch, MIN, run, START, timelineFile, tmpDb } from "./helpers.js"

const file = timelineFile(
  [
    launch({ gpu_count: 2 }),
    { at: "PT0S", do: "miss_pod_events", id: "gi-2", count: 2 },
    launch({ id: "gi-2", estimated_duration_hours: 3 }),
    { at: "PT20M", do: "extend", id: "gi-1", hours: 1 },
    { at: "PT40M", do: "preempt", id: "gi-1" },
    { at: "PT55M", do: "resume", id: "gi-1" },
    { at: "PT1H", do: "top_up", account: "acme", amount: "10.00" },
    { at: "PT2H", do: "terminate", id: "gi-2" }
  ],
  { until: "PT6H" }
)
const options = () => ({ db: tmpDb(), outages: [{ at_ms: Date.parse(START) + 30 * MIN, duration_ms: 5 * MIN }], restartAt: [Date.parse(START) + 2 * HOUR] })

/** A stack frame in our own engine code, wherever the checkout lives. */
const ROOT = join(import.meta.dirname, "..")
const OUR_DIRS = ["src", "machines", "sim"].map((d) => `${join(ROOT, d)}/`)
const isOurs = (frame: string): boolean => OUR_DIRS.some((d) => frame.includes(d)) && !frame.includes("node_modules")

const real = {
  now: Date.now,
  perf: performance.now.bind(performance),
  random: Math.random,
  setTimeout: globalThis.setTimeout,
  setInterval: globalThis.setInterval,
  setImmediate: globalThis.setImmediate,
  Date: globalThis.Date
}

/** Replaces the wall-clock and randomness sources with spies that note callers in our code. */
const spyOnWall = (shift_ms: number): string[] => {
  const calls: string[] = []
  const note = (what: string) => {
    const frames = (new Error().stack ?? "").split("\n").slice(3)
    const caller = frames[0] ?? ""
    if (isOurs(caller)) calls.push(`${what} ${caller.trim()}`)
  }
  Date.now = () => (note("Date.now"), real.now() + shift_ms)
  performance.now = () => (note("performance.now"), real.perf())
  Math.random = () => (note("Math.random"), real.random())
  globalThis.setTimeout = ((...a: Parameters<typeof setTimeout>) => (note("setTimeout"), real.setTimeout(...a))) as typeof setTimeout
  globalThis.setInterval = ((...a: Parameters<typeof setInterval>) => (note("setInterval"), real.setInterval(...a))) as typeof setInterval
  globalThis.setImmediate = ((...a: Parameters<typeof setImmediate>) => (note("setImmediate"), real.setImmediate(...a))) as typeof setImmediate
  globalThis.Date = new Proxy(real.Date, {
    construct(target, args: unknown[]) {
      if (args.length === 0) note("new Date()")
      return args.length === 0 ? new target(real.now() + shift_ms) : new target(...(args as [number]))
    }
  })
  return calls
}

afterEach(() => {
  Date.now = real.now
  performance.now = real.perf
  Math.random = real.random
  globalThis.setTimeout = real.setTimeout
  globalThis.setInterval = real.setInterval
  globalThis.setImmediate = real.setImmediate
  globalThis.Date = real.Date
})

describe("the virtual clock", () => {
  it("is the only clock our code reads during a simulation", () => {
    // Proves no wall-clock read, randomness or Node timer from src/, machines/ or sim/.
    const calls = spyOnWall(0)
    const result = run(file, options())
    expect(calls).toEqual([])
    expect(result.output.transitions.length).toBeGreaterThan(5)
  })

  it("gives byte-identical output at wall times ten years apart", () => {
    // Proves the wall time does not leak into the output, even through the libraries.
    spyOnWall(0)
    const now = JSON.stringify(run(file, options()).output)
    spyOnWall(10 * 365 * 24 * HOUR)
    const later = JSON.stringify(run(file, options()).output)
    expect(later).toBe(now)
  })

  it("would notice a wall-clock read from our code", () => {
    // Proves the spy itself works, so the first test cannot pass by accident.
    const calls = spyOnWall(0)
    const probe = new Function("return Date.now()") as () => number
    probe()
    expect(calls).toEqual([])
    // A read from a project file is caught: the live clock is the one place that may read.
    new LiveClock().now()
    expect(calls).toEqual([expect.stringMatching(/^Date\.now .*src\/clock\.ts/)])
  })
})
