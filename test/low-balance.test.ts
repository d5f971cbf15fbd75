/**
 * SPEC §7, when the balance runs low: warnings at 60/30/20 (warning) and 10/5/3/1 (critical)
 * minutes before the account's money runs out, each at its exact instant, once per
 * run-down, armed again by a top-up that lifts the account above them.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { planWarnings, zeroAt } from "../src/lowBalance.js"
import { at, HOUR, MIN, run, START, timelineFile, tmpDb } from "./helpers.js"

const catalog = {
  gpus: { H100: { hourly_rate: "1.00" } },
  regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }, "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
}
const inference = [
  { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "platform", gpu: "H100", gpu_count: 1 },
  { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" }
]
const warnings = (r: ReturnType<typeof run>) =>
  r.output.notifications.filter((n) => n.kind === "balance_warning").map((n) => [n.at, n.severity, (n.text as string).match(/about (\d+)/)![1]])

/** Every threshold at its instant before `zero`, in order, then the stop for credit_depleted at `zero`, and a clean run. */
const expectFullRunDown = (r: ReturnType<typeof run>, zero: number): void => {
  expect(warnings(r)).toEqual([
    [at(zero - 60 * MIN), "warning", "60"],
    [at(zero - 30 * MIN), "warning", "30"],
    [at(zero - 20 * MIN), "warning", "20"],
    [at(zero - 10 * MIN), "critical", "10"],
    [at(zero - 5 * MIN), "critical", "5"],
    [at(zero - 3 * MIN), "critical", "3"],
    [at(zero - 1 * MIN), "critical", "1"]
  ])
  expect(r.output.notifications.at(-1)).toMatchObject({ at: at(zero), kind: "terminated", text: "Instance terminated: credit balance depleted." })
  expect(r.output.invariants.ok).toBe(true)
}

describe("low-balance warnings", () => {
  it("fire at the exact instants before the money runs out, in threshold order", () => {
    // Proves exact instants: $48 + $3 runs out at 25.5 h at $2/h (a $3 partial covers 1.5 h).
    const r = run(timelineFile(inference, { catalog, until: "P2D", accounts: { acme: { balance: "51.00" } } }))
    const zero = 24 * HOUR + 90 * MIN
    expectFullRunDown(r, zero)
  })

  it("count what a cycle's hold gives back at its end: no warnings a day early after a failover", () => {
    // Proves the run-down includes the refund a cycle end brings: $48 is all held at launch,
    // but with us-east failed at 1 h, $23 of the hold comes back at 24 h and renews a partial
    // hold that eu-west consumes by 47 h. The warnings come before 47 h, not before 24 h.
    const r = run(timelineFile([...inference, { at: "PT1H", do: "pod_fail", id: "ii-1", region: "us-east" }], { catalog, until: "P3D", accounts: { acme: { balance: "48.00" } } }))
    const zero = 47 * HOUR
    expectFullRunDown(r, zero)
  })

  it("foresee the second of two renewals at one instant stopping when the first takes the whole balance", () => {
    // Proves renewals are played in the engine's order: inf-a and inf-b end their cycles at 24:01;
    // inf-a renews first, on a partial hold of everything, so inf-b has only its own refund
    // and stops. The account is warned before 24:01, not surprised by inf-b's stop.
    const oneRegion = { gpus: { H100: { hourly_rate: "1.00" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } }
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "m", source: "huggingface", gpu: "H100", gpu_count: 1 },
          { at: "PT1M", do: "launch_inference_instance", account: "acme", id: "inf-a", model: "m" },
          { at: "PT1M", do: "launch_inference_instance", account: "acme", id: "inf-b", model: "m" },
          { at: "PT1H", do: "preempt", id: "inf-a", region: "us-east" },
          { at: "PT11H", do: "resume", id: "inf-a", region: "us-east" },
          { at: "PT2H", do: "preempt", id: "inf-b", region: "us-east" },
          { at: "PT2H0M6S", do: "resume", id: "inf-b", region: "us-east" }
        ],
        { catalog: oneRegion, until: "P2D", accounts: { acme: { balance: "48.016" } } }
      )
    )
    const zero = 24 * HOUR + 1 * MIN
    expect(warnings(r).map((w) => w[0])).toEqual([60, 30, 20, 10, 5, 3, 1].map((m) => at(zero - m * MIN)))
    expect(r.output.notifications.find((n) => n.kind === "terminated")).toMatchObject({ at: at(zero), resource: "inf-b", text: "Instance terminated: credit balance depleted." })
    expect(r.output.invariants.ok).toBe(true)
  })

  it("are armed again by a top-up that lifts the account above them, and not sent twice otherwise", () => {
    // Proves "each once per run-down": 60 and 30 fire, a top-up of $1 (30 more minutes) re-arms 30 only
    // (sim/examples/low-balance.json).
    const r = run(JSON.parse(readFileSync(join(import.meta.dirname, "..", "sim", "examples", "low-balance.json"), "utf8")))
    const zero = 24 * HOUR + 90 * MIN
    const later = zero + 30 * MIN
    expect(warnings(r).slice(0, 4)).toEqual([
      [at(zero - 60 * MIN), "warning", "60"],
      [at(zero - 30 * MIN), "warning", "30"],
      // After the top-up at 25:05 the money lasts to 26:00: 55 minutes, so 60 stays sent.
      [at(later - 30 * MIN), "warning", "30"],
      [at(later - 20 * MIN), "warning", "20"]
    ])
    expect(warnings(r).filter((w) => w[2] === "60")).toHaveLength(1)
  })

  it("send only the tightest threshold when a launch starts below several at once", () => {
    // Proves the Decision: $1 of partial credit at $2/h (30 min) sends the 30-minute warning, not 60 then 30.
    expect(planWarnings(0, 30 * MIN, [], false)).toEqual({ warned: [60, 30], now: 30, next: { minutes: 20, at: 10 * MIN } })
    // Nothing burns: nothing is due, and what was sent stays sent until a credit.
    expect(planWarnings(0, null, [60], false)).toEqual({ warned: [60], now: null, next: null })
    expect(planWarnings(0, null, [60], true)).toEqual({ warned: [], now: null, next: null })
    // A longer run-down without a credit (a resource stopped) does not send 60 again.
    expect(planWarnings(0, 2 * HOUR, [60], false)).toEqual({ warned: [60], now: null, next: { minutes: 30, at: 90 * MIN } })
    expect(zeroAt(0, 3_600_000n * 2_000_000n, 2_000_000n)).toBe(3_600_000)
  })

  it("land on the same instants when the engine restarts between them", () => {
    // Proves the monitor's state survives a restart (no warning twice, none lost).
    const file = timelineFile(inference, { catalog, until: "P2D", accounts: { acme: { balance: "51.00" } } })
    const straight = run(file)
    const restarted = run(file, { db: tmpDb(), restartAt: [24 * HOUR + 31 * MIN, 24 * HOUR + 61 * MIN].map((d) => Date.parse(START) + d) })
    expect(JSON.stringify(restarted.output)).toBe(JSON.stringify(straight.output))
  })
})
