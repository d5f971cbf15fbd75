/**
 * `npm start`: the control plane. The engine on an embedded SQLite file with the built-in
 * simulated cluster on the live clock, the HTTP API listening, a demo account with credit and
 * a demo API key (the same on every start), printed with the URL (and the operator key when
 * one was generated for the run; a configured one is never printed). It serves until SIGTERM or
 * SIGINT, then stops taking requests, lets the supervisor post what it holds in memory, and
 * closes SQLite. A defect (a broken invariant) stops it too, with exit code 70.
 *
 * Configuration, one place: `parseConfig` in src/api/server.ts (flags and environment
 * variables; the table is there and in docs/API.md).
 */
import { ConfigError, DEMO_ACCOUNT, parseConfig, startServer, type RunningServer } from "../src/api/server.js"
import { SchemaTooNew } from "../src/ledger/migrations.js"
import { SnapshotUnreadable } from "../src/snapshots.js"

/** How long a shutdown may take before the process exits anyway. */
const SHUTDOWN_TIMEOUT_MS = 10_000

const main = async (): Promise<void> => {
  let config
  try {
    config = parseConfig(process.argv.slice(2), process.env)
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e
    process.stderr.write(`npm start: ${e.message}\n`)
    process.exit(2)
  }
  // The start in progress: a defect or a signal during it (a Kubernetes replica waits up to
  // FIRST_LEADERSHIP_WAIT_MS for the lease, and may lead meanwhile) closes what it started
  // once it has started, so a lease taken is released; before, the process exited at once.
  let starting: Promise<RunningServer> | null = null
  let server: RunningServer | null = null
  let stopping = false
  let exitCode = 0
  const stop = (code: number, why: string): void => {
    if (stopping && code === 70) {
      // A defect while closing (a timer's unit of work threw; it rolled back): the close goes
      // on, and the exit code says a defect happened. Before, it exited 1 at once.
      exitCode = 70
      return
    }
    if (stopping) {
      process.stderr.write(`${why} again: exiting now\n`)
      process.exit(1)
    }
    stopping = true
    exitCode = code
    process.stderr.write(`${why}: closing (no new requests, supervisor persists, SQLite closes)\n`)
    const timer = setTimeout(() => {
      process.stderr.write(`shutdown took more than ${SHUTDOWN_TIMEOUT_MS} ms: exiting\n`)
      process.exit(1)
    }, SHUTDOWN_TIMEOUT_MS)
    timer.unref()
    const started = server ?? starting
    void (started === null ? Promise.resolve() : Promise.resolve(started).then((s) => s.close(), () => undefined)).then(
      () => process.exit(exitCode),
      (e: unknown) => {
        process.stderr.write(`shutdown failed: ${String(e)}\n`)
        process.exit(1)
      }
    )
  }
  process.on("SIGTERM", () => stop(0, "SIGTERM"))
  process.on("SIGINT", () => stop(0, "SIGINT"))
  // A defect outside a request (a timer's or a payment answer's unit of work threw; its
  // transaction rolled back) stops the process like one inside a request: the stack on
  // stderr, then the orderly close and exit code 70. Before, Node printed it and exited 1
  // without closing SQLite or releasing a lease.
  const defect = (e: unknown): void => {
    process.stderr.write(`defect: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
    stop(70, "defect")
  }
  process.on("uncaughtException", defect)
  process.on("unhandledRejection", defect)
  try {
    starting = startServer(config, { onDefect: () => stop(70, "defect") })
    server = await starting
  } catch (e) {
    // A file the configuration names (the cluster file, the kubeconfig) is read only now,
    // still before anything opens: the same one-line refusal and exit code as a bad flag. So is
    // a database this engine must not run (a schema or a snapshot a newer engine wrote, or a
    // damaged snapshot: docs/ENGINE.md, "Upgrades"); what `startServer` opened is closed by now.
    if (!(e instanceof ConfigError) && !(e instanceof SnapshotUnreadable) && !(e instanceof SchemaTooNew)) throw e
    process.stderr.write(`npm start: ${e.message}\n`)
    process.exit(2)
  }
  // Stopped while starting: `stop` closes it and exits; no banner for a server going away.
  if (stopping) return
  process.stdout.write(
    [
      "EcoLink control plane",
      `  listening: ${server.url}  (docs ${server.url}/docs, OpenAPI ${server.url}/openapi.json)`,
      `  ledger:    ${config.db} (SQLite, WAL, schema migrated)`,
      `  cluster:   ${server.world}, live clock${config.clock_speed === 1 ? "" : ` × ${config.clock_speed}`}`,
      `  resources: ${server.live_resources} live, rehydrated from their snapshots`,
      ...(server.demo === null
        ? []
        : [`  account:   ${DEMO_ACCOUNT}, balance $${server.demo.balance}`, `  demo key:  ${server.demo.key}`]),
      // A configured operator key is a secret from the operator's own store: never echoed to a
      // console or a log collector. Only one generated for this run is shown (the simulated
      // world; the Kubernetes world requires one configured).
      server.operator_key_generated
        ? `  operator:  ${server.operator_key} (generated for this run; set ECOLINK_OPERATOR_KEY to keep one)`
        : "  operator:  the configured key (--operator-key or ECOLINK_OPERATOR_KEY; not shown)",
      "",
      ...(server.demo === null ? [] : [`Try: curl -H "Authorization: Bearer ${server.demo.key}" ${server.url}/billing/balance`, ""])
    ].join("\n")
  )
}

void main().catch((e: unknown) => {
  process.stderr.write(`npm start failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
  process.exit(1)
})
