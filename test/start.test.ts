/**
 * `npm start` serves the control plane on a SQLite file until SIGTERM, then exits 0; started
 * again on the same file it rehydrates instead of crediting the demo twice, and prints the
 * same demo key.
 */
import { spawn } from "node:child_process"
import { existsSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import Database from "better-sqlite3"
import { describe, expect, it } from "vitest"
import { SNAPSHOT_VERSION } from "../src/snapshots.js"
import { startServerProcess } from "./api/spawn.js"
import { tmpDb } from "./helpers.js"

const ROOT = join(import.meta.dirname, "..")
/** Bound on an `npm start` (npm, then tsx compiling the server) and on its shutdown. */
const NPM_START_TIMEOUT_MS = 30_000

describe("npm start", () => {
  it("serves on a SQLite file, prints the URL and demo key, stops on SIGTERM, and restarts idempotently", async () => {
    // Proves the production wiring end to end: listen, answer, graceful stop, same demo key after a restart.
    const db = tmpDb()
    const first = await startServerProcess(["--db", db, "--port", "0"])
    expect(first.stdout()).toContain(`ledger:    ${db} (SQLite, WAL, schema migrated)`)
    expect(first.stdout()).toMatch(/operator: {2}ecoop_\S+ \(generated for this run; set ECOLINK_OPERATOR_KEY to keep one\)/)
    expect(first.stdout()).toContain("account:   demo, balance $100.00")
    const r = await fetch(`${first.url}/billing/balance`, { headers: { authorization: `Bearer ${first.demoKey}` } })
    expect(r.status).toBe(200)
    expect(await r.json()).toEqual({ balance: "100.00" })
    expect(r.headers.get("x-ecolink-request-id")).toMatch(/^req_/)
    expect(await first.stop("SIGTERM")).toBe(0)
    expect(first.stderr()).toContain("SIGTERM: closing")

    const second = await startServerProcess(["--db", db, "--port", "0"])
    expect(second.stdout()).toContain("account:   demo, balance $100.00")
    expect(second.demoKey).toBe(first.demoKey)
    expect((await fetch(`${second.url}/account`, { headers: { authorization: `Bearer ${second.demoKey}` } })).status).toBe(200)
    // Invite links carry the address actually listened on (the port was 0).
    const invite = await fetch(`${second.url}/team/invites`, {
      method: "POST",
      headers: { authorization: `Bearer ${second.demoKey}`, "content-type": "application/json" },
      body: JSON.stringify({ email: "friend@example.com" })
    })
    expect(invite.status).toBe(201)
    expect(((await invite.json()) as { invite_url: string }).invite_url.startsWith(`${second.url}/invites/inv-`)).toBe(true)
    expect(await second.stop("SIGINT")).toBe(0)
  })

  it("stops on a defect outside any request with exit code 70, closing SQLite (its -wal checkpointed)", async () => {
    // Proves a defect in a background unit (a timer's, a payment answer's) takes the same
    // orderly stop as one in a request: found by review, a provider answer that broke a UNIQUE
    // constraint killed the process with Node's trace and exit 1, SQLite left open.
    const db = tmpDb()
    const server = await startServerProcess(["--db", db, "--port", "0"], { NODE_OPTIONS: `--import=${join(ROOT, "test", "fixtures", "plant-defect.mjs")}` })
    expect(existsSync(`${db}-wal`)).toBe(true)
    expect(await server.stop("SIGUSR2")).toBe(70)
    expect(server.stderr()).toContain("defect: Error: planted defect in a background unit")
    expect(server.stderr()).toContain("defect: closing")
    expect(existsSync(`${db}-wal`)).toBe(false)
  })

  it("finishes the orderly close when a defect comes during it, and exits 70", async () => {
    // Found by review: a defect while a SIGTERM's close ran took the second-signal path,
    // "defect again: exiting now", exit 1, with SQLite still open.
    const db = tmpDb()
    const server = await startServerProcess(["--db", db, "--port", "0"], { NODE_OPTIONS: `--import=${join(ROOT, "test", "fixtures", "plant-defect-at-stop.mjs")}` })
    expect(await server.stop("SIGTERM")).toBe(70)
    expect(server.stderr()).toContain("SIGTERM: closing")
    expect(server.stderr()).toContain("defect: Error: planted defect during the close")
    expect(server.stderr()).not.toContain("exiting now")
    expect(existsSync(`${db}-wal`)).toBe(false)
  })

  it("leaves a running GPU instance running across a clean restart (the simulated cluster's pods outlive the process)", async () => {
    // Found by review: every restart failed every running instance ("Instance failed: its pod
    // did not start or stopped unexpectedly"), because the new process's simulated cluster
    // started empty. test/api/restart.test.ts checks the billing to the micro-dollar.
    const db = tmpDb()
    const args = ["--db", db, "--port", "0", "--clock-speed", "600"]
    const first = await startServerProcess(args)
    const call = async (server: typeof first, method: string, path: string, body?: unknown) => {
      const r = await fetch(`${server.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${server.demoKey}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) })
      })
      return (await r.json()) as Record<string, any>
    }
    const id = (await call(first, "POST", "/gpu-instances", { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 24 })).id as string
    const until = Date.now() + NPM_START_TIMEOUT_MS
    while ((await call(first, "GET", `/gpu-instances/${id}`)).status !== "running" && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
    expect((await call(first, "GET", `/gpu-instances/${id}`)).status).toBe("running")
    expect(await first.stop("SIGTERM")).toBe(0)

    const second = await startServerProcess(args)
    try {
      const view = await call(second, "GET", `/gpu-instances/${id}`)
      expect([view.status, view.termination_reason]).toEqual(["running", null])
      expect((await call(second, "GET", "/notifications")).data).toEqual([])
    } finally {
      expect(await second.stop("SIGTERM")).toBe(0)
    }
  })

  it("prints the operator key only when it generated one for the run", async () => {
    // Found by review: a key set in ECOLINK_OPERATOR_KEY was echoed to the console (a log collector).
    const key = "op_configured_0123456789abcdefghijklmnopqrstuvwxyz"
    const configured = await startServerProcess(["--db", tmpDb(), "--port", "0", "--no-demo"], { ECOLINK_OPERATOR_KEY: key }, { demoKey: false })
    expect(await configured.stop("SIGTERM")).toBe(0)
    expect(configured.stdout()).toContain("operator:  the configured key (--operator-key or ECOLINK_OPERATOR_KEY; not shown)")
    expect(configured.stdout() + configured.stderr()).not.toContain(key)
  })

  it("refuses a Kubernetes world whose files are bad with exit code 2 and one line, before making anything", async () => {
    // Found by review: a missing kubeconfig or a bad leader_election in the cluster file was
    // found after parsing: exit 1 with a stack trace, the database's directory already made.
    const dir = dirname(tmpDb())
    const db = join(dir, "made-only-when-started", "ledger.sqlite")
    const good = join(dir, "cluster.json")
    writeFileSync(good, JSON.stringify({ namespace: "ecolink", regions: { "us-east": { nodes: 1, gpus_per_node: 8 } } }))
    const badLease = join(dir, "bad-lease.json")
    writeFileSync(badLease, JSON.stringify({ namespace: "ecolink", regions: { "us-east": { nodes: 1, gpus_per_node: 8 } }, leader_election: { lease_duration_ms: 1_500 } }))
    const env = { ECOLINK_OPERATOR_KEY: "op_test_0123456789abcdefghijklmnopqrstuvwxyz" }
    const kubeconfig = join(dir, "kubeconfig.yaml")
    writeFileSync(kubeconfig, "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n")
    const refusal = async (args: ReadonlyArray<string>): Promise<string> => {
      const e = await startServerProcess(["--db", db, "--port", "0", ...args], env).then(
        () => expect.fail("started"),
        (e: Error) => e.message
      )
      expect(e).toMatch(/^start exited 2; stdout: ; stderr: npm start: [^\n]*\n$/)
      return e.replace(/^start exited 2; stdout: ; stderr: npm start: /, "").trim()
    }
    expect(await refusal(["--kubeconfig", "/nonexistent", "--cluster", good])).toMatch(/^--kubeconfig \/nonexistent: ENOENT/)
    expect(await refusal(["--kubeconfig", kubeconfig, "--cluster", badLease])).toBe(
      `--cluster ${badLease}: leader_election: need retry_period_ms < renew_deadline_ms < lease_duration_ms, the last in whole seconds`
    )
    expect(existsSync(dirname(db))).toBe(false)
  })

  it("refuses a database a newer engine wrote with exit code 2 and one line naming the resource, not a stack trace", async () => {
    // Found by review: a row in a newer snapshot format (a rollback) stopped the start with
    // "npm start failed: SnapshotUnreadable: ..." and the stack, exit 1.
    const db = tmpDb()
    const made = await startServerProcess(["--db", db, "--port", "0"])
    expect(await made.stop("SIGTERM")).toBe(0)
    const file = new Database(db)
    file.prepare(`INSERT INTO resources (id, account, kind, status, live, snapshot, snapshot_version, created_at, updated_at) VALUES ('gi-new', 'demo', 'gpu_instance', 'terminated', 0, '{}', ?, 0, 0)`).run(SNAPSHOT_VERSION + 1)
    file.close()
    await expect(startServerProcess(["--db", db, "--port", "0"])).rejects.toThrow(
      new RegExp(
        `^start exited 2; stdout: ; stderr: npm start: stored snapshot of gi-new cannot be restored: it was written by a newer engine \\(snapshot format ${SNAPSHOT_VERSION + 1}; this engine knows up to ${SNAPSHOT_VERSION}\\); run that version or a later one\n$`
      )
    )
  })

  it("refuses a database whose schema a newer engine migrated with exit code 2 and one line, not a stack trace", async () => {
    // Found by review: a rollback onto a file a newer engine migrated was refused with
    // "npm start failed: Error: ..." and the stack, exit 1.
    const db = tmpDb()
    const made = await startServerProcess(["--db", db, "--port", "0"])
    expect(await made.stop("SIGTERM")).toBe(0)
    const file = new Database(db)
    const known = (file.prepare(`SELECT max(version) AS v FROM schema_migrations`).get() as { v: number }).v
    file.prepare(`INSERT INTO schema_migrations (version, name) VALUES (?, 'from a newer engine')`).run(known + 1)
    file.close()
    await expect(startServerProcess(["--db", db, "--port", "0"])).rejects.toThrow(
      new RegExp(`^start exited 2; stdout: ; stderr: npm start: database schema version ${known + 1} is newer than this engine knows \\(${known}\\); refusing to run\n$`)
    )
  })

  it("refuses a bad configuration with exit code 2", async () => {
    // Proves a bad flag stops the start before anything opens.
    await expect(startServerProcess(["--db", tmpDb(), "--clock-speed", "fast"])).rejects.toThrow(/start exited 2.*--clock-speed must be a number from 1 to 100000/s)
  })

  it("as `npm start` itself: SIGTERM to npm's process reaches the server, which closes cleanly and checkpoints its -wal", async () => {
    // Proves the review's finding fixed: `npm start` ran `sh -c "tsx scripts/start.ts"`; npm
    // forwarded SIGTERM to sh, which died without passing it on, and the server ran on as an
    // orphan, still answering, its -wal left behind. Now the script execs node itself.
    const db = tmpDb()
    const npm = spawn("npm", ["start", "--", "--db", db, "--port", "0"], {
      cwd: ROOT,
      env: { ...process.env, ECOLINK_LOG_LEVEL: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
      // Its own process group, so that whatever it leaves behind can be stopped here.
      detached: true
    })
    let out = ""
    let err = ""
    npm.stdout!.on("data", (d) => (out += String(d)))
    npm.stderr!.on("data", (d) => (err += String(d)))
    const exited = new Promise<number | null>((r) => npm.on("exit", (code) => r(code)))
    const within = <T>(p: Promise<T>, what: string): Promise<T> =>
      Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`${what} timed out; stdout: ${out}; stderr: ${err}`)), NPM_START_TIMEOUT_MS))])
    try {
      const url = await within(
        new Promise<string>((resolve, reject) => {
          npm.stdout!.on("data", () => {
            const found = /listening: (http:\/\/\S+)/.exec(out)?.[1]
            if (found !== undefined && out.includes("demo key:")) resolve(found)
          })
          void exited.then((code) => reject(new Error(`npm start exited ${code}; stdout: ${out}; stderr: ${err}`)))
        }),
        "npm start"
      )
      expect((await fetch(`${url}/openapi.json`)).status).toBe(200)
      expect(existsSync(`${db}-wal`)).toBe(true)
      process.kill(npm.pid!, "SIGTERM")
      expect(await within(exited, "the shutdown")).toBe(0)
      expect(err).toContain("SIGTERM: closing")
      await expect(fetch(`${url}/openapi.json`)).rejects.toThrow()
      // The last connection's close checkpointed the WAL into the database and removed it.
      expect(existsSync(`${db}-wal`)).toBe(false)
    } finally {
      try {
        process.kill(-npm.pid!, "SIGKILL")
      } catch {
        // The group is gone: nothing was left behind.
      }
    }
  }, 2 * NPM_START_TIMEOUT_MS)
})
