/**
 * The order at one instant, as docs/TIMELINE-EXTENSIONS.md states it where it extends
 * TIMELINE.md's "Events at the same instant apply in file order" and "`PT0S` makes a launch
 * run at once": every input of the instant first, in file order; then the world's
 * consequences of them (pod moves, the payment provider's webhooks); then the engine's alarms.
 */
import { describe, expect, it } from "vitest"
import { run, timelineFile } from "./helpers.js"

const catalog = { gpus: { H100: { hourly_rate: "1.00" } }, regions: { r: { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } }
const launchAt = (at: string) => ({ at, do: "launch_gpu_instance", account: "a", id: "g", gpu: "H100", gpu_count: 1, region: "r", estimated_duration_hours: 1 })
const runOf = (events: ReadonlyArray<Record<string, unknown>>, balance: string) => run(timelineFile(events, { catalog, accounts: { a: { balance } }, until: "PT3H" })).output
const refusals = (out: ReturnType<typeof runOf>) => out.rejected.map((r) => [r.event, r.status, r.error])

describe("one instant", () => {
  it("finds a PT0S launch still pending for every input of its instant, and running one millisecond later", () => {
    // Pins the documented rule (F8): a preempt at the launch's own instant is refused 409 not_running.
    expect(refusals(runOf([launchAt("PT0S"), { at: "PT0S", do: "preempt", id: "g" }], "10.00"))).toEqual([[1, 409, "not_running"]])
    const later = runOf([launchAt("PT0S"), { at: "PT0.001S", do: "preempt", id: "g" }], "10.00")
    expect(refusals(later)).toEqual([])
    expect(later.transitions.slice(0, 3).map((t) => [String(t.at).slice(11), t.from, t.to])).toEqual([
      ["00:00:00.000Z", "pending", "loading"],
      ["00:00:00.000Z", "loading", "running"],
      ["00:00:00.001Z", "running", "preempted"]
    ])
  })

  it("credits a top-up after every input of its instant", () => {
    // Pins the same rule for the provider's webhook (default delay PT0S): a launch at the top-up's instant does not see the money.
    const top_up = { at: "PT0S", do: "top_up", account: "a", amount: "5.00" }
    expect(refusals(runOf([top_up, launchAt("PT0S")], "0.00"))).toEqual([[1, 402, "insufficient_balance"]])
    expect(refusals(runOf([top_up, launchAt("PT0.001S")], "0.00"))).toEqual([])
  })
})
