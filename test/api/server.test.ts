/**
 * End to end, as `npm start` runs: a child process on a temporary SQLite file with the fast
 * virtual clock (1 wall second = 30 engine minutes). Over HTTP only, a GPU instance is
 * launched for 1 hour, runs, reaches its deadline and stops by itself; its hold settles and
 * the manual's notification arrives. The clock is live, so a stop may land a few engine
 * seconds past the deadline (the watchdog lag): the assertions allow that and no more.
 */
import { describe, expect, it } from "vitest"
import { tmpDb } from "../helpers.js"
import { startServerProcess } from "./spawn.js"

const SPEED = 1800
/** Wall-time bound on the whole run: the engine hour takes 2 s of it. */
const RUN_TIMEOUT_MS = 30_000

describe("npm start end to end", () => {
  it("drives a GPU instance from launch to auto-stop over HTTP on the fast clock", async () => {
    // Proves the whole production path: flags, fast live clock, HTTP, the deadline, settlement, notification.
    const server = await startServerProcess(["--db", tmpDb(), "--port", "0", "--clock-speed", String(SPEED)])
    try {
      const call = async (method: string, path: string, body?: unknown) => {
        const r = await fetch(`${server.url}${path}`, {
          method,
          headers: { authorization: `Bearer ${server.demoKey}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
          ...(body === undefined ? {} : { body: JSON.stringify(body) })
        })
        return { status: r.status, body: (await r.json()) as any }
      }
      const launched = await call("POST", "/gpu-instances", { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 })
      expect(launched.status).toBe(201)
      expect(launched.body.status).toBe("pending")
      const id = launched.body.id as string
      const seen = new Set<string>()
      const deadline = Date.now() + RUN_TIMEOUT_MS
      let view: any = launched.body
      while (view.status !== "terminated" && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50))
        view = (await call("GET", `/gpu-instances/${id}`)).body
        seen.add(view.status)
      }
      expect(view).toMatchObject({ id, status: "terminated", termination_reason: "duration_expired" })
      expect(seen.has("running")).toBe(true)
      // Billed from loading to the stop: an hour, plus at most the watchdog lag (1 min).
      expect(view.billable_seconds).toBeGreaterThanOrEqual(3600)
      expect(view.billable_seconds).toBeLessThanOrEqual(3660)
      const rows = (await call("GET", `/billing/transactions?resource=${id}`)).body.data.reverse()
      expect(rows[0]).toMatchObject({ kind: "gpu_usage", amount: "-1.60", resource: id })
      // Any settlement after the hold is an overage within the lag: never a refund of a full hour.
      const consumedMicros = rows.reduce((sum: number, r: { amount: string }) => sum - Math.round(Number(r.amount) * 1e6), 0)
      expect(consumedMicros).toBeGreaterThanOrEqual(1_600_000)
      expect(consumedMicros).toBeLessThanOrEqual(1_600_000 + 26_667)
      const balance = (await call("GET", "/billing/balance")).body.balance
      expect(Math.round(Number(balance) * 1e6)).toBe(100_000_000 - consumedMicros)
      const notes = (await call("GET", "/notifications?limit=100")).body.data.filter((n: { resource: string }) => n.resource === id)
      expect(notes[0]).toMatchObject({ kind: "terminated", text: "Instance terminated — duration reached." })
      expect(notes.map((n: { kind: string }) => n.kind)).toContain("duration_warning")
      expect(await server.stop("SIGTERM")).toBe(0)
    } finally {
      server.child.kill("SIGKILL")
    }
  })
})
