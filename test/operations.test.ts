/**
 * What an operator relies on when the control plane runs on a SQLite file: one process
 * writes it at a time (newest wins), its clock never writes before what the file holds, its
 * commits are durable, and the file is its owner's alone.
 */
import Database from "better-sqlite3"
import { chmodSync, statSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { afterEach, describe, expect, it, vi } from "vitest"
import { openEngine, type OpenedEngine } from "../src/api/engine.js"
import { ConfigError, parseConfig, serverLogger, startServer, type RunningServer } from "../src/api/server.js"
import { LiveClock } from "../src/clock.js"
import { LedgerStore } from "../src/ledger/store.js"
import { dollars } from "../src/money.js"
import { SimCluster } from "../sim/cluster.js"
import { MIN, tmpDb } from "./helpers.js"

const OPERATOR_KEY = "op_test_0123456789abcdefghijklmnopqrstuvwxyz"
const REGION = { name: "us-east", nodes: 2, gpus_per_node: 8, image_pull_ms: 0, image_pull_jitter_ms: 0, container_start_ms: 0, pod_stop_ms: 0, pull_failure_probability: 0, preemption_mean_interval_ms: 0, preemption_duration_ms: 0 }

const servers: RunningServer[] = []
const engines: OpenedEngine[] = []
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close()
  for (const e of engines.splice(0)) e.close()
})

/** The engine on `db` in a new simulated world (one H100 region) on a live `clock`, closed after the test. */
const liveEngine = (db: string, clock: LiveClock): OpenedEngine => {
  const opened = openEngine({ db, clock, cluster: new SimCluster(clock, [REGION], 7), gpu_rates: new Map([["H100", dollars("1.60")]]), ledger_options: { claim_leader_term: true } })
  engines.push(opened)
  return opened
}

const configFor = (db: string, env: Record<string, string> = {}) => parseConfig(["--db", db, "--port", "0", "--log-level", "silent", "--operator-key", OPERATOR_KEY, "--rate-limit", "0"], env)

/** The server's error lines (its one logger, src/api/server.ts `serverLogger`), as their messages. */
const start = async (db: string, lines: string[]): Promise<RunningServer> => {
  const logger = serverLogger({ log_level: "error" }, { write: (line: string) => void lines.push((JSON.parse(line) as { msg: string }).msg) })
  const server = await startServer(configFor(db), { logger })
  servers.push(server)
  return server
}

const call = async (server: RunningServer, method: string, path: string, key: string, body?: unknown) => {
  const r = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  return { status: r.status, body: (await r.json()) as Record<string, any> }
}

describe("another writer holding the database", () => {
  it("gets a write a 503 database_busy with retry-after, changes nothing, and the server serves on once the lock is gone", async () => {
    // Found by review: BEGIN refused with SQLITE_BUSY (another connection held the write lock
    // past the 2 s busy timeout) was a defect: a 500, and the supervisor stopped for good.
    const db = tmpDb()
    const lines: string[] = []
    const server = await start(db, lines)
    const demoKey = server.demo!.key
    const outside = new Database(db)
    outside.exec("BEGIN IMMEDIATE")
    const r = await fetch(`${server.url}/operator/accounts/demo/adjustments`, {
      method: "POST",
      headers: { authorization: `Bearer ${OPERATOR_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ amount: "10.00", description: "while busy" })
    })
    outside.exec("COMMIT")
    outside.close()
    expect([r.status, r.headers.get("retry-after"), await r.json()]).toEqual([503, "1", { error: "database_busy", message: "the database is busy with another writer; retry" }])
    expect((await call(server, "GET", "/billing/balance", demoKey)).body).toEqual({ balance: "100.00" })
    expect((await call(server, "POST", "/operator/accounts/demo/adjustments", OPERATOR_KEY, { amount: "10.00", description: "after" })).status).toBe(201)
    expect((await call(server, "GET", "/billing/balance", demoKey)).body).toEqual({ balance: "110.00" })
    expect(lines).toEqual([])
  })
})

describe("two processes on one SQLite file", () => {
  it("the newest wins: the first answers 503 not_leader to reads and writes, says why once, and the ledger stays conserved", async () => {
    // Proves the review's finding fixed (two `npm start` on one file both credited $10 from
    // $100 and both wrote balance_after 110): A starts, B starts on the same file, A's read
    // and write are refused before either touches A's cached balance, B credits, and the
    // rows add up to the balance.
    const db = tmpDb()
    const linesA: string[] = []
    const linesB: string[] = []
    const a = await start(db, linesA)
    const b = await start(db, linesB)
    const demoKey = a.demo!.key

    const staleRead = await call(a, "GET", "/billing/balance", demoKey)
    expect([staleRead.status, staleRead.body.error]).toEqual([503, "not_leader"])
    const staleWrite = await call(a, "POST", "/operator/accounts/demo/adjustments", OPERATOR_KEY, { amount: "10.00", description: "by A" })
    expect([staleWrite.status, staleWrite.body.error]).toEqual([503, "not_leader"])
    expect(linesA).toEqual([`another process opened ${db}; this one stops serving (every request answers 503 not_leader)`])

    expect((await call(b, "POST", "/operator/accounts/demo/adjustments", OPERATOR_KEY, { amount: "10.00", description: "by B" })).status).toBe(201)
    expect((await call(b, "GET", "/billing/balance", demoKey)).body).toEqual({ balance: "110.00" })
    const rows = (await call(b, "GET", "/billing/transactions", demoKey)).body.data.reverse() as Array<{ amount: string; balance_after: string; description: string }>
    expect(rows.map((r) => [r.amount, r.balance_after, r.description])).toEqual([
      ["100.00", "100.00", "Demo credit"],
      ["10.00", "110.00", "by B"]
    ])
    expect(linesB).toEqual([])
  })

  it("a superseded process's own timers write nothing and say it once", async () => {
    // Proves the background path (a unit of work started by a timer, not a request) fences too:
    // A's next write after B opened is refused by the term, A stops, and the line is said once.
    const db = tmpDb()
    const lines: string[] = []
    const a = await start(db, lines)
    const b = LedgerStore.open(db, { claim_leader_term: true })
    try {
      expect(() => a.opened!.engine.sup.unitOfWork(() => a.opened!.engine.ledger.journal(a.opened!.engine.clock.now(), "probe", {}))).toThrow(/lost its leader lease or term/)
      expect(a.opened!.engine.sup.fenced).toBe(true)
      expect(lines).toHaveLength(1)
      expect(b.journalEntries().filter((e) => e.kind === "probe")).toEqual([])
    } finally {
      b.close()
    }
  })
})

describe("a live clock behind the database", () => {
  it("says so in the server's log, a warning like the process's others (not plain text on stderr)", async () => {
    // Proves the server hands its logger to its clock: the database is first written an hour
    // ahead of the wall clock (as a fast-clock demo leaves it), then served at the real time.
    const db = tmpDb()
    const now = Date.now()
    const spy = vi.spyOn(Date, "now").mockReturnValue(now + 60 * MIN)
    try {
      const ahead = await startServer(configFor(db), { logger: serverLogger({ log_level: "silent" }) })
      await ahead.close()
    } finally {
      spy.mockRestore()
    }
    const lines: Array<{ level: number; msg: string }> = []
    const logger = serverLogger({ log_level: "warn" }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) })
    const server = await startServer(configFor(db), { logger })
    servers.push(server)
    expect((await call(server, "GET", "/billing/balance", server.demo!.key)).status).toBe(200)
    expect(lines.filter((l) => l.msg.startsWith("live clock:")).map((l) => l.level)).toEqual([40])
  })


  it("a fast clock restarted runs on from where it stopped, not from the last row written", () => {
    // Proves the review's finding fixed (an operator's restart of a --clock-speed 600 demo): the
    // clock got to 09:07 with the last row written at 08:02; restarted, it began at 08:02, and
    // an instance `GET` had shown billed for an hour was billed 34 s. The mark at close is the
    // clock's instant, and the fast clock runs on from it.
    const db = tmpDb()
    const T = Date.parse("2026-03-01T08:00:00Z")
    let wall_ms = T
    const open = () => liveEngine(db, new LiveClock({ speed: 600, wall: () => wall_ms, log: () => {} }))
    const first = open()
    expect(first.engine.sup.sync.openAccount("acme")._tag).toBe("Right")
    first.engine.sup.sync.credit("acme", "adjustment", dollars("10.00"), "Opening balance")
    // Six wall seconds at speed 600: an engine hour, nothing written.
    wall_ms = T + 6_000
    expect(first.engine.clock.now()).toBe(T + 60 * MIN)
    first.close()

    // Started again a wall second later: the clock goes on from 09:00 at its speed.
    wall_ms = T + 7_000
    const second = open()
    expect(second.engine.clock.now()).toBe(T + 60 * MIN)
    wall_ms = T + 8_000
    expect(second.engine.clock.now()).toBe(T + 70 * MIN)
  })

  it("stands still at the database's latest instant: a restart 10 minutes behind settles no hold before it was placed", async () => {
    // Proves the review's finding fixed (a restart with the wall clock 10 minutes behind wrote
    // transitions out of order and settled a hold before it was placed): the wall-time source
    // is injected; the engine launches at T and stops at T + 2 min; it restarts at T − 10 min
    // in a new simulated world, whose reconciliation finds the pod gone and fails the instance.
    const db = tmpDb()
    const T = Date.parse("2026-03-01T12:00:00Z")
    let wall_ms = T
    const lines: string[] = []
    const open = () => liveEngine(db, new LiveClock({ wall: () => wall_ms, log: (line) => lines.push(line) }))
    const first = open()
    expect(first.engine.sup.sync.openAccount("acme")._tag).toBe("Right")
    first.engine.sup.sync.credit("acme", "adjustment", dollars("10.00"), "Opening balance")
    expect(first.engine.sup.sync.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 1 })._tag).toBe("Right")
    wall_ms = T + 2 * MIN
    await new Promise((r) => setTimeout(r, 50))
    first.close()

    wall_ms = T - 10 * MIN
    const second = open()
    expect(second.engine.clock.now()).toBe(T + 2 * MIN)
    const view = second.engine.sup.sync.describe("gi-1")
    expect(view._tag === "Right" && view.right.status).toBe("failed")
    wall_ms = T - 5 * MIN
    expect(second.engine.clock.now()).toBe(T + 2 * MIN)

    const ledger = second.engine.ledger
    const hold = ledger.holds()[0]!
    expect(hold.status).toBe("settled")
    expect(hold.settled_at! >= hold.placed_at).toBe(true)
    const inOrder = (ats: ReadonlyArray<number>) => ats.every((at, i) => i === 0 || at >= ats[i - 1]!)
    expect(inOrder(ledger.transitions().map((t) => t.at))).toBe(true)
    expect(inOrder(ledger.journalEntries().map((e) => e.at))).toBe(true)
    expect(inOrder(ledger.ledgerRows().map((r) => r.at))).toBe(true)
    expect(lines).toEqual([
      `live clock: the wall clock is ${12 * MIN} ms behind the engine's latest instant (2026-03-01T12:02:00.000Z); engine time stands still until it catches up (a database run with --clock-speed runs on from its latest instant when started with --clock-speed again)`
    ])
  })
})

describe("durability", () => {
  it("syncs every commit (FULL) by default; NORMAL only when the operator asks; the simulator's OFF stays its own", async () => {
    // Proves the ledger no longer loses acknowledged commits to a power loss by default
    // (synchronous NORMAL was hard-coded): SQLite reports 2 for FULL, 1 for NORMAL, 0 for OFF.
    const synchronous = (store: LedgerStore) => store.db.pragma("synchronous", { simple: true })
    const server = await start(tmpDb(), [])
    expect(synchronous(server.opened!.engine.ledger)).toBe(2)
    const plain = LedgerStore.open(tmpDb())
    const normal = LedgerStore.open(tmpDb(), { synchronous: "NORMAL" })
    const off = LedgerStore.open(tmpDb(), { synchronous: "OFF" })
    expect([synchronous(plain), synchronous(normal), synchronous(off)]).toEqual([2, 1, 0])
    for (const s of [plain, normal, off]) s.close()
    expect(configFor(tmpDb()).sqlite_synchronous).toBe("FULL")
    expect(configFor(tmpDb(), { ECOLINK_SQLITE_SYNCHRONOUS: "NORMAL" }).sqlite_synchronous).toBe("NORMAL")
    const normalServer = await startServer(configFor(tmpDb(), { ECOLINK_SQLITE_SYNCHRONOUS: "NORMAL" }), {})
    servers.push(normalServer)
    expect(synchronous(normalServer.opened!.engine.ledger)).toBe(1)
  })

  it("refuses an unknown ECOLINK_SQLITE_SYNCHRONOUS", () => {
    // Proves a typo (or OFF, which can corrupt the file on an OS crash) stops the start (exit 2 in scripts/start.ts).
    for (const bad of ["OFF", "full", "EXTRA", ""]) {
      expect(() => configFor(tmpDb(), { ECOLINK_SQLITE_SYNCHRONOUS: bad })).toThrow(ConfigError)
    }
    expect(() => configFor(tmpDb(), { ECOLINK_SQLITE_SYNCHRONOUS: "OFF" })).toThrow(`ECOLINK_SQLITE_SYNCHRONOUS must be FULL or NORMAL, got "OFF"`)
  })
})

describe("the database file's mode", () => {
  const modeOf = (path: string) => statSync(path).mode & 0o777

  it("is 0600 for the database, its -wal and its -shm, whatever the umask", async () => {
    // Proves the file holding invite secrets and the demo key is no longer world-readable (it was 0644).
    const db = tmpDb()
    const umask = process.umask(0o022)
    try {
      const server = await start(db, [])
      expect((await call(server, "GET", "/billing/balance", server.demo!.key)).status).toBe(200)
      expect([modeOf(db), modeOf(`${db}-wal`), modeOf(`${db}-shm`)]).toEqual([0o600, 0o600, 0o600])
    } finally {
      process.umask(umask)
    }
  })

  it("is 0700 for a directory the server makes for the database", async () => {
    // Proves the directory beside the file is not listable by others either (it was 0755).
    const db = join(dirname(tmpDb()), "made", "by", "server", "ledger.sqlite")
    const umask = process.umask(0o022)
    try {
      await start(db, [])
      expect([modeOf(dirname(db)), modeOf(dirname(dirname(db)))]).toEqual([0o700, 0o700])
    } finally {
      process.umask(umask)
    }
  })

  it("narrows a database file an earlier version left readable by others", () => {
    // Proves an upgraded installation gets the same protection, not only a fresh one.
    const db = tmpDb()
    LedgerStore.open(db).close()
    chmodSync(db, 0o644)
    writeFileSync(`${db}-shm`, "")
    chmodSync(`${db}-shm`, 0o644)
    const store = LedgerStore.open(db)
    expect([modeOf(db), modeOf(`${db}-shm`)]).toEqual([0o600, 0o600])
    store.close()
  })
})
