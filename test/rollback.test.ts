/**
 * A unit of work that SQLite rolls back (a full disk, a busy or failing file) must not leave
 * the engine's memory ahead of its database: the actors, their alarms and the caches would
 * otherwise be written by the next unit without the rows the rolled-back one wrote (a hold
 * never settled, a GPU running without one). The supervisor stops at the rollback and writes
 * nothing more; a restart recovers from SQLite, which is consistent.
 */
import { describe, expect, it } from "vitest"
import { VirtualClock } from "../src/clock.js"
import { podNameFor } from "../src/cluster.js"
import type { LedgerStore } from "../src/ledger/store.js"
import { dollars, formatDollars } from "../src/money.js"
import { SimCluster } from "../sim/cluster.js"
import { startSimEngine, stopEngine, type Engine } from "../sim/runner.js"
import { HOUR, MIN, START, tmpDb } from "./helpers.js"

const REGION = {
  name: "us-east",
  nodes: 2,
  gpus_per_node: 8,
  image_pull_ms: 0,
  image_pull_jitter_ms: 0,
  container_start_ms: 0,
  pod_stop_ms: 0,
  pull_failure_probability: 0,
  preemption_mean_interval_ms: 0,
  preemption_duration_ms: 0
}
const T0 = Date.parse(START)
const LAUNCH = { account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2 } as const

const world = () => {
  const db = tmpDb()
  const clock = new VirtualClock(T0)
  const cluster = new SimCluster(clock, [REGION], 7)
  const start = (): Engine => startSimEngine({ db, clock, cluster, gpu_rates: new Map([["H100", dollars("1.60")]]) })
  const advance = (e: Engine, to: number) => clock.advanceTo(T0 + to, (_, fire) => e.sup.unitOfWork(fire))
  return { cluster, start, advance }
}

/** The next snapshot write fails once, as SQLite does when the disk is full. */
const failNextSave = (ledger: LedgerStore): void => {
  const save = ledger.saveResource.bind(ledger)
  let armed = true
  ledger.saveResource = (r) => {
    if (!armed) return save(r)
    armed = false
    throw Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" })
  }
}

const rows = (e: Engine) => e.ledger.ledgerRows().map((r) => [r.kind, formatDollars(r.amount_micros), r.resource])
const holds = (e: Engine) => e.ledger.holds().map((h) => [h.id, h.status, h.held_micros, h.consumed_micros, h.refunded_micros])

describe("a unit of work that rolls back", () => {
  it("stops the supervisor, and a restart settles the hold of the instance whose terminate failed exactly once", () => {
    const w = world()
    let e = w.start()
    e.sup.sync.openAccount("acme")
    e.sup.sync.credit("acme", "adjustment", dollars("100.00"), "Opening balance")
    expect(e.sup.sync.launchGpu(LAUNCH)._tag).toBe("Right")
    w.advance(e, 30 * MIN)

    failNextSave(e.ledger)
    expect(() => e.sup.sync.terminate("gi-1")).toThrow("database or disk is full")
    // The database is as before the terminate: running, its hold open.
    expect(e.ledger.resource("gi-1")?.status).toBe("running")
    expect(e.ledger.hold("hold:gi-1")?.status).toBe("open")
    // Nothing more is written: a later command is a defect, and the shutdown's posting of
    // pending API usage does nothing (before the fix, it saved the instance as terminating).
    expect(() => e.sup.sync.credit("acme", "adjustment", dollars("1.00"), "more")).toThrow(/unit of work after a unit rolled back \(database or disk is full\)/)
    e.sup.settleApiUsage()
    expect(e.ledger.resource("gi-1")?.status).toBe("running")
    stopEngine(e)

    // A restart recovers from the database. The terminate had already asked the cluster to
    // delete the pod (the world is not rolled back), so the instance has none: the watchdog's
    // next tick (35 min) finds it failed, and its hold settles once: 35 min used of 2 h
    // ($0.933333 of $3.20), $2.266667 back.
    e = w.start()
    w.advance(e, 3 * HOUR)
    expect(rows(e)).toEqual([
      ["adjustment", "100.00", null],
      ["gpu_usage", "-3.20", "gi-1"],
      ["refund", "2.266667", "gi-1"]
    ])
    expect(holds(e)).toEqual([["hold:gi-1", "settled", 3_200_000n, 933_333n, 2_266_667n]])
    expect(e.ledger.balance("acme")).toBe(99_066_667n)
    expect(e.ledger.resource("gi-1")).toMatchObject({ status: "failed", live: false })
    stopEngine(e)
  })

  it("leaves no GPU running without a hold when a launch's commit fails", () => {
    const w = world()
    let e = w.start()
    e.sup.sync.openAccount("acme")
    e.sup.sync.credit("acme", "adjustment", dollars("100.00"), "Opening balance")
    failNextSave(e.ledger)
    expect(() => e.sup.sync.launchGpu(LAUNCH)).toThrow("database or disk is full")
    // Before the fix, the next unit (here the shutdown's) saved the rolled-back launch as
    // running, without its hold; it ran two hours free and its deadline then crashed every
    // restart.
    e.sup.settleApiUsage()
    expect(e.ledger.resource("gi-1")).toBeUndefined()
    stopEngine(e)

    e = w.start()
    w.advance(e, 3 * HOUR)
    expect(e.ledger.resource("gi-1")).toBeUndefined()
    expect(rows(e)).toEqual([["adjustment", "100.00", null]])
    expect(holds(e)).toEqual([])
    // The pod the rolled-back launch had asked for is an orphan, and the reconciler deletes it.
    expect(w.cluster.get(podNameFor("gi-1"))).toBeUndefined()
    stopEngine(e)
  })

  it("does not stop the supervisor for a refusal thrown before anything changed", () => {
    const w = world()
    const e = w.start()
    e.sup.sync.openAccount("acme")
    const refusal = Object.assign(new Error("refused"), { _tag: "Conflict" })
    expect(() => e.sup.unitOfWork(() => { throw refusal })).toThrow("refused")
    expect(e.sup.sync.credit("acme", "adjustment", dollars("5.00"), "after")._tag).toBe("Right")
    expect(e.ledger.balance("acme")).toBe(5_000_000n)
    stopEngine(e)
  })
})
