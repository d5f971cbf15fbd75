/**
 * The services the supervisor depends on, as Effect tags. A world (simulated, Kubernetes,
 * replay) is a `Layer` that provides them; the supervisor and the machines do not change.
 *
 * The ledger, the notifier and the journal are the same SQLite database, so a money movement,
 * the notification it causes, the input that caused it and the actor snapshot all commit
 * in one transaction.
 */
import { Context, Effect, Layer } from "effect"
import type { ClusterPort, PlacedWorkload } from "./cluster.js"
import type { EngineClock } from "./clock.js"
import { LedgerStore, type OpenOptions } from "./ledger/store.js"
import type { ModelPrice } from "./metering.js"
import type { Micros } from "./money.js"
import type { NotificationInput } from "./ledger/store.js"

export class Clock extends Context.Tag("ecolink/Clock")<Clock, EngineClock>() {}

export class Ledger extends Context.Tag("ecolink/Ledger")<Ledger, LedgerStore>() {}

export class Cluster extends Context.Tag("ecolink/Cluster")<Cluster, ClusterPort>() {}

/** The payment provider (Stripe in production, `SimPayments` in the simulator): src/payments.ts. */
export class Payments extends Context.Tag("ecolink/Payments")<Payments, import("./payments.js").PaymentsPort>() {}

/**
 * Present only in tests: every watchdog tick also runs the reconciler's full scan and fails
 * loudly if the incremental one (`GpuSupervisor.reconcile`) saw anything else.
 */
export class ReconcileAudit extends Context.Tag("ecolink/ReconcileAudit")<ReconcileAudit, true>() {}

/**
 * Present only for a world whose workloads live in the control plane's own memory: the built-in
 * simulated cluster of `npm start`, which a new process starts empty. The supervisor tells it,
 * at start and before the start-up reconciliation looks for them, which workloads the live
 * resources' snapshots say were placed (`placedWorkloads`), so that they run on across a
 * restart as pods in a real cluster do (docs/ENGINE.md, Recovery). A world whose pods outlive
 * the control plane (Kubernetes) and the simulator's drills (one cluster across restarts)
 * leave it out.
 */
export class RestoreWorkloads extends Context.Tag("ecolink/RestoreWorkloads")<RestoreWorkloads, (placed: ReadonlyArray<PlacedWorkload>) => void>() {}

/**
 * Where the engine tells the operator what they should know (the process's log: pino in
 * `npm start`). Absent, lines go to stderr. Fields first, then the message, as pino takes them.
 */
export interface EngineLogPort {
  warn(fields: Readonly<Record<string, unknown>>, message: string): void
  info(fields: Readonly<Record<string, unknown>>, message: string): void
}
export class EngineLog extends Context.Tag("ecolink/EngineLog")<EngineLog, EngineLogPort>() {}

/** The engine's log without a logger: one line on stderr each, the fields as JSON. */
export const stderrLog: EngineLogPort = {
  warn: (fields, message) => void process.stderr.write(`${message} ${JSON.stringify(fields)}\n`),
  info: (fields, message) => void process.stderr.write(`${message} ${JSON.stringify(fields)}\n`)
}

export interface NotifierPort {
  notify(n: NotificationInput): void
}
export class Notifier extends Context.Tag("ecolink/Notifier")<Notifier, NotifierPort>() {}

export interface JournalPort {
  /** Appends one input (API command, pod event, timer) with its instant on the engine clock. */
  append(at: number, kind: string, payload: unknown): void
}
export class Journal extends Context.Tag("ecolink/Journal")<Journal, JournalPort>() {}

/** Prices the engine charges: per GPU-hour by GPU type, and per request by platform model. */
export interface CatalogPort {
  gpuRate(gpu: string): Micros | undefined
  /** Platform models: a price, or null for a model registered without one (402 model_not_priced). */
  readonly modelPrices: ReadonlyMap<string, ModelPrice | null>
  /** Aggregate API usage into one row per account, model and minute (SPEC §6's option). */
  readonly aggregateApiUsage: boolean
  /** Storage price per GB-day, by kind, in micros; undefined when the catalog has none. */
  storageRate(kind: "cloud_drive" | "shared_fs"): Micros | undefined
}
export class Catalog extends Context.Tag("ecolink/Catalog")<Catalog, CatalogPort>() {}

/** The SQLite ledger at `path`, closed when the layer's scope closes. */
export const ledgerLayer = (path: string, options?: OpenOptions): Layer.Layer<Ledger> =>
  Layer.scoped(
    Ledger,
    Effect.acquireRelease(
      Effect.sync(() => LedgerStore.open(path, options)),
      (store) => Effect.sync(() => store.close())
    )
  )

/** Notifications and the journal live in the ledger's database (same transaction). */
export const sqliteNotifierAndJournal: Layer.Layer<Notifier | Journal, never, Ledger> = Layer.effectContext(
  Effect.map(Ledger, (store) =>
    Context.make(Notifier, { notify: (n) => store.notify(n) }).pipe(
      Context.add(Journal, { append: (at, kind, payload) => store.journal(at, kind, payload) })
    )
  )
)

/** The engine clock as a service, and the same clock as Effect's `Clock`. */
export const clockLayer = (clock: EngineClock): Layer.Layer<Clock> =>
  Layer.mergeAll(
    Layer.succeed(Clock, clock),
    Layer.setClock(clock.effectClock),
    clock.effectScheduler === undefined ? Layer.empty : Layer.setScheduler(clock.effectScheduler)
  )

export const catalogLayer = (
  rates: ReadonlyMap<string, Micros>,
  modelPrices: ReadonlyMap<string, ModelPrice | null> = new Map(),
  aggregateApiUsage = false,
  storageRates: ReadonlyMap<string, Micros> = new Map()
): Layer.Layer<Catalog> =>
  Layer.succeed(Catalog, { gpuRate: (gpu) => rates.get(gpu), modelPrices, aggregateApiUsage, storageRate: (kind) => storageRates.get(kind) })
