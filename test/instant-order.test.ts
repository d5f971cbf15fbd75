/**
 * The order at one instant, as docs/TIMELINE-EXTENSIONS.md states it where it extends
 * TIMELINE.md's "Events at the same instant apply in file order" and "`PT0S` makes a launch
 * run at once": the inputs in file order, each followed at once by its own consequences in
 * the world at that instant (a pod that starts at once, the payment provider's answer and
 * webhook without delay); then the rest of the world; then the engine's alarms.
 */
import { describe, expect, it } from "vitest"
import { run, timelineFile } from "./helpers.js"

const catalog = { gpus: { H100: { hourly_rate: "1.00" } }, regions: { r: { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } }
const launchAt = (at: string) => ({ at, do: "launch_gpu_instance", account: "a", id: "g", gpu: "H100", gpu_count: 1, region: "r", estimated_duration_hours: 1 })
const runOf = (events: ReadonlyArray<Record<string, unknown>>, balance: string) => run(timelineFile(events, { catalog, accounts: { a: { balance } }, until: "PT3H" })).output
const refusals = (out: ReturnType<typeof runOf>) => out.rejected.map((r) => [r.event, r.status, r.error])

describe("one instant", () => {
  it("finds a PT0S launch running for the inputs after it at its instant, and pending for those before", () => {
    // Pins file order: a preempt after the launch at its own instant finds it running (before,
    // every input of the instant came before any pod moved: 409 not_running); one before it
    // finds no pod yet.
    const same = runOf([launchAt("PT0S"), { at: "PT0S", do: "preempt", id: "g" }], "10.00")
    expect(refusals(same)).toEqual([])
    expect(same.transitions.slice(0, 3).map((t) => [String(t.at).slice(11), t.from, t.to])).toEqual([
      ["00:00:00.000Z", "pending", "loading"],
      ["00:00:00.000Z", "loading", "running"],
      ["00:00:00.000Z", "running", "preempted"]
    ])
    expect(refusals(runOf([{ at: "PT0S", do: "preempt", id: "g" }, launchAt("PT0S")], "10.00"))).toEqual([[0, 409, "no_pod"]])
  })

  it("credits a top-up before the next input of its instant (the provider answers without delay)", () => {
    // Pins file order for the provider's webhook (default delay PT0S): a launch after the top-up
    // at its instant sees the money (before, it was refused 402); one before it does not.
    const top_up = { at: "PT0S", do: "top_up", account: "a", amount: "5.00" }
    expect(refusals(runOf([top_up, launchAt("PT0S")], "0.00"))).toEqual([])
    expect(refusals(runOf([launchAt("PT0S"), top_up], "0.00"))).toEqual([[0, 402, "insufficient_balance"]])
  })

  it("keeps the world's own moves of the instant after every input: a pod due then from an earlier launch", () => {
    // Only an input's consequences at its own instant follow it at once: a pod that started
    // pulling a minute earlier starts after every input of the instant it is due.
    const slow = { ...catalog, regions: { r: { nodes: 1, gpus_per_node: 8, image_pull: "PT1M", container_start: "PT0S" } } }
    const out = run(timelineFile([launchAt("PT0S"), { at: "PT1M", do: "preempt", id: "g" }], { catalog: slow, accounts: { a: { balance: "10.00" } }, until: "PT3H" })).output
    expect(out.rejected.map((r) => [r.event, r.status, r.error])).toEqual([[1, 409, "not_running"]])
  })
})
