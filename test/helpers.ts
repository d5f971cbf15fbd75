/** Shared builders for tests that run timelines through the whole engine. */
import Database from "better-sqlite3"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Either } from "effect"
import { MIGRATIONS, registerMigrationFunctions } from "../src/ledger/migrations.js"
import { runTimeline, type RunOptions, type RunResult } from "../sim/runner.js"
import { decodeTimeline, type Timeline } from "../sim/timeline.js"

export const START = "2026-03-01T00:00:00Z"

/** A timeline file (as JSON would hold it) with one region and one GPU type by default. */
export const timelineFile = (events: ReadonlyArray<Record<string, unknown>>, overrides: Record<string, unknown> = {}): Record<string, unknown> => ({
  start: START,
  seed: 7,
  until: "P1D",
  catalog: {
    gpus: { H100: { hourly_rate: "1.60" } },
    regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
  },
  accounts: { acme: { balance: "100.00" } },
  events,
  ...overrides
})

export const decode = (file: unknown): Timeline => {
  const decoded = decodeTimeline(file)
  if (Either.isLeft(decoded)) throw decoded.left
  return decoded.right
}

/** Runs a timeline file, every watchdog tick's incremental reconcile checked against a full scan. */
export const run = (file: unknown, options?: RunOptions): RunResult => runTimeline(decode(file), { auditReconcile: true, ...options })

/** `PT…` offsets as ISO instants after START, for exact assertions. */
/**
 * Lets the event loop turn once. A property test runs thousands of simulations; run as one
 * synchronous call it blocks the vitest worker past its 60 s RPC timeout
 * ("Timeout calling onTaskUpdate", and the run can hang), so each run awaits this first.
 */
export const breathe = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

export const at = (offset_ms: number): string => new Date(Date.parse(START) + offset_ms).toISOString()

export const MIN = 60_000
export const HOUR = 3_600_000

export const launch = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  at: "PT0S",
  do: "launch_gpu_instance",
  account: "acme",
  id: "gi-1",
  gpu: "H100",
  gpu_count: 1,
  region: "us-east",
  estimated_duration_hours: 2,
  ...extra
})

/** A fresh SQLite file path in its own temporary directory. */
export const tmpDb = (): string => join(mkdtempSync(join(tmpdir(), "ecolink-")), "ledger.sqlite")

/**
 * The crash drill's timeline (test/restart.test.ts, test/k8s/restart.test.ts): instances
 * queued for capacity, loading, extended, preempted and resumed, terminated, failed, and a
 * top-up, so that `DRILL_RESTARTS` cut through every state.
 */
export const DRILL_TIMELINE = timelineFile(
  [
    launch({ gpu_count: 2 }),
    launch({ id: "gi-2", estimated_duration_hours: 3 }),
    launch({ at: "PT5M", id: "queued", gpu_count: 8 }),
    launch({ at: "PT1M", id: "gi-3" }),
    { at: "PT20M", do: "extend", id: "gi-1", hours: 2 },
    { at: "PT40M", do: "preempt", id: "gi-2" },
    { at: "PT55M", do: "resume", id: "gi-2" },
    { at: "PT1H5M", do: "terminate", id: "gi-3" },
    { at: "PT1H10M", do: "pod_fail", id: "gi-2" },
    { at: "PT2H", do: "top_up", account: "acme", amount: "25.00" }
  ],
  {
    until: "PT8H",
    catalog: {
      gpus: { H100: { hourly_rate: "1.60" } },
      regions: { "us-east": { nodes: 1, gpus_per_node: 8, image_pull: "PT1M", container_start: "PT30S", pod_stop: "PT20S" } }
    }
  }
)

/**
 * Awkward instants to drop the engine at: while pending (queued for capacity), loading,
 * preempted, terminating with a pod still stopping, between warnings.
 */
export const DRILL_RESTARTS: ReadonlyArray<number> = [30_000, 61_000, 16 * MIN, 45 * MIN, 65 * MIN, 65 * MIN + 10_000, 90 * MIN, 2 * HOUR + 31 * MIN, 3 * HOUR].map(
  (d) => Date.parse(START) + d
)

/**
 * A database file as an older engine left it: `MIGRATIONS` up to `version` applied and recorded,
 * open for the test to fill before it closes it and lets `migrate` upgrade it.
 */
export const databaseAtVersion = (file: string, version: number): Database.Database => {
  const old = new Database(file)
  old.exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL) STRICT`)
  registerMigrationFunctions(old)
  for (const m of MIGRATIONS.filter((x) => x.version <= version)) {
    old.exec(m.sql)
    old.prepare(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`).run(m.version, m.name)
  }
  return old
}
