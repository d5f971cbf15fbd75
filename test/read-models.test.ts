/**
 * The engine's read side for the API: an account's resources as views (paginated by id),
 * its ledger newest first with filters, its API usage by model, and its notifications with
 * read state. Each read is scoped to one account; another account's caller gets 404.
 */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { VirtualClock } from "../src/clock.js"
import { dollars } from "../src/money.js"
import { SimCluster } from "../sim/cluster.js"
import { startSimEngine, stopEngine } from "../sim/runner.js"
import { HOUR, MIN, START } from "./helpers.js"

const GPU_KINDS = ["gpu_instance", "gpu_cluster"]

const world = () => {
  const clock = new VirtualClock(Date.parse(START))
  const cluster = new SimCluster(clock, [{ name: "us-east", nodes: 2, gpus_per_node: 8, image_pull_ms: 0, image_pull_jitter_ms: 0, container_start_ms: 0, pod_stop_ms: 0, pull_failure_probability: 0, preemption_mean_interval_ms: 0, preemption_duration_ms: 0 }], 7)
  const engine = startSimEngine({
    db: ":memory:",
    clock,
    cluster,
    gpu_rates: new Map([["H100", dollars("1.60")]]),
    model_prices: new Map([["llama-3-8b", { input_per_1m_tokens: dollars("0.10"), output_per_1m_tokens: dollars("0.20") }]])
  })
  const sync = engine.sup.sync
  const advance = (ms: number) => clock.advanceTo(clock.now() + ms, (_, fire) => engine.sup.unitOfWork(fire))
  for (const account of ["acme", "globex"]) {
    Either.getOrThrow(sync.openAccount(account))
    Either.getOrThrow(sync.credit(account, "adjustment", dollars("100.00"), "Opening balance"))
  }
  const launch = (account: string, id: string) =>
    Either.getOrThrow(sync.launchGpu({ account, id, kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 1 }))
  return { engine, sync, advance, launch }
}

describe("read models", () => {
  it("lists an account's resources as views, by id, paginated, and refuses another account with 404", () => {
    // Proves list(): live and finished resources alike, only the caller's, keyset pagination.
    const { engine, sync, advance, launch } = world()
    launch("acme", "gi-b")
    launch("acme", "gi-a")
    launch("globex", "gi-c")
    advance(30 * MIN)
    Either.getOrThrow(sync.terminate("gi-b"))
    advance(1_000)
    const acme = { account: "acme" }
    const all = Either.getOrThrow(sync.list("acme", { kinds: GPU_KINDS, after: null, limit: 10 }, acme))
    expect(all.map((v) => [v.id, v.status])).toEqual([
      ["gi-a", "running"],
      ["gi-b", "terminated"]
    ])
    expect(Either.getOrThrow(sync.list("acme", { kinds: GPU_KINDS, after: "gi-a", limit: 1 }, acme)).map((v) => v.id)).toEqual(["gi-b"])
    expect(Either.getOrThrow(sync.list("acme", { kinds: ["cloud_drive"], after: null, limit: 10 }, acme))).toEqual([])
    const refused = sync.list("globex", { kinds: GPU_KINDS, after: null, limit: 10 }, acme)
    expect(Either.isLeft(refused) && refused.left.code).toBe("account_not_found")
    stopEngine(engine)
  })

  it("pages the ledger newest first with kind and resource filters, and sums API usage by model", () => {
    // Proves ledgerPage() and apiUsageByModel() on exact rows.
    const { engine, sync, advance, launch } = world()
    launch("acme", "gi-1")
    advance(2 * HOUR)
    Either.getOrThrow(sync.apiRequest({ account: "acme", model: "llama-3-8b", input_tokens: 1_000_000, output_tokens: 500_000 }))
    Either.getOrThrow(sync.apiRequest({ account: "acme", model: "llama-3-8b", input_tokens: 2_000_000 }))
    const rows = engine.ledger.ledgerPage("acme", { kinds: null, resource: null, before: null, limit: 10 })
    expect(rows.map((r) => [r.kind, r.amount_micros, r.resource])).toEqual([
      ["api_usage", -200_000n, "llama-3-8b"],
      ["api_usage", -200_000n, "llama-3-8b"],
      ["gpu_usage", -1_600_000n, "gi-1"],
      ["adjustment", 100_000_000n, null]
    ])
    expect(engine.ledger.ledgerPage("acme", { kinds: ["gpu_usage", "refund"], resource: "gi-1", before: null, limit: 10 }).map((r) => r.kind)).toEqual(["gpu_usage"])
    expect(engine.ledger.ledgerPage("acme", { kinds: null, resource: null, before: rows[1]!.id, limit: 1 }).map((r) => r.id)).toEqual([rows[2]!.id])
    expect(engine.ledger.ledgerPage("globex", { kinds: null, resource: "gi-1", before: null, limit: 10 })).toEqual([])
    expect(engine.ledger.apiUsageByModel("acme", 0, Number.MAX_SAFE_INTEGER)).toEqual([{ model: "llama-3-8b", amount_micros: 400_000n, rows: 2 }])
    stopEngine(engine)
  })

  it("lists notifications newest first, counts the unread ones and marks them read once", () => {
    // Proves the bell: unread count, mark one, mark all, and that marks never cross accounts.
    const { engine, advance, launch } = world()
    launch("acme", "gi-1")
    advance(2 * HOUR)
    const all = engine.ledger.notificationsOf("acme", { unread: false, before: null, limit: 50 })
    expect(all.length).toBeGreaterThan(2)
    expect(all.map((n) => n.id)).toEqual([...all.map((n) => n.id)].sort((a, b) => b - a))
    expect(engine.ledger.unreadCount("acme")).toBe(all.length)
    const at = Date.parse(START) + 2 * HOUR
    expect(engine.ledger.markRead("globex", [all[0]!.id], at)).toBe(0)
    expect(engine.ledger.markRead("acme", [all[0]!.id], at)).toBe(1)
    expect(engine.ledger.markRead("acme", [all[0]!.id], at)).toBe(0)
    expect(engine.ledger.unreadCount("acme")).toBe(all.length - 1)
    expect(engine.ledger.notificationsOf("acme", { unread: true, before: null, limit: 50 }).map((n) => n.id)).toEqual(all.slice(1).map((n) => n.id))
    expect(engine.ledger.markRead("acme", "all", at)).toBe(all.length - 1)
    expect(engine.ledger.unreadCount("acme")).toBe(0)
    stopEngine(engine)
  })
})
