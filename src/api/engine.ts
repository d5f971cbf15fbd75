/**
 * The engine as the HTTP API sees it: the supervisor's commands (Effects), the ledger's read
 * models, the clock, the price catalog and the cluster's regions, taken from one Effect
 * runtime. `openEngine` composes the live world's layers (the same composition `npm start`
 * and the API tests use); the API never builds a supervisor any other way.
 */
import { Cause, Context, Effect, Exit, Layer, Option, Runtime, Scope } from "effect"
import type { ClusterPort, PlacedWorkload } from "../cluster.js"
import type { EngineClock } from "../clock.js"
import type { EngineError } from "../errors.js"
import type { LedgerStore, OpenOptions } from "../ledger/store.js"
import type { ModelPrice } from "../metering.js"
import type { Micros } from "../money.js"
import { Catalog, catalogLayer, Clock, clockLayer, Cluster, EngineLog, Ledger, ledgerLayer, Payments, RestoreWorkloads, sqliteNotifierAndJournal, type CatalogPort, type EngineLogPort } from "../services.js"
import type { PaymentsPort } from "../payments.js"
import { layer as supervisorLayer, Supervisor, type SupervisorApi } from "../supervisor.js"

export type EngineServices = Supervisor | Ledger | Clock | Catalog | Cluster

/** What the routes use. `run` executes a supervisor Effect on the engine's runtime. */
export interface Engine {
  readonly sup: SupervisorApi
  readonly ledger: LedgerStore
  readonly clock: EngineClock
  readonly catalog: CatalogPort
  readonly cluster: ClusterPort
  /** Runs a command; a typed failure comes back as `Left`, a defect throws. */
  run<A, E extends EngineError>(effect: Effect.Effect<A, E>): { readonly ok: true; readonly value: A } | { readonly ok: false; readonly error: E }
}

export const engineOf = (runtime: Runtime.Runtime<EngineServices>): Engine => {
  const runExit = Runtime.runSyncExit(runtime)
  return {
    sup: Context.get(runtime.context, Supervisor),
    ledger: Context.get(runtime.context, Ledger),
    clock: Context.get(runtime.context, Clock),
    catalog: Context.get(runtime.context, Catalog),
    cluster: Context.get(runtime.context, Cluster),
    run: <A, E extends EngineError>(effect: Effect.Effect<A, E>) => {
      const exit = runExit(effect)
      if (Exit.isSuccess(exit)) return { ok: true as const, value: exit.value }
      const failure = Cause.failureOption(exit.cause)
      if (Option.isSome(failure)) return { ok: false as const, error: failure.value }
      // A defect (a broken invariant, a bug) is not an answer: it goes to the error handler.
      throw Cause.squash(exit.cause)
    }
  }
}

export interface WorldConfig {
  readonly db: string
  readonly clock: EngineClock
  readonly cluster: ClusterPort
  readonly gpu_rates: ReadonlyMap<string, Micros>
  readonly model_prices?: ReadonlyMap<string, ModelPrice | null>
  readonly storage_rates?: ReadonlyMap<string, Micros>
  readonly ledger_options?: OpenOptions
  /** The payment provider (StripePayments in production); absent: no payment routes. */
  readonly payments?: PaymentsPort
  /** Where the engine tells the operator what they should know (the process's logger); absent: stderr. */
  readonly log?: EngineLogPort
  /**
   * For a cluster that starts empty with the process (`npm start`'s simulated one): takes up the
   * workloads the database's snapshots say were placed, before the start-up reconciliation
   * (`RestoreWorkloads`). Absent: the cluster keeps its own (Kubernetes, the simulator's drills).
   */
  readonly restoreWorkloads?: (placed: ReadonlyArray<PlacedWorkload>) => void
}

export interface OpenedEngine {
  readonly engine: Engine
  readonly runtime: Runtime.Runtime<EngineServices>
  /** Closing it stops the supervisor (timers, actors) and closes SQLite, in that order. */
  readonly scope: Scope.CloseableScope
  close(): void
}

/** Ledger (SQLite), notifier and journal, clock, cluster, catalog and the supervisor, started. */
export const openEngine = (world: WorldConfig): OpenedEngine => {
  const worldLayer = Layer.mergeAll(
    clockLayer(world.clock),
    Layer.succeed(Cluster, world.cluster),
    world.payments === undefined ? Layer.empty : Layer.succeed(Payments, world.payments),
    world.log === undefined ? Layer.empty : Layer.succeed(EngineLog, world.log),
    world.restoreWorkloads === undefined ? Layer.empty : Layer.succeed(RestoreWorkloads, world.restoreWorkloads),
    catalogLayer(world.gpu_rates, world.model_prices ?? new Map(), false, world.storage_rates ?? new Map())
  )
  const engineLayer = supervisorLayer.pipe(
    Layer.provideMerge(sqliteNotifierAndJournal),
    Layer.provideMerge(Layer.merge(ledgerLayer(world.db, world.ledger_options), worldLayer))
  )
  const scope = Effect.runSync(Scope.make())
  const built = Effect.runSyncExit(Layer.toRuntime(engineLayer).pipe(Scope.extend(scope)))
  if (Exit.isFailure(built)) {
    // A start refused (a database a newer engine wrote: src/snapshots.ts) closes what it opened
    // (the SQLite connection) and throws the error itself, not Effect's wrapper of it, so that
    // `npm start` can tell a refusal from a defect.
    Effect.runSync(Scope.close(scope, built))
    throw Cause.squash(built.cause)
  }
  const runtime = built.value
  let closed = false
  return {
    engine: engineOf(runtime),
    runtime,
    scope,
    close: () => {
      if (closed) return
      closed = true
      // The clock mark keeps how far the clock got, not only the last row's instant.
      const engine = engineOf(runtime)
      if (engine.ledger.db.open) engine.ledger.reached(world.clock.now())
      Effect.runSync(Scope.close(scope, Exit.void))
    }
  }
}
