/**
 * An operator upgrades the control plane while resources are live: the new engine starts on the
 * SQLite file an older one wrote (docs/ENGINE.md, "Upgrades"). The file's schema is migrated, and
 * every stored actor snapshot, written with the contexts the older machines had, is brought to
 * the current ones when read (src/snapshots.ts), so the resources run on and every hold settles
 * once, to the micro-dollar.
 *
 * The fixtures (test/fixtures/upgrade/, how they were made in its README.md) are databases
 * written by three earlier versions, as SQL: each ran test/fixtures/upgrade/timeline.json (its
 * GPU part for f1f27d5) with `npm run sim -- <timeline> --db <file>` until P1DT2H, when GPU
 * instances run before their deadline (one extended, one preempted), two inference instances run
 * mid-cycle (one on a partial hold), and storage is attached, idle or suspended.
 */
import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import Database from "better-sqlite3"
import { Either } from "effect"
import { createActor } from "xstate"
import { describe, expect, it } from "vitest"
import { gpuInstanceMachine } from "../machines/gpuInstance.js"
import { inferenceInstanceMachine } from "../machines/inferenceInstance.js"
import { storageMachine } from "../machines/storage.js"
import { openEngine } from "../src/api/engine.js"
import { VirtualClock } from "../src/clock.js"
import { MIGRATIONS } from "../src/ledger/migrations.js"
import {
  CYCLE_HISTORY,
  GPU_CONTEXT_HISTORY,
  INFERENCE_CONTEXT_HISTORY,
  readSnapshot,
  REPLICA_BILLING_HISTORY,
  REPLICA_CONTEXT_HISTORY,
  SNAPSHOT_VERSION,
  SnapshotUnreadable,
  STORAGE_CONTEXT_HISTORY,
  type ContextHistory
} from "../src/snapshots.js"
import { SimCluster } from "../sim/cluster.js"
import { parseTimeline } from "../sim/timeline.js"
import { tmpDb } from "./helpers.js"

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "fixtures", "upgrade")
/** Where every fixture's run stopped (`until` P1DT2H). */
const CUT = Date.parse("2026-03-02T02:00:00Z")

interface Row {
  readonly at: string
  readonly account: string
  readonly kind: string
  readonly amount_micros: number
  readonly balance_after_micros: number
  readonly resource: string | null
  readonly hold_id: string | null
}

/**
 * Builds the old database from its SQL, starts the current engine on it as `npm start` would
 * (a new process: a new clock at the cut and a cluster that takes up the pods the snapshots say
 * were placed), and runs on: lowco tops up at 02:30 (its suspended drive comes back), gi-pre's
 * capacity frees at 03:00 and ii-1 is deleted then, and everything else runs to its deadline or,
 * for ii-thin's partial hold, until it is consumed.
 */
const upgradeAndRun = (fixture: string, timelineFile: string) => {
  const db = tmpDb()
  const old = new Database(db)
  old.exec(readFileSync(join(FIXTURES, fixture), "utf8"))
  old.close()
  const parsed = parseTimeline(readFileSync(join(FIXTURES, timelineFile), "utf8"))
  if (Either.isLeft(parsed)) throw parsed.left
  const timeline = parsed.right
  const clock = new VirtualClock(CUT)
  const cluster = new SimCluster(clock, timeline.regions, timeline.seed)
  const opened = openEngine({
    db,
    clock,
    cluster,
    gpu_rates: timeline.gpu_rates,
    storage_rates: timeline.storage_rates,
    model_prices: timeline.model_prices,
    restoreWorkloads: (placed) => cluster.restore(placed)
  })
  const { sup, ledger } = opened.engine
  const lastRowBefore = (ledger.db.prepare(`SELECT max(id) AS m FROM ledger`).get() as { m: number }).m
  try {
    clock.advanceTo(Date.parse("2026-03-02T02:30:00Z"))
    expect(Either.isRight(sup.sync.credit("lowco", "topup", 10_000_000n, "Top-up"))).toBe(true)
    clock.advanceTo(Date.parse("2026-03-02T03:00:00Z"))
    expect(cluster.resume("gi-pre").ok).toBe(true)
    if (ledger.resource("ii-1") !== undefined) expect(Either.isRight(sup.sync.terminate("ii-1"))).toBe(true)
    clock.advanceTo(Date.parse("2026-03-02T12:00:00Z"))
    const q = <T>(sql: string, ...args: unknown[]): T[] => ledger.db.prepare(sql).all(...args) as T[]
    return {
      schema: (ledger.db.prepare(`SELECT max(version) AS v FROM schema_migrations`).get() as { v: number }).v,
      rows: q<Omit<Row, "at"> & { at: number }>(`SELECT at, account, kind, amount_micros, balance_after_micros, resource, hold_id FROM ledger WHERE id > ? ORDER BY id`, lastRowBefore).map(
        (r): Row => ({ ...r, at: new Date(r.at).toISOString() })
      ),
      holds: Object.fromEntries(
        q<{ id: string; status: string; held_micros: number; consumed_micros: number; refunded_micros: number; overage_micros: number }>(`SELECT * FROM holds ORDER BY id`).map((h) => [
          h.id,
          [h.status, h.held_micros, h.consumed_micros, h.refunded_micros, h.overage_micros]
        ])
      ),
      /** Hold ids with more than one refund, or more than one overage: a hold settled twice. */
      settledTwice: q<{ hold_id: string }>(`SELECT hold_id FROM ledger WHERE kind = 'refund' AND hold_id IS NOT NULL GROUP BY hold_id HAVING count(*) > 1`),
      resources: Object.fromEntries(q<{ id: string; status: string; live: number; snapshot_version: number }>(`SELECT id, status, live, snapshot_version FROM resources ORDER BY id`).map((r) => [r.id, [r.status, r.live, r.snapshot_version]])),
      transitions: q<{ at: number; resource: string; from_state: string; to_state: string; reason: string | null }>(`SELECT at, resource, from_state, to_state, reason FROM transitions WHERE at > ? ORDER BY id`, CUT).map(
        (t) => `${new Date(t.at).toISOString().slice(11, 19)} ${t.resource} ${t.from_state} → ${t.to_state}${t.reason === null ? "" : ` ${t.reason}`}`
      )
    }
  } finally {
    opened.close()
  }
}

const row = (at: string, account: string, kind: string, amount_micros: number, balance_after_micros: number, resource: string | null, hold_id: string | null = null): Row => ({
  at: `2026-03-02T${at}.000Z`,
  account,
  kind,
  amount_micros,
  balance_after_micros,
  resource,
  hold_id
})

/**
 * The GPU instances' holds, the same whichever version placed them: gi-run 5 h ($10, 4 h + a 1 h
 * extension) and gi-low 4 h ($8) run from 00:01 to their deadlines and consume all of it; gi-pre
 * (2 GPUs, $24) ran 59 min before its preemption and 3 h 0 min 30 s after capacity freed at
 * 03:00:30, to its deadline at 06:01: 3 h 59 min 30 s × $4/h = $15.966667, $8.033333 back.
 */
const GPU_HOLDS = {
  "hold:gi-low": ["settled", 8_000_000, 8_000_000, 0, 0],
  "hold:gi-pre": ["settled", 24_000_000, 15_966_667, 8_033_333, 0],
  "hold:gi-run": ["settled", 10_000_000, 10_000_000, 0, 0]
}

/**
 * The inference holds: ii-1's first cycle ran both replicas from 20:01 to its deletion at 03:00
 * (6 h 59 min × 2 × $2/h = $27.933333 of $96); ii-thin's partial hold of cycle 2 ($24.066667,
 * 6 h 1 min of both replicas) is consumed at 06:01, and with $0 left it stops (credit_depleted).
 */
const INFERENCE_HOLDS = {
  "hold:ii-1:1": ["settled", 96_000_000, 27_933_333, 68_066_667, 0],
  "hold:ii-thin:1": ["settled", 96_000_000, 95_933_333, 66_667, 0],
  "hold:ii-thin:2": ["settled", 24_066_667, 24_066_667, 0, 0]
}

const ALL_DONE = {
  "dr-1": ["available", 1, SNAPSHOT_VERSION],
  "dr-low": ["available", 1, SNAPSHOT_VERSION],
  "fs-1": ["available", 1, SNAPSHOT_VERSION],
  "gi-low": ["terminated", 0, SNAPSHOT_VERSION],
  "gi-pre": ["terminated", 0, SNAPSHOT_VERSION],
  "gi-run": ["terminated", 0, SNAPSHOT_VERSION],
  "ii-1": ["terminated", 0, SNAPSHOT_VERSION],
  "ii-thin": ["terminated", 0, SNAPSHOT_VERSION]
}

describe("a newer engine started on a database an older one ran, resources live", () => {
  it("f1f27d5 (the first version, GPU instances only, schema 1): every hold settles once, to its deadline", () => {
    // Proves the oldest GPU snapshots (no drive, no filesystems, no settle_at_deleted) restore
    // and run on: warnings, resume, deadlines, settlements.
    const r = upgradeAndRun("f1f27d5.sql", "timeline-gpu.json")
    expect(r.schema).toBe(MIGRATIONS[MIGRATIONS.length - 1]!.version)
    expect(r.rows).toEqual([row("02:30:00", "lowco", "topup", 10_000_000, 12_000_000, null), row("06:01:00", "acme", "refund", 8_033_333, 474_033_333, "gi-pre", "hold:gi-pre")])
    expect(r.holds).toEqual(GPU_HOLDS)
    expect(r.settledTwice).toEqual([])
    expect(r.resources).toEqual({ "gi-low": ["terminated", 0, SNAPSHOT_VERSION], "gi-pre": ["terminated", 0, SNAPSHOT_VERSION], "gi-run": ["terminated", 0, SNAPSHOT_VERSION] })
    expect(r.transitions).toEqual([
      "03:00:30 gi-pre preempted → running",
      "04:01:00 gi-low running → terminating duration_expired",
      "04:01:00 gi-low terminating → terminated duration_expired",
      "05:01:00 gi-run running → terminating duration_expired",
      "05:01:00 gi-run terminating → terminated duration_expired",
      "06:01:00 gi-pre running → terminating duration_expired",
      "06:01:00 gi-pre terminating → terminated duration_expired"
    ])
  })

  it("2a1c28a (first storage, schema 3): suspended storage that forgot its instances comes back available, charged its day once", () => {
    // Proves the upgrade of a storage snapshot written before `suspended_from` (65ef492): that
    // version's suspension forgot the instances and its restore made the drive `available`,
    // which the filled-in empty list does now. Without the upgrade, the top-up's restore read
    // `suspended_from.length` of a snapshot without it and threw (the unit of work failed, the
    // supervisor stopped). Also: inference snapshots before `filesystem`, a partial cycle.
    const r = upgradeAndRun("2a1c28a.sql", "timeline.json")
    expect(r.schema).toBe(MIGRATIONS[MIGRATIONS.length - 1]!.version)
    expect(r.rows).toEqual([
      row("02:30:00", "lowco", "topup", 10_000_000, 12_000_000, null),
      row("02:30:00", "lowco", "storage_billing", -5_000_000, 7_000_000, "dr-low"),
      row("03:00:00", "acme", "refund", 68_066_667, 432_066_667, "ii-1", "hold:ii-1:1"),
      row("06:01:00", "acme", "refund", 8_033_333, 440_100_000, "gi-pre", "hold:gi-pre")
    ])
    expect(r.holds).toEqual({ ...GPU_HOLDS, ...INFERENCE_HOLDS })
    expect(r.settledTwice).toEqual([])
    expect(r.resources).toEqual(ALL_DONE)
    expect(r.transitions).toEqual([
      "02:30:00 dr-low suspended → available",
      "03:00:00 ii-1 running → terminating user_requested",
      "03:00:00 ii-1@eu-west running → deleted",
      "03:00:00 ii-1@us-east running → deleted",
      "03:00:00 ii-1 terminating → terminated user_requested",
      "03:00:30 gi-pre preempted → running",
      "04:01:00 gi-low running → terminating duration_expired",
      "04:01:00 gi-low terminating → terminated duration_expired",
      "05:01:00 gi-run running → terminating duration_expired",
      "05:01:00 dr-1 in_use → available",
      "05:01:00 fs-1 in_use → available",
      "05:01:00 gi-run terminating → terminated duration_expired",
      "06:01:00 gi-pre running → terminating duration_expired",
      "06:01:00 gi-pre terminating → terminated duration_expired",
      "06:01:00 ii-thin running → terminating credit_depleted",
      "06:01:00 ii-thin@eu-west running → deleted",
      "06:01:00 ii-thin@us-east running → deleted",
      "06:01:00 ii-thin terminating → terminated credit_depleted"
    ])
  })

  it("4a05506 (the middle of the history, schema 7): suspended storage that remembers its instance goes back to it", () => {
    // Proves a snapshot with `suspended_from` but before `settle_at_deleted` (d8b62ac, 375b0c1)
    // runs as it was: dr-low reattaches to gi-low at the top-up and is freed at gi-low's deadline.
    const r = upgradeAndRun("4a05506.sql", "timeline.json")
    expect(r.schema).toBe(MIGRATIONS[MIGRATIONS.length - 1]!.version)
    expect(r.rows).toEqual([
      row("02:30:00", "lowco", "topup", 10_000_000, 12_000_000, null),
      row("02:30:00", "lowco", "storage_billing", -5_000_000, 7_000_000, "dr-low"),
      row("03:00:00", "acme", "refund", 68_066_667, 432_066_667, "ii-1", "hold:ii-1:1"),
      row("06:01:00", "acme", "refund", 8_033_333, 440_100_000, "gi-pre", "hold:gi-pre")
    ])
    expect(r.holds).toEqual({ ...GPU_HOLDS, ...INFERENCE_HOLDS })
    expect(r.settledTwice).toEqual([])
    expect(r.resources).toEqual(ALL_DONE)
    expect(r.transitions.filter((t) => t.includes("dr-low"))).toEqual(["02:30:00 dr-low suspended → in_use", "04:01:00 dr-low in_use → available"])
  })
})

describe("the snapshot upgrade step (src/snapshots.ts)", () => {
  const record = (kind: string, snapshot: object, snapshot_version = 0) => ({ id: "r-1", kind, snapshot: JSON.stringify(snapshot), snapshot_version })
  const gpuContextOfFirstVersion = {
    id: "r-1",
    account: "acme",
    kind: "gpu_instance",
    gpu: "H100",
    gpu_count: 1,
    node_count: 1,
    region: "us-east",
    image: null,
    hourly_rate_micros: "2000000",
    estimated_duration_hours: 4,
    created_at: 0,
    hours_committed: 4,
    started_at: null,
    deadline_at: null,
    warnings_pending: [],
    billable_ms: 0,
    billing_since: null,
    termination_reason: null,
    stop_requested_at: null
  }

  it("fills each field added since with what the versions before meant, and leaves an optional one absent", () => {
    // Proves the defaults: no storage on an instance from before storage, no model filesystem,
    // nothing to reattach on storage suspended before it remembered; no deferred settlement.
    const gpu = readSnapshot(record("gpu_instance", { status: "active", value: { active: "pending" }, context: gpuContextOfFirstVersion }))
    expect(gpu.kind === "gpu" && [gpu.snapshot.context.drive, gpu.snapshot.context.filesystems, "settle_at_deleted" in gpu.snapshot.context]).toEqual([null, [], false])
    const storage = readSnapshot(
      record("cloud_drive", { status: "active", value: "suspended", context: { id: "r-1", account: "a", kind: "cloud_drive", size_gb: 1, region: "us-east", daily_rate_micros: "1", created_at: 0, attached_to: [] } })
    )
    expect(storage.kind === "storage" && storage.snapshot.context.suspended_from).toEqual([])
  })

  it("refuses, naming the resource and the field, a snapshot missing a field every version writes", () => {
    // Proves a snapshot this engine cannot read stops the start loudly instead of running with undefined.
    const { billing_since: _, ...broken } = gpuContextOfFirstVersion
    expect(() => readSnapshot(record("gpu_instance", { status: "active", value: "active", context: broken }))).toThrow(SnapshotUnreadable)
    expect(() => readSnapshot(record("gpu_instance", { status: "active", value: "active", context: broken }))).toThrow("stored snapshot of r-1 cannot be restored: context has no billing_since, which every version writes")
  })

  it("refuses a snapshot written by a newer engine (a rollback onto its file)", () => {
    // Proves a downgrade does not run a context whose newer fields it cannot know the meaning of.
    expect(() => readSnapshot(record("gpu_instance", { context: gpuContextOfFirstVersion }, SNAPSHOT_VERSION + 1))).toThrow(`snapshot format ${SNAPSHOT_VERSION + 1}; this engine knows up to ${SNAPSHOT_VERSION}`)
  })

  it("refuses the start on a file where a newer engine wrote a finished resource's row, not a later read of it (a GET that stopped the process)", () => {
    // A rollback after the newer engine finished gi-low (its last save in format N+1) and left
    // the live rows as they were: the start restores only live rows, so before, it went on, and
    // the first view of gi-low (GET /resources, a list of lowco's) threw in the request.
    const db = tmpDb()
    const old = new Database(db)
    old.exec(readFileSync(join(FIXTURES, "4a05506.sql"), "utf8"))
    old.close()
    const parsed = parseTimeline(readFileSync(join(FIXTURES, "timeline.json"), "utf8"))
    if (Either.isLeft(parsed)) throw parsed.left
    const timeline = parsed.right
    const openAt = (at: number) => {
      const clock = new VirtualClock(at)
      const cluster = new SimCluster(clock, timeline.regions, timeline.seed)
      return openEngine({
        db,
        clock,
        cluster,
        gpu_rates: timeline.gpu_rates,
        storage_rates: timeline.storage_rates,
        model_prices: timeline.model_prices,
        restoreWorkloads: (placed) => cluster.restore(placed)
      })
    }
    openAt(CUT).close()
    const patch = new Database(db)
    patch.prepare(`UPDATE resources SET live = 0, status = 'terminated', snapshot_version = ? WHERE id = 'gi-low'`).run(SNAPSHOT_VERSION + 1)
    patch.close()
    expect(() => openAt(CUT + 60_000)).toThrow(
      `stored snapshot of gi-low cannot be restored: it was written by a newer engine (snapshot format ${SNAPSHOT_VERSION + 1}; this engine knows up to ${SNAPSHOT_VERSION}); run that version or a later one`
    )
  })

  /**
   * The rule for the future (docs/ENGINE.md, "Upgrades"): the histories are typed against the
   * context types, so a new field without an entry does not compile; these lists, the contexts
   * of each machine's first version as git has them, keep a new field from being marked `first`.
   */
  const FIRST_VERSION_FIELDS: ReadonlyArray<[string, ContextHistory<never> | object, ReadonlyArray<string>]> = [
    ["gpuInstance f1f27d5", GPU_CONTEXT_HISTORY, Object.keys(gpuContextOfFirstVersion)],
    [
      "inferenceInstance ca4b45c",
      INFERENCE_CONTEXT_HISTORY,
      ["id", "account", "model", "source", "gpu", "gpu_count", "regions", "hourly_rate_micros", "first_hold_micros", "created_at", "replicas", "cycle", "termination_reason", "stop_requested_at"]
    ],
    ["ReplicaBilling ca4b45c", REPLICA_BILLING_HISTORY, ["status", "billing_since", "cycle_billable_ms"]],
    ["Cycle ca4b45c", CYCLE_HISTORY, ["number", "started_at", "hold_micros", "ends_at", "partial"]],
    ["inferenceReplica ca4b45c", REPLICA_CONTEXT_HISTORY, ["region"]],
    ["storage 2a1c28a", STORAGE_CONTEXT_HISTORY, ["id", "account", "kind", "size_gb", "region", "daily_rate_micros", "created_at", "attached_to"]]
  ]

  it.each(FIRST_VERSION_FIELDS)("%s: the fields marked `first` are exactly those of the machine's first version", (_name, history, fields) => {
    const marked = Object.entries(history).filter(([, h]) => (h as { since: string }).since === "first").map(([f]) => f)
    expect(marked.sort()).toEqual([...fields].sort())
  })

  it("every field a machine's context starts with today has a history", () => {
    // Proves the histories also cover what the type might not say (a field set in a context
    // initializer only): each current context's fields, at launch, are listed.
    const gpu = createActor(gpuInstanceMachine, {
      input: { id: "g", account: "a", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", image: null, hourly_rate_micros: "1", estimated_duration_hours: 1, created_at: 0, drive: null, filesystems: [] }
    }).getSnapshot()
    const inference = createActor(inferenceInstanceMachine, {
      input: { id: "i", account: "a", model: "m", source: "huggingface", gpu: "H100", gpu_count: 1, regions: ["us-east"], hourly_rate_micros: "1", first_hold_micros: "24", created_at: 0, filesystem: null }
    }).getSnapshot()
    const storage = createActor(storageMachine, { input: { id: "s", account: "a", kind: "cloud_drive", size_gb: 1, region: "us-east", daily_rate_micros: "1", created_at: 0 } }).getSnapshot()
    const missing = (ctx: object, history: object) => Object.keys(ctx).filter((f) => !(f in history))
    expect(missing(gpu.context, GPU_CONTEXT_HISTORY)).toEqual([])
    expect(missing(inference.context, INFERENCE_CONTEXT_HISTORY)).toEqual([])
    expect(missing(inference.context.cycle, CYCLE_HISTORY)).toEqual([])
    expect(missing(inference.context.replicas["us-east"]!, REPLICA_BILLING_HISTORY)).toEqual([])
    expect(missing(storage.context, STORAGE_CONTEXT_HISTORY)).toEqual([])
  })
})
