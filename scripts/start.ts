/**
 * `npm start`: opens the control plane's ledger (an embedded SQLite file) with the built-in
 * simulated cluster on the live clock, makes sure the demo account exists, reports what it
 * found, and stops cleanly. The HTTP API that will keep it serving arrives with the API
 * issue; until then this proves the production wiring (live clock, file ledger, migrations,
 * rehydration) starts and stops without error.
 *
 * Configuration, one place: --db FILE or ECOLINK_DB (default ./data/ecolink.sqlite).
 */
import { mkdirSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { parseArgs } from "node:util"
import { Effect, Either, Layer, Runtime, Scope, Context, Exit } from "effect"
import { LiveClock } from "../src/clock.js"
import { dollars, formatDollars } from "../src/money.js"
import { catalogLayer, clockLayer, Cluster, Ledger, ledgerLayer, sqliteNotifierAndJournal } from "../src/services.js"
import { layer as supervisorLayer, Supervisor } from "../src/supervisor.js"
import { SimCluster } from "../sim/cluster.js"

const DEMO_ACCOUNT = "demo"

const { values } = parseArgs({ options: { db: { type: "string" } } })
const db = resolve(values.db ?? process.env.ECOLINK_DB ?? "data/ecolink.sqlite")
mkdirSync(dirname(db), { recursive: true })

const clock = new LiveClock()
const cluster = new SimCluster(clock, [{ name: "us-east", nodes: 4, gpus_per_node: 8, image_pull_ms: 60_000, image_pull_jitter_ms: 0, container_start_ms: 30_000, pod_stop_ms: 0, pull_failure_probability: 0, preemption_mean_interval_ms: 0, preemption_duration_ms: 0 }], 1)
const engine = supervisorLayer.pipe(
  Layer.provideMerge(sqliteNotifierAndJournal),
  Layer.provideMerge(Layer.mergeAll(ledgerLayer(db), clockLayer(clock), Layer.succeed(Cluster, cluster), catalogLayer(new Map([["H100", dollars("1.60")]]))))
)

const scope = Effect.runSync(Scope.make())
const runtime = Effect.runSync(Layer.toRuntime(engine).pipe(Scope.extend(scope)))
const sup = Context.get(runtime.context, Supervisor)
const ledger = Context.get(runtime.context, Ledger)
const run = Runtime.runSync(runtime)

if (Either.isRight(run(Effect.either(sup.openAccount(DEMO_ACCOUNT))))) {
  run(sup.credit(DEMO_ACCOUNT, "adjustment", dollars("100.00"), "Demo credit"))
}
const live = ledger.liveResources().length
process.stdout.write(
  [
    "EcoLink engine",
    `  ledger:    ${db} (SQLite, WAL, schema migrated)`,
    "  cluster:   built-in simulated cluster (us-east: 4 nodes × 8 H100), live clock",
    `  resources: ${live} live, rehydrated from their snapshots`,
    `  account:   ${DEMO_ACCOUNT}, balance $${formatDollars(ledger.balance(DEMO_ACCOUNT))}`,
    "",
    "The HTTP API (URL and demo API key) arrives with the API issue; nothing is listening yet.",
    "Try the simulator meanwhile: npm run sim -- sim/examples/seed-hold-and-extend.json",
    ""
  ].join("\n")
)
Effect.runSync(Scope.close(scope, Exit.void))
