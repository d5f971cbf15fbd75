/**
 * `npm run bench -- [--profile default|gpu|full|api] [--seed 1] [--accounts 1000] [--resources 10000] [--days 7] [--runs 3]`
 *
 * Without `--profile`, the GPU fleet below and then the HTTP API (scripts/benchApi.ts:
 * requests per second and p99 of a read route and of launch + terminate, beside a bare
 * Fastify route, by autocannon). `--profile full` runs the issue-3 fleet instead, `gpu` and
 * `api` one half each.
 *
 * How fast the engine runs a realistic fleet, and how that compares with the least any
 * engine must do to persist the same results. The first three measurements are taken `--runs`
 * times, interleaved (each engine run, then both floors on the rows it persisted), with the
 * median quoted and every run shown; the target's ratio is the median of each run's engine
 * time over the floor B measured right after it. The fourth is taken once:
 *
 * 1. engine: `runTimeline` on a generated fleet (sim/fleet.ts), with its ledger in a fresh
 *    SQLite file, as `npm run sim --db FILE` would run it: wall time from call to return,
 *    so it includes opening the accounts, the run, reading the facts back and the invariant
 *    checker.
 * 2. floor "ledger rows": the same ledger rows inserted into a fresh database with the
 *    engine's schema and pragmas, one prepared statement, 10,000 rows per transaction.
 * 3. floor "all persisted rows": the same, plus every notification, transition and journal
 *    entry the run wrote, and one resource snapshot upsert per journal entry that concerns a
 *    resource (the engine writes one snapshot per resource touched in a unit of work, so
 *    this is close to what it writes; see BENCHMARKS.md).
 * 4. diagnostic "one commit per instant": floor B's rows committed as the simulator commits
 *    them, one transaction per virtual instant; it explains most of the gap to floor B.
 *
 * The floors are what persisting the output costs with nothing else going on: the engine's
 * time over a floor is the price of everything else (state machines, Effect, the clock,
 * reads of balances and holds, one transaction per clock step).
 *
 * Wall time comes from `performance.now()`: the engine itself never reads the wall clock,
 * a benchmark has to.
 */
import { createHash } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import Database from "better-sqlite3"
import { Either } from "effect"
import { FULL_FLEET, generateFleet } from "../sim/fleet.js"
import { benchApi } from "./benchApi.js"
import { runTimeline, type RunPhase, type RunResult } from "../sim/runner.js"
import { decodeTimeline, type Timeline } from "../sim/timeline.js"
import { migrate } from "../src/ledger/migrations.js"
import { configureConnection } from "../src/ledger/store.js"
import * as policy from "../src/policy.js"

const usage = "usage: npm run bench -- [--profile default|gpu|full|api] [--seed N] [--accounts N] [--resources N] [--days N] [--runs N]"

/** Rows per transaction in the floors: large enough that commits do not dominate. */
const BATCH = 10_000

// ── small helpers ─────────────────────────────────────────────────────────────────────────
const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}
const int = (n: number): string => Math.round(n).toLocaleString("en-US")
const secs = (ms: number): string => `${(ms / 1000).toFixed(3)} s`
const ratio = (a: number, b: number): string => `${(a / b).toFixed(1)}×`

const timed = <T>(fn: () => T): { ms: number; value: T } => {
  const t0 = performance.now()
  const value = fn()
  return { ms: performance.now() - t0, value }
}

/** A fresh directory in the OS temp dir for this bench's databases, removed at exit. */
const workDir = mkdtempSync(path.join(os.tmpdir(), "ecolink-bench-"))
let fileSeq = 0
const freshDbPath = (label: string): string => path.join(workDir, `${label}-${++fileSeq}.sqlite`)
/** A database file with its WAL and shared-memory companions. */
const removeDb = (file: string): void => {
  for (const suffix of ["", "-wal", "-shm"]) rmSync(file + suffix, { force: true })
}

// ── what the engine persisted, read back for the floors ──────────────────────────────────
interface Persisted {
  readonly accounts: ReadonlyArray<string>
  readonly ledger: ReadonlyArray<readonly unknown[]>
  readonly notifications: ReadonlyArray<readonly unknown[]>
  readonly transitions: ReadonlyArray<readonly unknown[]>
  readonly journal: ReadonlyArray<readonly unknown[]>
  /** One upsert per resource-touching journal entry, with that resource's final snapshot. */
  readonly resourceUpserts: ReadonlyArray<readonly unknown[]>
}

/** Journal kinds that concern an account, not a resource: no snapshot is written for them. */
const ACCOUNT_ONLY_KINDS: ReadonlySet<string> = new Set(["open_account", "topup", "adjustment"])

/**
 * The rows to insert, as statement parameters in the engine's own column order. Ledger,
 * notification and transition rows come from the run's facts; the journal and the resource
 * snapshots are not in `RunResult`, so they are read from the run's database file.
 */
const persistedRows = (result: RunResult, dbFile: string): Persisted => {
  const f = result.facts
  const db = new Database(dbFile, { readonly: true })
  try {
    const journal = db.prepare(`SELECT at, kind, payload FROM journal ORDER BY seq`).all() as Array<{ at: number; kind: string; payload: string }>
    const resources = db.prepare(`SELECT id, account, kind, status, live, snapshot, created_at FROM resources`).all() as Array<{
      id: string
      account: string
      kind: string
      status: string
      live: number
      snapshot: string
      created_at: number
    }>
    const byId = new Map(resources.map((r) => [r.id, r]))
    const resourceUpserts: Array<readonly unknown[]> = []
    for (const j of journal) {
      if (ACCOUNT_ONLY_KINDS.has(j.kind)) continue
      const payload = JSON.parse(j.payload) as { id?: unknown; resource?: unknown }
      const id = typeof payload.resource === "string" ? payload.resource : typeof payload.id === "string" ? payload.id : undefined
      const r = id === undefined ? undefined : byId.get(id)
      if (r === undefined) continue
      resourceUpserts.push([r.id, r.account, r.kind, r.status, r.live, r.snapshot, j.at, j.at])
    }
    return {
      accounts: f.accounts.map((a) => a.id),
      ledger: f.rows.map((r) => [r.account, r.at, r.kind, r.amount_micros, r.balance_after_micros, r.resource, r.hold_id, r.description]),
      notifications: f.notifications.map((n) => [n.account, n.resource, n.at, n.severity, n.kind, n.text, n.data]),
      transitions: f.transitions.map((t) => [t.at, t.resource, t.from_state, t.to_state, t.reason]),
      journal: journal.map((j) => [j.at, j.kind, j.payload]),
      resourceUpserts
    }
  } finally {
    db.close()
  }
}

// ── the floors ────────────────────────────────────────────────────────────────────────────
/**
 * Opens a fresh database exactly as the simulator's ledger does (LedgerStore.open with
 * synchronous OFF, through the same `configureConnection`: WAL, foreign keys on, the same page
 * cache), with the real migrations (same tables, same indexes). The accounts are inserted
 * untimed: the ledger's foreign key needs them.
 */
const openFloorDb = (accounts: ReadonlyArray<string>): { db: Database.Database; file: string } => {
  const file = freshDbPath("floor")
  const db = new Database(file)
  configureConnection(db, { synchronous: "OFF" })
  migrate(db)
  const insert = db.prepare(`INSERT INTO accounts (id, balance_micros, created_at) VALUES (?, 0, 0)`)
  db.transaction(() => {
    for (const a of accounts) insert.run(a)
  })()
  return { db, file }
}

/** Inserts `rows` with one prepared statement, `BATCH` rows per transaction. */
const insertBatched = (db: Database.Database, sql: string, rows: ReadonlyArray<readonly unknown[]>): void => {
  const stmt = db.prepare(sql)
  const batch = db.transaction((from: number, to: number) => {
    for (let i = from; i < to; i++) stmt.run(...rows[i]!)
  })
  for (let from = 0; from < rows.length; from += BATCH) batch(from, Math.min(from + BATCH, rows.length))
}

// The engine's own statements (src/ledger/store.ts), so the floor writes the same shape.
const SQL = {
  ledger: `INSERT INTO ledger (account, at, kind, amount_micros, balance_after_micros, resource, hold_id, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  notifications: `INSERT INTO notifications (account, resource, at, severity, kind, text, data) VALUES (?, ?, ?, ?, ?, ?, ?)`,
  transitions: `INSERT INTO transitions (at, resource, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)`,
  journal: `INSERT INTO journal (at, kind, payload) VALUES (?, ?, ?)`,
  resources: `INSERT INTO resources (id, account, kind, status, live, snapshot, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(id) DO UPDATE SET status = excluded.status, live = excluded.live, snapshot = excluded.snapshot, updated_at = excluded.updated_at`
} as const

/** Times the inserts only (not opening, migrating or closing the database). */
const floorLedger = (p: Persisted): number => {
  const { db, file } = openFloorDb(p.accounts)
  try {
    return timed(() => insertBatched(db, SQL.ledger, p.ledger)).ms
  } finally {
    db.close()
    removeDb(file)
  }
}

const floorAll = (p: Persisted): number => {
  const { db, file } = openFloorDb(p.accounts)
  try {
    return timed(() => {
      insertBatched(db, SQL.ledger, p.ledger)
      insertBatched(db, SQL.notifications, p.notifications)
      insertBatched(db, SQL.transitions, p.transitions)
      insertBatched(db, SQL.journal, p.journal)
      insertBatched(db, SQL.resources, p.resourceUpserts)
    }).ms
  } finally {
    db.close()
    removeDb(file)
  }
}

/**
 * Diagnostic, not a target: the rows of floor B committed the way the simulator commits
 * them, one transaction per virtual instant (the runner wraps every clock step in a unit of
 * work). Its distance to floor B is the price of many small commits; the engine's distance
 * to it is everything that is not SQLite writes.
 */
const floorPerInstant = (p: Persisted): { ms: number; commits: number } => {
  const { db, file } = openFloorDb(p.accounts)
  try {
    const stmts = [SQL.ledger, SQL.notifications, SQL.transitions, SQL.journal, SQL.resources].map((sql) => db.prepare(sql))
    // [instant, statement, parameters] for every row, by instant (stable: table order within one).
    const all: Array<readonly [number, number, readonly unknown[]]> = []
    const add = (rows: ReadonlyArray<readonly unknown[]>, stmt: number, atIndex: number): void => {
      for (const r of rows) all.push([r[atIndex] as number, stmt, r])
    }
    add(p.ledger, 0, 1)
    add(p.notifications, 1, 2)
    add(p.transitions, 2, 0)
    add(p.journal, 3, 0)
    add(p.resourceUpserts, 4, 6)
    all.sort((a, b) => a[0] - b[0])
    const commit = db.transaction((from: number, to: number) => {
      for (let i = from; i < to; i++) stmts[all[i]![1]]!.run(...all[i]![2])
    })
    let commits = 0
    const ms = timed(() => {
      for (let from = 0; from < all.length; ) {
        let to = from + 1
        while (to < all.length && all[to]![0] === all[from]![0]) to++
        commit(from, to)
        commits++
        from = to
      }
    }).ms
    return { ms, commits }
  } finally {
    db.close()
    removeDb(file)
  }
}

// ── simulated work ────────────────────────────────────────────────────────────────────────
/**
 * Billable time of the run, from the transitions log (the same source the invariant checker
 * uses for SPEC §9.3): every stretch a resource spent in `loading` or `running`. A resource
 * still billing when the run ends counts up to the end of the run (`until`).
 */
const billableHours = (result: RunResult): { resourceHours: number; gpuHours: number } => {
  const billable: ReadonlySet<string> = new Set(policy.BILLABLE_STATES)
  const byResource = new Map<string, Array<{ at: number; to_state: string }>>()
  for (const t of result.facts.transitions) {
    const list = byResource.get(t.resource)
    if (list === undefined) byResource.set(t.resource, [t])
    else list.push(t)
  }
  let resourceMs = 0
  let gpuMs = 0
  for (const r of result.facts.resources) {
    let state = "pending"
    let since = r.context.created_at
    let ms = 0
    for (const t of byResource.get(r.id) ?? []) {
      if (billable.has(state)) ms += t.at - since
      state = t.to_state
      since = t.at
    }
    if (billable.has(state)) ms += result.facts.end_ms - since
    resourceMs += ms
    if (r.kind === "storage") continue
    gpuMs += ms * r.context.gpu_count * (r.kind === "inference_instance" ? r.context.regions.length : r.context.node_count)
  }
  return { resourceHours: resourceMs / policy.MS_PER_HOUR, gpuHours: gpuMs / policy.MS_PER_HOUR }
}

/** A fingerprint of the output, to check that every run of the same fleet gave the same one. */
const fingerprint = (result: RunResult): string => createHash("sha256").update(JSON.stringify(result.output)).digest("hex").slice(0, 16)

// ── main ──────────────────────────────────────────────────────────────────────────────────
const positiveInt = (name: string, text: string | undefined, fallback: number, min = 1): number => {
  if (text === undefined) return fallback
  const n = Number(text)
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name} must be a whole number ≥ ${min}, got ${JSON.stringify(text)}`)
  return n
}

/**
 * `default` (no flag): the GPU fleet, then the HTTP API (scripts/benchApi.ts); `gpu` the fleet
 * alone; `full` the issue-3 fleet; `api` the HTTP API alone.
 */
type Profile = "default" | "gpu" | "full" | "api"
const parseProfile = (text: string | undefined): Profile => {
  if (text === undefined) return "default"
  if (text === "default" || text === "gpu" || text === "full" || text === "api") return text
  throw new Error(`--profile must be default, gpu, full or api, got ${JSON.stringify(text)}`)
}

const main = async (): Promise<number> => {
  let opts
  try {
    const { values } = parseArgs({
      options: {
        seed: { type: "string" },
        accounts: { type: "string" },
        resources: { type: "string" },
        days: { type: "string" },
        runs: { type: "string" },
        profile: { type: "string" },
        help: { type: "boolean", short: "h", default: false }
      }
    })
    if (values.help) {
      process.stdout.write(`${usage}\n`)
      return 0
    }
    opts = {
      profile: parseProfile(values.profile),
      seed: positiveInt("seed", values.seed, 1, 0),
      accounts: positiveInt("accounts", values.accounts, 1_000),
      resources: positiveInt("resources", values.resources, 10_000, 0),
      days: positiveInt("days", values.days, 7),
      runs: positiveInt("runs", values.runs, 3)
    }
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${usage}\n`)
    return 2
  }

  const cpus = os.cpus()
  const machine = `${cpus[0]?.model.trim() ?? "unknown CPU"}, ${cpus.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, node ${process.version}, ${os.platform()} ${os.release()}`
  const out = (line = ""): void => void process.stdout.write(`${line}\n`)
  out(
    opts.profile === "api"
      ? `EcoLink bench, API profile: ${opts.runs} run(s), median quoted`
      : opts.profile === "full"
      ? `EcoLink bench, full profile: seed ${opts.seed}, ${int(FULL_FLEET.accounts!)} accounts, ${int(FULL_FLEET.resources!)} GPU resources, ${int(FULL_FLEET.inference!)} inference instances, ${int(FULL_FLEET.storage!)} drives and filesystems, ${int(FULL_FLEET.api_requests!)} API requests, ${FULL_FLEET.days} virtual days, ${opts.runs} run(s), median quoted`
      : `EcoLink bench: seed ${opts.seed}, ${int(opts.accounts)} accounts, ${int(opts.resources)} GPU resources, ${opts.days} virtual days, ${opts.runs} run(s), median quoted`
  )
  out(`machine: ${machine}`)
  if (opts.profile === "api") {
    await benchApi(opts.runs, out)
    return 0
  }

  // `--profile full` is the issue-3 fleet: every resource kind and an API stream, 30 days.
  const generated = timed(() =>
    generateFleet(opts.seed, opts.profile === "full" ? FULL_FLEET : { accounts: opts.accounts, resources: opts.resources, days: opts.days })
  )
  const decoded = timed(() => decodeTimeline(generated.value))
  if (Either.isLeft(decoded.value)) {
    process.stderr.write(`the generated fleet is not a valid timeline: ${decoded.value.left.message}\n`)
    return 1
  }
  const timeline: Timeline = decoded.value.right
  out(`fleet: ${int(timeline.events.length)} timeline events, generated in ${secs(generated.ms)}, decoded in ${secs(decoded.ms)}`)
  out()

  // 1–3. The engine, `runs` times, each on a fresh database file, and right after each run the
  // floors A and B on the rows that run persisted: each engine run is compared with floors
  // measured a few seconds later, in the same state of the machine (this VM's speed drifts by
  // more than the changes being measured). Only the last run's result is kept (for the
  // statistics and diagnostic C): a result kept from an earlier run would grow the heap the
  // later runs are timed in, and slow their garbage collection.
  const ledgerFloorMs: number[] = []
  const allFloorMs: number[] = []
  const engineMs: number[] = []
  /** Per run, the wall time of each phase: the run to its last commit, the read-back, the check and render. */
  const phaseMs: Array<Record<RunPhase, number>> = []
  const prints = new Set<string>()
  let kept: { result: RunResult; persisted: Persisted } | undefined
  for (let i = 0; i < opts.runs; i++) {
    const dbFile = freshDbPath("engine")
    let run: { ms: number; value: RunResult }
    const t0 = performance.now()
    const marks: Partial<Record<RunPhase, number>> = {}
    try {
      run = timed(() => runTimeline(timeline, { db: dbFile, onPhase: (phase) => void (marks[phase] = performance.now()) }))
    } catch (e) {
      process.stderr.write(`runTimeline threw on run ${i + 1}: ${(e as Error).stack ?? String(e)}\n`)
      return 1
    }
    engineMs.push(run.ms)
    phaseMs.push({ ran: marks.ran! - t0, read: marks.read! - marks.ran!, checked: marks.checked! - marks.read! })
    prints.add(fingerprint(run.value))
    const rows = persistedRows(run.value, dbFile)
    removeDb(dbFile)
    ledgerFloorMs.push(floorLedger(rows))
    allFloorMs.push(floorAll(rows))
    if (i === opts.runs - 1) kept = { result: run.value, persisted: rows }
    process.stderr.write(`  run ${i + 1}/${opts.runs}: engine ${secs(run.ms)}, floor A ${secs(ledgerFloorMs[i]!)}, floor B ${secs(allFloorMs[i]!)}\n`)
  }
  const { result, persisted } = kept!

  // 4. Diagnostic C, once (it takes longer than the engine on the full fleet).
  const perInstant = floorPerInstant(persisted)
  const perInstantMs = [perInstant.ms]
  const commits = perInstant.commits

  const engine = median(engineMs)
  const phase = (p: RunPhase): number[] => phaseMs.map((m) => m[p])
  const ran = median(phase("ran"))
  const floorL = median(ledgerFloorMs)
  /** Each run's engine time over the floor B measured right after it, and their median. */
  const perRunB = engineMs.map((ms, i) => ms / allFloorMs[i]!)
  const ranPerRunB = phaseMs.map((m, i) => m.ran / allFloorMs[i]!)
  const floorA = median(allFloorMs)
  const hours = billableHours(result)
  const inv = result.output.invariants
  const rejectedLaunches = result.output.rejected.filter((r) => r.do.startsWith("launch_")).length
  const launches = timeline.events.filter((e) => e.do.startsWith("launch_")).length
  const allRows = persisted.ledger.length + persisted.notifications.length + persisted.transitions.length + persisted.journal.length + persisted.resourceUpserts.length
  const each = (xs: ReadonlyArray<number>): string => xs.map((x) => (x / 1000).toFixed(3)).join(" / ")

  const table: Array<readonly [string, string, string]> = [
    ["engine: runTimeline wall time", secs(engine), each(engineMs)],
    ["  the run, to its last commit", secs(ran), each(phase("ran"))],
    ["  reading the facts back", secs(median(phase("read"))), each(phase("read"))],
    ["  invariant checker and output", secs(median(phase("checked"))), each(phase("checked"))],
    ["  engine events (journal entries)", int(result.engine_events), ""],
    ["  engine events / s", int(result.engine_events / (engine / 1000)), ""],
    ["  resource-hours simulated (loading+running)", int(hours.resourceHours), `${int(hours.gpuHours)} GPU-hours`],
    ["  resource-hours / s", int(hours.resourceHours / (engine / 1000)), `${int(hours.gpuHours / (engine / 1000))} GPU-hours / s`],
    ["  ledger rows", int(persisted.ledger.length), ""],
    ["  notifications / transitions", `${int(persisted.notifications.length)} / ${int(persisted.transitions.length)}`, ""],
    ["  rejected inputs (launches refused)", `${int(result.output.rejected.length)} (${int(rejectedLaunches)} of ${int(launches)})`, ""],
    ["  invariants", inv.ok ? "ok" : "VIOLATED", `${int(inv.violations.length)} violation(s)`],
    ["  same output every run", prints.size === 1 ? "yes" : `NO (${prints.size} different)`, ""],
    ["floor A: ledger rows only", secs(floorL), each(ledgerFloorMs)],
    ["  rows inserted", int(persisted.ledger.length), ""],
    ["  engine ÷ floor A", ratio(engine, floorL), ""],
    ["floor B: all persisted rows", secs(floorA), each(allFloorMs)],
    [
      "  rows inserted",
      int(allRows),
      `ledger ${int(persisted.ledger.length)}, notif ${int(persisted.notifications.length)}, trans ${int(persisted.transitions.length)}, journal ${int(persisted.journal.length)}, snapshots ${int(persisted.resourceUpserts.length)}`
    ],
    ["  engine ÷ floor B", ratio(engine, floorA), "the medians' ratio"],
    ["  engine ÷ floor B, run by run", `${median(perRunB).toFixed(1)}×`, perRunB.map((r) => `${r.toFixed(1)}×`).join(" / ")],
    ["  the run alone ÷ floor B", ratio(ran, floorA), `run by run ${ranPerRunB.map((r) => `${r.toFixed(1)}×`).join(" / ")}`],
    ["diagnostic C: floor B, 1 commit per instant", secs(median(perInstantMs)), `once; ${int(commits)} commits`],
    ["  engine ÷ C", ratio(engine, median(perInstantMs)), ""]
  ]
  const w0 = Math.max(...table.map((r) => r[0].length))
  const w1 = Math.max(...table.map((r) => r[1].length))
  out(`${"measure".padEnd(w0)}  ${"median".padStart(w1)}  runs (s) / detail`)
  out(`${"-".repeat(w0)}  ${"-".repeat(w1)}  ${"-".repeat(20)}`)
  for (const [a, b, c] of table) out(`${a.padEnd(w0)}  ${b.padStart(w1)}  ${c}`.trimEnd())
  out()
  // The issues' targets: the GPU fleet under 10 s, the full fleet under 20 s, on this machine.
  const target_s = opts.profile === "full" ? 20 : 10
  out(`target: fleet run under ${target_s} s          ${engine < target_s * 1_000 ? "met" : "NOT met"} (${secs(engine)})`)
  out(`target: within 3× of floor B (all)    ${median(perRunB) <= 3 ? "met" : "NOT met"} (${median(perRunB).toFixed(1)}×, the median of each run against its own floor)`)
  out(`target: within 3× of floor A (ledger) ${engine <= 3 * floorL ? "met" : "NOT met"} (${ratio(engine, floorL)})`)
  if (!inv.ok) {
    out()
    out(`invariant violations (first 10 of ${inv.violations.length}):`)
    for (const v of inv.violations.slice(0, 10)) {
      out(`  #${v.invariant} ${v.name} account=${v.account ?? "-"} resource=${v.resource ?? "-"} at=${v.at ?? "-"}: ${v.message}`)
    }
  }
  if (opts.profile === "default") {
    out()
    await benchApi(opts.runs, out)
  }
  return 0
}

try {
  process.exitCode = await main()
} finally {
  rmSync(workDir, { recursive: true, force: true })
}
