/**
 * The Kubernetes world's control plane in this process (src/api/kubernetesServer.ts): what a
 * replica logs, answers and writes as it leads, stands by and loses the lease.
 */
import { afterEach, describe, expect, it } from "vitest"
import { replicas, until, type Replicas } from "./kubeReplicas.js"

let world: Replicas | null = null
afterEach(async () => {
  await world?.close()
  world = null
})

describe("a Kubernetes replica's log", () => {
  it("is the process's one pino logger: numeric levels and times, a failing lease request a warning, and a line when the replica is fenced", async () => {
    // Found by review: the Kubernetes world wrote its own JSON to stderr, without a time and
    // with "level":"info" strings beside pino's numeric lines on stdout; a failing lease
    // request was info, and fencing wrote nothing.
    world = await replicas()
    const a = await world.start("replica-a")
    await until("leading", () => a.lines.find((l) => l.msg.startsWith("leading")))
    expect(a.lines.find((l) => l.msg === "lease acquired")).toMatchObject({ level: 30, component: "lease", identity: "replica-a", kind: "acquired" })
    // The API server refuses every lease request: renewals fail, the renew deadline passes.
    world.api.inject({ path: "/leases", status: 500 })
    const fenced = await until("fenced", () => a.lines.find((l) => l.msg.startsWith("fenced")))
    world.api.clearFailures()
    expect(fenced).toMatchObject({ level: 40, identity: "replica-a" })
    expect(a.lines.find((l) => l.msg === "lease request failed")).toMatchObject({ level: 40, component: "lease", kind: "request_failed", status: 500 })
    expect(a.lines.find((l) => l.msg === "lease lost (renew_deadline)")).toMatchObject({ level: 40, kind: "lost", reason: "renew_deadline" })
    for (const line of a.lines) {
      expect(typeof line.level).toBe("number")
      expect(typeof line.time).toBe("number")
    }
  }, 30_000)
})
