/**
 * The Kubernetes world's control plane in this process (src/api/kubernetesServer.ts): what a
 * replica logs, answers and writes as it leads, stands by and loses the lease.
 */
import Database from "better-sqlite3"
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

describe("a Kubernetes replica's probes", () => {
  it("the leader is alive and ready; a standby is alive (200) but not ready (503 standby), and every other path is 503", async () => {
    // Found by review: a standby answered 503 on every path, so a liveness probe would have
    // restarted it over and over.
    world = await replicas()
    const a = await world.start("replica-a")
    await until("a leading", () => a.lines.find((l) => l.msg.startsWith("leading")))
    const b = await world.start("replica-b")
    await until("b standing by", () => b.lines.find((l) => l.msg.startsWith("standby")))
    const get = async (url: string) => {
      const r = await fetch(url)
      return [r.status, await r.json()]
    }
    expect(await get(`${a.running.url}/healthz`)).toEqual([200, { status: "ok" }])
    expect(await get(`${a.running.url}/readyz`)).toEqual([200, { status: "ready" }])
    expect(await get(`${b.running.url}/healthz`)).toEqual([200, { status: "ok" }])
    expect(await get(`${b.running.url}/readyz`)).toEqual([503, { error: "not_ready", reason: "standby", message: "this replica is on standby: another replica holds the leader lease" }])
    expect((await get(`${b.running.url}/account`))[0]).toBe(503)
  }, 30_000)
})

describe("two replicas started with one identity (a misconfiguration)", () => {
  it("the one fenced by the other's newer term steps down, says why, and serves again once the other stops", async () => {
    // Found by review: both took the lease as their own; the one fenced by the other's newer
    // leader term renewed on, and after the other stopped it answered 503 for ever with
    // nothing in the log.
    world = await replicas()
    const a = await world.start("dup")
    await until("a leading", () => a.lines.find((l) => l.msg.startsWith("leading")))
    const b = await world.start("dup")
    await until("b leading", () => b.lines.find((l) => l.msg.startsWith("leading")))
    // a's next try finds its engine fenced (an empty unit of work meets the newer term).
    const given = await until("a steps down", () => a.lines.find((l) => l.msg.startsWith("lease given up")))
    expect(given).toMatchObject({ level: 50, kind: "lost", reason: "fenced", identity: "dup" })
    expect(given.msg).toContain("Two replicas with the same identity (--identity, POD_NAME)")
    await until("a standing by", () => a.lines.find((l) => l.msg.startsWith("standby") && l.time >= given.time))
    const ready = async (url: string) => (await fetch(`${url}/readyz`)).status
    expect([await ready(a.running.url), await ready(b.running.url)]).toEqual([503, 200])
    // Not taken back while b renews it under the same identity.
    await new Promise((r) => setTimeout(r, 1_500))
    expect([await ready(a.running.url), await ready(b.running.url)]).toEqual([503, 200])

    await b.running.close() // releases the lease
    await until("a ready again", async () => ((await ready(a.running.url)) === 200 ? true : undefined))
    const r = await fetch(`${a.running.url}/operator/accounts/nobody`, { headers: { authorization: "Bearer op_test_0123456789abcdefghijklmnopqrstuvwxyz" } })
    expect(r.status).toBe(404)
  }, 40_000)
})

describe("a writer outside holding the database", () => {
  it("does not break the leader's fencing check: the leader keeps its lease and serves again once the lock is gone", async () => {
    // Found by review: the check before each renewal ran an empty unit of work, which takes the
    // write lock; held by another connection past the 2 s busy timeout, it failed with BUSY,
    // broke the supervisor (every later unit a defect) and escaped the lease's timer.
    world = await replicas()
    const a = await world.start("replica-a")
    await until("leading", () => a.lines.find((l) => l.msg.startsWith("leading")))
    const outside = new Database(world.db)
    outside.exec("BEGIN IMMEDIATE")
    // Several renewals (every 500 ms) with the lock held past the busy timeout.
    await new Promise((r) => setTimeout(r, 3_000))
    outside.exec("COMMIT")
    outside.close()
    expect(a.lines.filter((l) => l.level >= 50 || l.msg.startsWith("fenced") || l.msg.startsWith("lease lost"))).toEqual([])
    expect((await fetch(`${a.running.url}/readyz`)).status).toBe(200)
    const signup = await fetch(`${a.running.url}/accounts`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ email: "after@example.com" }) })
    expect(signup.status).toBe(201)
  }, 30_000)
})
