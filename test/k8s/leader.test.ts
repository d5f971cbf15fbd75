/**
 * Leader election on a coordination.k8s.io/v1 Lease, against the API test server on the
 * virtual clock: who leads when, what the Lease says, and that two supervisors never run
 * at once. The last test runs two control-plane replicas over one SQLite file and hands
 * the supervisor over in the middle of an inference billing cycle: the ledger is the same as
 * a run without the handover, so nothing was billed twice (or lost).
 */
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import type { KubernetesCluster } from "../../src/k8s/cluster.js"
import { DEFAULT_LEADER_ELECTION, LeaderElector, type LeaderElectionConfig, type LeaderReport } from "../../src/k8s/leader.js"
import { dollars } from "../../src/money.js"
import { superviseUnderLease, type Running } from "../../src/k8s/world.js"
import { tmpDb } from "../helpers.js"
import { K8sWorld, START_MS } from "./harness.js"
import { startEngine, stopEngine, type KubeEngine } from "./timelineWorld.js"

let world: K8sWorld | null = null
const engines: KubeEngine[] = []
afterEach(async () => {
  for (const e of engines.splice(0)) stopEngine(e)
  await world?.close()
  world = null
})

const S = 1000
const MIN = 60 * S
const HOUR = 60 * MIN

interface Replica {
  readonly id: string
  readonly elector: LeaderElector
  readonly reports: LeaderReport[]
}

/** The log of who started and stopped leading, at which second. */
const log: Array<[number, string, "started" | "stopped"]> = []

/** `identity` defaults to the replica's name; two replicas given one identity are a misconfiguration. */
const replica = (
  w: K8sWorld,
  id: string,
  hooks: { started?: () => void; stopped?: () => void; fenced?: () => boolean } = {},
  timing: Partial<LeaderElectionConfig> = {},
  identity: string = id
): Replica => {
  const reports: LeaderReport[] = []
  const elector = new LeaderElector(
    w.kubeConfig(id),
    w.clock,
    { namespace: w.namespace, identity, ...DEFAULT_LEADER_ELECTION, ...timing },
    {
      onStartedLeading: () => {
        log.push([(w.clock.now() - START_MS) / S, id, "started"])
        hooks.started?.()
      },
      onStoppedLeading: () => {
        log.push([(w.clock.now() - START_MS) / S, id, "stopped"])
        hooks.stopped?.()
      },
      ...(hooks.fenced === undefined ? {} : { fenced: hooks.fenced })
    },
    (r) => reports.push(r)
  )
  w.participants.push(elector)
  return { id, elector, reports }
}

const lease = (w: K8sWorld) => w.server.object("leases", w.namespace, "ecolink-engine")?.spec

const setup = async () => {
  log.length = 0
  world = await K8sWorld.start()
  return world
}

describe("leader election on a Lease", () => {
  it("the first candidate creates the lease and leads; the other stands by while the leader renews every retry period", async () => {
    const w = await setup()
    const a = replica(w, "a")
    const b = replica(w, "b")
    a.elector.start()
    b.elector.start()
    await w.advance(60 * S)
    expect(log).toEqual([[0, "a", "started"]])
    expect(a.elector.leading && !b.elector.leading).toBe(true)
    expect(lease(w)).toEqual({
      holderIdentity: "a",
      leaseDurationSeconds: 15,
      acquireTime: "2026-03-01T00:00:00.000000Z",
      renewTime: "2026-03-01T00:01:00.000000Z",
      leaseTransitions: 0
    })
    expect(a.reports).toEqual([{ kind: "acquired", at: START_MS, transitions: 0 }])
  })

  it("a leader that crashes: the standby takes over once the lease has not changed for its duration, on its own clock", async () => {
    const w = await setup()
    const a = replica(w, "a")
    const b = replica(w, "b")
    a.elector.start()
    b.elector.start()
    await w.advance(10 * S)
    a.elector.halt() // renewed at 10 s, then nothing
    await w.advance(30 * S)
    // b saw the last change at 10 s; at 24 s it is not yet 15 s old, at 26 s it is.
    expect(log).toEqual([
      [0, "a", "started"],
      [26, "b", "started"]
    ])
    expect(lease(w)).toMatchObject({ holderIdentity: "b", acquireTime: "2026-03-01T00:00:26.000000Z", leaseTransitions: 1 })
  })

  it("a lease request past request_timeout_ms is cancelled: the API server sees its connection closed", async () => {
    // Found by review: a timed-out lease request was abandoned, not cancelled, so while the
    // API server hung every retry period left one more connection open, without bound.
    const w = await setup()
    const a = replica(w, "a")
    a.elector.start()
    await w.advance(10 * S)
    w.server.inject({ token: "a", path: "/leases", status: 0, hang: true, times: 1 })
    const realTime = async (holds: () => boolean): Promise<void> => {
      for (let i = 0; i < 500 && !holds(); i++) await new Promise((resolve) => setTimeout(resolve, 10))
    }
    // The world never settles while a request hangs: step the clock without waiting.
    const settle = w.clock.settle
    w.clock.settle = async () => {}
    await w.clock.advance(2 * S) // the renewal at 12 s reads the lease: no answer
    await realTime(() => w.server.hung.requests === 1)
    await w.clock.advance(2 * S - 1)
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(w.server.hung).toEqual({ requests: 1, closed: 0 })
    await w.clock.advance(1) // 14 s: request_timeout_ms (2 s) has passed
    w.clock.settle = settle
    await realTime(() => w.server.hung.closed === 1)
    expect(w.server.hung).toEqual({ requests: 1, closed: 1 })
    // The next renewal is answered, within the renew deadline: a still leads.
    await w.advance(10 * S)
    expect(log).toEqual([[0, "a", "started"]])
    expect(a.elector.leading).toBe(true)
  })

  it("a leader cut off from the API server stops at its renew deadline, before a standby may take over", async () => {
    const w = await setup()
    const a = replica(w, "a")
    const b = replica(w, "b")
    a.elector.start()
    b.elector.start()
    await w.advance(10 * S)
    w.server.inject({ token: "a", path: "/leases", status: 503 })
    await w.advance(30 * S)
    expect(log).toEqual([
      [0, "a", "started"],
      [20, "a", "stopped"],
      [26, "b", "started"]
    ])
    expect(a.reports.filter((r) => r.kind === "lost")).toEqual([{ kind: "lost", at: START_MS + 20 * S, reason: "renew_deadline" }])
    // Reconnected, the old leader finds the lease taken and stays a standby.
    w.server.clearFailures()
    await w.advance(30 * S)
    expect(log.length).toBe(3)
    expect(lease(w)?.holderIdentity).toBe("b")
  })

  it("stop() releases the lease: the standby takes over at its next try, not after the lease duration", async () => {
    const w = await setup()
    const a = replica(w, "a")
    const b = replica(w, "b")
    a.elector.start()
    b.elector.start()
    await w.advance(9 * S)
    await a.elector.stop()
    await w.advance(5 * S)
    expect(log).toEqual([
      [0, "a", "started"],
      [9, "a", "stopped"],
      [10, "b", "started"]
    ])
    expect(lease(w)).toMatchObject({ holderIdentity: "b", leaseTransitions: 1 })
  })

  it("a leader fenced by a newer term steps down, and leads again with a fresh term once the lease is released, not before", async () => {
    // Found by review: two replicas started with one identity both took the lease as their
    // own; the one the other's newer leader term fenced kept renewing a lease it could not
    // serve under, and after the other stopped it answered 503 for ever. Now the fenced one
    // steps down and does not take the lease back while the other renews it under the same
    // identity (the two would fence each other in turns), but as soon as it is released.
    const w = await setup()
    let fenced = false
    const a1 = replica(w, "a1", { started: () => (fenced = false), fenced: () => fenced }, {}, "a")
    const a2 = replica(w, "a2", {}, {}, "a")
    a1.elector.start()
    await w.advance(10 * S)
    a2.elector.start() // 10 s: the lease names its identity, so it takes it as its own
    await w.advance(1 * S)
    expect(a1.elector.leading && a2.elector.leading).toBe(true)
    fenced = true // a2's engine claimed the newer term: a1's next unit of work was refused
    await w.advance(30 * S)
    expect(log).toEqual([
      [0, "a1", "started"],
      [10, "a2", "started"],
      [12, "a1", "stopped"]
    ])
    expect(a1.reports.filter((r) => r.kind === "lost")).toEqual([{ kind: "lost", at: START_MS + 12 * S, reason: "fenced" }])
    await a2.elector.stop() // 41 s: released
    await w.advance(5 * S)
    expect(log.slice(3)).toEqual([
      [41, "a2", "stopped"],
      [42, "a1", "started"]
    ])
    expect(a1.elector.leading).toBe(true)
    expect(lease(w)).toMatchObject({ holderIdentity: "a", acquireTime: "2026-03-01T00:00:42.000000Z" })
  })

  it("a fenced leader whose twin crashed takes the lease back once it has not changed for its duration", async () => {
    const w = await setup()
    let fenced = false
    const a1 = replica(w, "a1", { started: () => (fenced = false), fenced: () => fenced }, {}, "a")
    const a2 = replica(w, "a2", {}, {}, "a")
    a1.elector.start()
    a2.elector.start()
    await w.advance(10 * S)
    fenced = true
    await w.advance(10 * S)
    a2.elector.halt() // 20 s: renewed at 20 s, then nothing
    await w.advance(30 * S)
    // a1 stepped down at its next try (12 s); it saw a2's last renewal (at 20 s, after a1's
    // own read at 20 s) at 22 s, so the lease was 15 s old at 37 s: a1 took it at 38 s.
    expect(log).toEqual([
      [0, "a1", "started"],
      [0, "a2", "started"],
      [12, "a1", "stopped"],
      [38, "a1", "started"]
    ])
  })

  it("two candidates racing to create the lease: exactly one leads (the other's create is refused with 409)", async () => {
    const w = await setup()
    const a = replica(w, "a")
    const b = replica(w, "b")
    a.elector.start()
    b.elector.start()
    // Fire both first attempts without waiting in between: their requests really race.
    w.clock.settle = async () => {}
    await w.clock.advance(0)
    w.clock.settle = () => w.settle()
    await w.settle()
    await w.advance(30 * S)
    const leaders = [a, b].filter((r) => r.elector.leading)
    expect(leaders.length).toBe(1)
    expect(lease(w)?.holderIdentity).toBe(leaders[0]!.id)
    expect(log).toEqual([[0, leaders[0]!.id, "started"]])
    expect(w.server.requests.filter((r) => r.method === "POST" && r.path.endsWith("/leases")).length).toBe(2)
  })
})

describe("a leader handover in the middle of a billing cycle", () => {
  /**
   * The inputs of the scenario, run against whichever engine leads: an inference instance
   * (24 h cycles) and a GPU instance stopped by its user, on one account.
   */
  const scenario = (w: K8sWorld, engine: () => KubeEngine) => {
    const at = (ms: number, fn: (sup: KubeEngine["sup"]["sync"]) => Either.Either<unknown, unknown>) =>
      w.clock.schedule(START_MS + ms, () => expect(Either.isRight(fn(engine().sup.sync))).toBe(true), { lane: 0, key: String(ms).padStart(12, "0") })
    at(1 * S, (s) => s.openAccount("acme"))
    at(1 * S + 1, (s) => s.credit("acme", "adjustment", dollars("200.00"), "Opening balance"))
    at(1 * S + 2, (s) => s.registerModel({ account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 }))
    at(1 * S + 3, (s) => s.launchInference({ account: "acme", id: "inf-1", model: "llama" }))
    at(1 * S + 4, (s) => s.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 2, node_count: 1, region: "us-east", estimated_duration_hours: 10, image: null }))
    at(8 * HOUR, (s) => s.terminate("gi-1"))
  }
  const money = (e: KubeEngine) => ({
    rows: e.ledger.ledgerRows().map((r) => [r.at, r.account, r.kind, r.amount_micros.toString(), r.balance_after_micros.toString(), r.resource, r.description]),
    holds: e.ledger.holds(),
    notifications: e.ledger.notifications().map((n) => [n.at, n.kind, n.text])
  })

  it("the standby takes over from a cut-off leader, rehydrates from SQLite and reconciles: the same ledger as one engine throughout", async () => {
    // The reference: one control plane, no election.
    const ref = await K8sWorld.start({ start_ms: START_MS })
    const refDriver = await ref.driver()
    const refEngine = startEngine({ db: tmpDb(), clock: ref.clock, cluster: refDriver, gpu_rates: new Map([["H100", dollars("1.60")]]) })
    scenario(ref, () => refEngine)
    await ref.advanceTo(START_MS + 30 * HOUR)
    const expected = money(refEngine)
    stopEngine(refEngine)
    await ref.close()

    // Two replicas, each with its own warm informer, one SQLite file; whoever leads runs the supervisor.
    const w = await setup()
    const db = tmpDb()
    const drivers: Record<string, KubernetesCluster> = { a: await w.driver(), b: await w.driver() }
    let current: KubeEngine | null = null
    // Minutes, not seconds, so thirty virtual hours of renewals stay a few hundred requests.
    const timing = { lease_duration_ms: 30 * MIN, renew_deadline_ms: 20 * MIN, retry_period_ms: 10 * MIN, request_timeout_ms: 1 * MIN }
    for (const id of ["a", "b"]) {
      const start = (): Running => {
        expect(current).toBe(null) // never two supervisors at once
        log.push([(w.clock.now() - START_MS) / S, id, "started"])
        const engine = startEngine({ db, clock: w.clock, cluster: drivers[id]!, gpu_rates: new Map([["H100", dollars("1.60")]]) })
        current = engine
        engines.push(engine)
        return {
          stop: () => {
            log.push([(w.clock.now() - START_MS) / S, id, "stopped"])
            stopEngine(engine)
            engines.splice(engines.indexOf(engine), 1)
            current = null
          }
        }
      }
      w.participants.push(superviseUnderLease(w.kubeConfig(id), w.clock, { namespace: w.namespace, identity: id, ...DEFAULT_LEADER_ELECTION, ...timing }, start))
    }
    scenario(w, () => current!)
    // Six hours into the first cycle, just after a renewed, a loses the API server: it stops
    // at its renew deadline (6 h 20 min); b takes over once the lease lapses (6 h 30 min).
    await w.advanceTo(START_MS + 6 * HOUR + 30 * S)
    w.server.inject({ token: "a", path: "/leases", status: 503 })
    await w.advanceTo(START_MS + 30 * HOUR)
    expect(log).toEqual([
      [0, "a", "started"],
      [6 * 3600 + 20 * 60, "a", "stopped"],
      [6 * 3600 + 30 * 60, "b", "started"]
    ])
    const got = money(current!)
    expect(got.rows).toEqual(expected.rows)
    expect(got.holds).toEqual(expected.holds)
    expect(got.notifications).toEqual(expected.notifications)
    // Each hold settled once: the first cycle's, the GPU instance's; the second cycle's is open.
    expect(got.holds.map((h) => [h.id, h.status])).toEqual([
      ["hold:inf-1:1", "settled"],
      ["hold:gi-1", "settled"],
      ["hold:inf-1:2", "open"]
    ])
    expect(got.rows.length).toBeGreaterThan(4)
  })
})
