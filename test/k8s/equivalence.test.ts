/**
 * The design's central promise (issue 5): the same timeline gives the same ledger,
 * notifications and transitions whether the engine drives the simulated cluster or a
 * Kubernetes cluster (the API test server, over HTTP, through @kubernetes/client-node, with
 * the scripted kubelet moving pods on the virtual clock).
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { runTimeline } from "../../sim/runner.js"
import { decode, DRILL_RESTARTS, DRILL_TIMELINE, timelineFile, tmpDb } from "../helpers.js"
import { restoreWallClock, spyOnWallClock } from "../wallClockSpy.js"
import { expectSameAsSimulated, runTimelineInKubernetes } from "./timelineWorld.js"

const EXAMPLES = join(import.meta.dirname, "..", "..", "sim", "examples")

describe("sim/examples in the Kubernetes world", () => {
  for (const file of readdirSync(EXAMPLES).filter((f) => f.endsWith(".json")).sort()) {
    it(`${file}: the same ledger, notifications and transitions as the simulated world`, async () => {
      const timeline = decode(JSON.parse(readFileSync(join(EXAMPLES, file), "utf8")))
      const sim = runTimeline(timeline)
      const k8s = await runTimelineInKubernetes(timeline)
      try {
        expectSameAsSimulated(k8s, sim)
        expect(sim.output.invariants.ok).toBe(true)
      } finally {
        await k8s.finish()
      }
    })
  }
})

describe("one instant in the Kubernetes world", () => {
  // Found by review: the virtual clock put an input's same-instant consequences before the next
  // input (file order), but the Kubernetes world's stepped clock did not, and its kubelet moves
  // pods from the HTTP it answers, after the input's timer returned: the two worlds differed.
  const catalog = { gpus: { H100: { hourly_rate: "1.60" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } }
  const launch = { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "g", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 }
  for (const [name, balance, events] of [
    ["a launch after a top-up at its instant sees the money", "0.00", [{ at: "PT0S", do: "top_up", account: "acme", amount: "5.00" }, launch]],
    ["a preempt after a PT0S launch at its instant finds it running", "10.00", [launch, { at: "PT0S", do: "preempt", id: "g" }]]
  ] as const) {
    it(`${name}, as in the simulated world`, async () => {
      const timeline = decode(timelineFile(events as unknown as ReadonlyArray<Record<string, unknown>>, { catalog, accounts: { acme: { balance } }, until: "PT3H" }))
      const sim = runTimeline(timeline)
      const k8s = await runTimelineInKubernetes(timeline)
      try {
        expect(sim.output.rejected).toEqual([])
        expectSameAsSimulated(k8s, sim)
      } finally {
        await k8s.finish()
      }
    })
  }
})

describe("the crash drill in the Kubernetes world", () => {
  const same = async (timeline: ReturnType<typeof decode>, drill: { readonly restartAt?: ReadonlyArray<number>; readonly outages?: ReadonlyArray<{ at_ms: number; duration_ms: number }> }) => {
    const sim = runTimeline(timeline, { db: tmpDb(), ...drill })
    const k8s = await runTimelineInKubernetes(timeline, { db: tmpDb(), ...drill })
    try {
      // Each start lists the pods (no watch is opened without a list): one driver per restart.
      const lists = k8s.world.server.requests.filter((r) => r.method === "GET" && r.path.endsWith("/pods") && r.query["watch"] !== "true").length
      expect(lists).toBe(1 + (drill.restartAt?.length ?? 0) + (drill.outages?.length ?? 0))
      expectSameAsSimulated(k8s, sim)
    } finally {
      await k8s.finish()
    }
    return sim
  }

  // The examples an outage an hour in changes: a pod healed at restart, webhooks redelivered, inputs refused.
  for (const file of ["api-usage.json", "payments.json", "preemption.json", "user-terminate-refund.json"]) {
    it(`${file} with a 20-minute outage an hour in: the same ledger, notifications and transitions as the simulated world`, async () => {
      const timeline = decode(JSON.parse(readFileSync(join(EXAMPLES, file), "utf8")))
      await same(timeline, { outages: [{ at_ms: timeline.start_ms + 60 * 60_000, duration_ms: 20 * 60_000 }] })
    })
  }

  it("a control plane dropped at nine awkward instants, each time with a new driver that lists the pods again: the same ledger, notifications and transitions as the simulated world's", async () => {
    const timeline = decode(DRILL_TIMELINE)
    const sim = await same(timeline, { restartAt: DRILL_RESTARTS })
    // And the simulated world's drill is the run that never stopped (test/restart.test.ts).
    expect(JSON.stringify(sim.output)).toBe(JSON.stringify(runTimeline(timeline).output))
    expect(sim.output.invariants.ok).toBe(true)
  })
})

afterEach(restoreWallClock)

describe("the Kubernetes world on the virtual clock", () => {
  it("never reads the wall clock from the engine or the driver: only the HTTP client and the test server do", async () => {
    // The engine and the driver only: the HTTP client and the test server may read the wall clock.
    const calls = spyOnWallClock()
    const timeline = decode(JSON.parse(readFileSync(join(EXAMPLES, "preemption.json"), "utf8")))
    const k8s = await runTimelineInKubernetes(timeline)
    try {
      expect(calls).toEqual([])
      expect(k8s.ledger.transitions().length).toBeGreaterThan(4)
    } finally {
      await k8s.finish()
    }
  })
})
