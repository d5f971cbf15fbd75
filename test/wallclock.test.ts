/**
 * A run on the virtual clock never touches the wall clock (DESIGN.md "Time"): no code of
 * ours reads Date.now, performance.now, `new Date()`, Math.random or arms a Node timer
 * during a simulation, and the output does not change with the wall time it runs at.
 *
 * XState and Effect read the wall clock internally for ids and bookkeeping (DESIGN.md
 * "Known pitfalls"); those reads are allowed because none of them reaches the output,
 * which the second test checks by running at two wall times ten years apart.
 */
import { afterEach, describe, expect, it } from "vitest"
import { LiveClock } from "../src/clock.js"
import { HOUR, launch, MIN, run, START, timelineFile, tmpDb } from "./helpers.js"
import { restoreWallClock, spyOnWallClock } from "./wallClockSpy.js"

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

afterEach(restoreWallClock)

describe("the virtual clock", () => {
  it("is the only clock our code reads during a simulation", () => {
    // Proves no wall-clock read, randomness or Node timer from src/, machines/ or sim/.
    const calls = spyOnWallClock(0)
    const result = run(file, options())
    expect(calls).toEqual([])
    expect(result.output.transitions.length).toBeGreaterThan(5)
  })

  it("gives byte-identical output at wall times ten years apart", () => {
    // Proves the wall time does not leak into the output, even through the libraries.
    spyOnWallClock(0)
    const now = JSON.stringify(run(file, options()).output)
    spyOnWallClock(10 * 365 * 24 * HOUR)
    const later = JSON.stringify(run(file, options()).output)
    expect(later).toBe(now)
  })

  it("would notice a wall-clock read from our code", () => {
    // Proves the spy itself works, so the first test cannot pass by accident.
    const calls = spyOnWallClock(0)
    const probe = new Function("return Date.now()") as () => number
    probe()
    expect(calls).toEqual([])
    // A read from a project file is caught: the live clock is the one place that may read.
    new LiveClock().now()
    expect(calls).toEqual([expect.stringMatching(/^Date\.now .*src\/clock\.ts/)])
  })
})
