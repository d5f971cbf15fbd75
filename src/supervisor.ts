/**
 * The supervisor: owns one XState actor per live resource, turns the machines' intents into
 * ledger movements, notifications and cluster commands, and runs the workers on the clock
 * (deadline and warning alarms, the 5-minute watchdog).
 *
 * Unit of work. Every input (an API command, a pod event, a timer) is handled inside a unit
 * of work: one SQLite transaction that holds the journal entry of the input, the ledger rows,
 * the notifications, the transitions and the actor snapshots it caused. The simulator opens
 * one unit per clock step, so everything at one instant commits together.
 *
 * Restart. On start the supervisor rehydrates every live actor from its snapshot, re-arms
 * its alarms from the snapshot's context, and reconciles with the cluster (level-triggered),
 * so a supervisor that was dropped and started again on the same database carries on with
 * the same ledger as one that never stopped.
 */
import { Context, Effect, Either, Layer, Option } from "effect"
import { createActor } from "xstate"
import {
  billableMsAt,
  billingEndOf,
  gpuInstanceMachine,
  gpuUnits,
  isStuckPending,
  nextAlarm,
  type GpuAlarm,
  type GpuInstanceContext,
  type GpuInstanceEvent,
  type GpuInstanceInput
} from "../machines/gpuInstance.js"
import {
  cycleBillableMsAt,
  fullHourlyMicros,
  healthyRegions,
  inferenceAlarm,
  inferenceInstanceMachine,
  liveHourlyMicros,
  partialWaits,
  type InferenceContext,
  type InferenceEvent,
  type InferenceInput,
  type Renewal
} from "../machines/inferenceInstance.js"
import { dayMicrosOf, storageMachine, type StorageEvent, type StorageInput, type StorageSnapshot } from "../machines/storage.js"
import { Lane, type EngineClock, type TimerHandle } from "./clock.js"
import {
  cycleHoldIdFor,
  holdIdFor,
  INFERENCE_KIND,
  inferenceViewOf,
  rateOf,
  replicaResource,
  STORAGE_KINDS,
  storageViewOf,
  viewOf,
  type Caller,
  type CreateStorageRequest,
  type ExtendResult,
  type GpuView,
  type InferenceView,
  type LaunchGpuRequest,
  type LaunchInferenceRequest,
  type RegisterModelRequest,
  type ResourceView,
  type StorageView
} from "./resources.js"
import { podNameFor, stuckPendingEvidence, type ClusterEvent, type ClusterPort, type PlacedWorkload, type VolumeSpec } from "./cluster.js"
import { assert, Conflict, DatabaseBusy, InsufficientBalance, isRefusal, NotFound, NotLeader, ValidationError, type EngineError } from "./errors.js"
import type { LedgerStore, ResourceRecord } from "./ledger/store.js"
import { BalanceMonitor, foreseenBefore, type BurnMeasure, type ForeseenRenewal } from "./balanceMonitor.js"
import { accountOf, deferredStopEnd, gpuSpec, placedWorkloads, podsOf, replicaSpec, replicaStatuses, statusOf, storageOf, type LiveEntry, type WorkloadEntry } from "./liveEntry.js"
import { Reconciler } from "./reconciler.js"
import { microMs } from "./lowBalance.js"
import { Metering, type ApiRequest, type ChargeResult, type MeteringError, type UserInstanceInfo } from "./metering.js"
import { costMicros, formatDollars, holdMicros, type Micros } from "./money.js"
import * as policy from "./policy.js"
import { Catalog, Clock, Cluster, EngineLog, Journal, Ledger, Notifier, Payments, ReconcileAudit, RestoreWorkloads, stderrLog, type CatalogPort, type EngineLogPort, type JournalPort, type NotifierPort } from "./services.js"
import { PaymentBook, type PaymentHost, type PaymentsPort } from "./payments.js"
import { Backlog } from "./backlog.js"
import { newerFormat, readSnapshot, SNAPSHOT_VERSION } from "./snapshots.js"

/** The supervisor's commands, as Effects that fail with the engine's typed errors. */
export interface SupervisorCommands {
  openAccount(id: string): Effect.Effect<void, Conflict>
  /**
   * Moves money into a wallet (`topup` from a payment), or either way (`adjustment`, an
   * operator's correction, SPEC §1). A negative adjustment cannot take the balance below 0
   * (402 `insufficient_balance`): it corrects what is there, it does not create a debt.
   */
  credit(account: string, kind: "topup" | "adjustment", amount_micros: Micros, description: string): Effect.Effect<Micros, NotFound | ValidationError | InsufficientBalance>
  launchGpu(req: LaunchGpuRequest, caller?: Caller): Effect.Effect<GpuView, EngineError>
  extend(id: string, hours: number, caller?: Caller): Effect.Effect<ExtendResult, EngineError>
  terminate(id: string, caller?: Caller): Effect.Effect<ResourceView, NotFound | Conflict>
  describe(id: string, caller?: Caller): Effect.Effect<ResourceView, NotFound>
  /** The account's resources of `kinds`, by id, `limit` of them after the id `after` (keyset). */
  list(account: string, query: ListQuery, caller?: Caller): Effect.Effect<ReadonlyArray<ResourceView>, NotFound>
  registerModel(req: RegisterModelRequest, caller?: Caller): Effect.Effect<void, EngineError>
  deleteModel(account: string, model: string, caller?: Caller): Effect.Effect<void, NotFound | Conflict>
  launchInference(req: LaunchInferenceRequest, caller?: Caller): Effect.Effect<InferenceView, EngineError>
  createStorage(req: CreateStorageRequest, caller?: Caller): Effect.Effect<StorageView, EngineError>
  deleteStorage(id: string, caller?: Caller): Effect.Effect<ResourceView, NotFound | Conflict>
  /** Charges one `/v1` request at once (SPEC §6): an `api_usage` row, or a typed refusal. */
  apiRequest(req: Omit<ApiRequest, "at">, caller?: Caller): Effect.Effect<ChargeResult, MeteringError>
  balance(account: string): Effect.Effect<Micros, NotFound>
}

/** A user instance as a `/v1` request finds it (`UserInstanceInfo` without the per-request price). */
export type UserInstanceState = Omit<UserInstanceInfo, "price">

export interface ListQuery {
  readonly kinds: ReadonlyArray<string>
  readonly after: string | null
  readonly limit: number
}

/** The same commands, synchronous: each returns the `Either` its Effect succeeds or fails with. */
export type SupervisorSync = {
  readonly [K in keyof SupervisorCommands]: SupervisorCommands[K] extends (...args: infer P) => Effect.Effect<infer A, infer E> ? (...args: P) => Either.Either<A, E> : never
}

export interface SupervisorApi extends SupervisorCommands {
  /** Posts API usage still pending in aggregation buckets (end of a run, shutdown). */
  settleApiUsage(): void
  /**
   * Stops the supervisor at once, writing nothing more, and refuses every later unit of work
   * with `NotLeader` (503): the replica lost its lease (src/api/kubernetesServer.ts).
   */
  fence(): void
  /**
   * True once `fence` was called, or once another process took a newer leader term on the
   * database (src/ledger/store.ts `holdsLeaderTerm`), which fences it here and now: a process
   * that was superseded answers every request 503 `not_leader`, reads too, instead of serving
   * balances cached before its successor wrote.
   */
  readonly fenced: boolean
  /** What the API needs to route a `/v1` request to a user instance (SPEC §6), and why a stopped one stopped. */
  userInstance(account: string, model: string, id: string): UserInstanceState
  /**
   * Before a request that may write reads anything: once the lock is free, what waits for the
   * database runs now, in order (src/backlog.ts); otherwise nothing (`unitOfWork` refuses 503).
   */
  catchUp(): void
  /** Runs `fn` as one unit of work (one transaction); the simulator wraps each clock step. */
  unitOfWork<T>(fn: () => T): T
  /** Group commit: units of work share one transaction until `commitBatch` (simulator only). */
  beginBatch(): void
  commitBatch(): void
  /**
   * The commands without Effect: the simulator drives the engine through these, hundreds of
   * thousands of inputs a run, without a fiber per input (BENCHMARKS.md). Same code, same
   * behaviour: each Effect above is this call lifted.
   */
  readonly sync: SupervisorSync
  /** Card payments (src/payments.ts), or null in a world without a payment provider. */
  readonly payments: PaymentBook | null
}

export class Supervisor extends Context.Tag("ecolink/Supervisor")<Supervisor, SupervisorApi>() {}

/** Intents the machine raised during one dispatch, carried out in order afterwards. */
type Intent =
  | { readonly type: "placeHold"; readonly ctx: GpuInstanceContext }
  | { readonly type: "extendHold"; readonly ctx: GpuInstanceContext; readonly hours: number }
  | { readonly type: "settle"; readonly ctx: GpuInstanceContext }
  | { readonly type: "createPod"; readonly ctx: GpuInstanceContext }
  | { readonly type: "deletePod"; readonly ctx: GpuInstanceContext }
  | { readonly type: "placeCycleHold"; readonly ictx: InferenceContext }
  | { readonly type: "settleCycle"; readonly ictx: InferenceContext; readonly at: number }
  | { readonly type: "createReplicaPods"; readonly ictx: InferenceContext }
  | { readonly type: "deleteReplicaPods"; readonly ictx: InferenceContext }
  | {
      readonly type: "notify"
      readonly ctx: { readonly id: string; readonly account: string }
      readonly severity: policy.Severity
      readonly kind: string
      readonly text: string
      readonly data?: Readonly<Record<string, number | string | null>>
    }

/** Bound on intents one event may raise; a machine looping on itself stops loudly. */
const INTENTS_PER_DISPATCH_MAX = 64

const viewOfEntry = (entry: LiveEntry, at: number): ResourceView =>
  entry.kind === "gpu" ? viewOf(entry.actor.getSnapshot(), at)
  : entry.kind === "inference" ? inferenceViewOf(entry.actor.getSnapshot())
  : storageViewOf(entry.actor.getSnapshot())

export class GpuSupervisor implements PaymentHost {
  private readonly live = new Map<string, LiveEntry>()
  /** Provider calls waiting for the current unit of work to commit (`whenCommitted`). */
  private readonly committedCalls: Array<() => void> = []
  /**
   * Storage whose day a restore paid (id → that day's midnight): on a live clock money can
   * arrive after 00:00 but before the midnight worker fires, and the worker must not charge
   * that day again.
   */
  private readonly paidByRestore = new Map<string, number>()
  /** The live entries that run workloads (GPU resources, inference instances): the reconciler's scan. */
  private readonly withPods = new Map<string, WorkloadEntry>()
  /** Live resources in `pending`, for the watchdog. Iterated sorted, never in insertion order. */
  private readonly pending = new Set<string>()
  /** Live resources in `terminating`: the watchdog confirms their pods are gone. */
  private readonly stopping = new Set<string>()
  private readonly dirty = new Set<string>()
  /** Accounts money came back to in this unit of work (a credit, a refund): their suspended storage may come back at its end. */
  private readonly replenished = new Set<string>()
  /**
   * The incremental reconciler's suspects for the next watchdog tick (see `reconcile`):
   * resources whose machine ran since the last tick, the workloads of resources that left
   * `live` since then, and what the last tick found wrong (a correction may not have taken).
   */
  /** Live resource ids by account, for the low-balance monitor. */
  private readonly byAccount = new Map<string, Set<string>>()
  /** The low-balance monitor (SPEC §7), told of every account a unit of work touches. */
  private readonly lowBalance: BalanceMonitor
  private readonly reconciler: Reconciler
  private intents: Intent[] = []
  /** Dispatches that follow another one in the same unit of work (storage detach). */
  private deferred: Array<() => void> = []
  private depth = 0
  private watchdogTimer: TimerHandle | null = null
  private unsubscribe: (() => void) | null = null
  private readonly machine: typeof gpuInstanceMachine
  private readonly inference: typeof inferenceInstanceMachine
  private readonly storage: typeof storageMachine
  private storageTimer: TimerHandle | null = null
  private readonly metering: Metering
  private meteringTimer: { readonly at: number; readonly handle: TimerHandle } | null = null
  private stopped = false
  /** Set by `fence`: the replica lost its lease. */
  private deposed = false
  /** When `fenced` last read the database's term (`termCheckDue`), and the asks skipped since. */
  private termCheckedAt = Number.NEGATIVE_INFINITY
  private termChecksSkipped = 0
  /** Set when a unit of work rolled back after changing memory: see `unitOfWork`. */
  private broken: unknown = null
  /** Counts the actors' transitions, so a unit can tell whether it changed any. */
  private changes = 0
  private batching = false
  /** Card payments (issue 6), delegated to src/payments.ts; null without a provider. */
  readonly payments: PaymentBook | null
  /** What waits while another connection holds the database (src/backlog.ts). */
  private readonly backlog: Backlog
  /**
   * The world's clock as the engine's units read it (`Backlog.clock`): the same, except while a
   * unit that waited for the database runs, when it answers the instant the unit came due. The
   * world's clock itself where nothing can wait (a ledger without a leader term: the simulator).
   */
  private readonly clock: EngineClock

  constructor(
    private readonly ledger: LedgerStore,
    private readonly cluster: ClusterPort,
    worldClock: EngineClock,
    private readonly catalog: CatalogPort,
    private readonly notifier: NotifierPort,
    private readonly journal: JournalPort,
    paymentsPort: PaymentsPort | null = null,
    /** `ReconcileAudit`: check every incremental reconcile against a full scan (tests). */
    audit = false,
    log: EngineLogPort = stderrLog,
    /** `RestoreWorkloads`: a world that starts empty takes up the workloads the snapshots say were placed. */
    private readonly restoreWorkloads: ((placed: ReadonlyArray<PlacedWorkload>) => void) | null = null
  ) {
    this.backlog = new Backlog(worldClock, {
      background: (fn) => this.background(fn),
      writeLockFree: () => this.ledger.writeLockFree(),
      overflow: (message) => {
        // Memory is as the database has it (nothing that waits has run): stop writing, as
        // after a defect, and let a restart recover.
        this.broken = message
        this.stop()
        throw new Error(message)
      },
      log
    })
    // Only a connection holding a leader term (every live process) is refused at BEGIN; any other
    // (the simulator's) never is, so its units read the world's clock straight, at no cost.
    const clock = (this.clock = ledger.claimedLeaderTerm ? this.backlog.clock : worldClock)
    this.payments = paymentsPort === null ? null : new PaymentBook(ledger, clock, notifier, journal, paymentsPort, this)
    this.reconciler = new Reconciler(
      {
        clock,
        cluster,
        journal,
        withPods: this.withPods,
        isLive: (id) => this.live.has(id),
        dispatch: (entry, event, cause) => this.dispatch(entry, event, cause),
        createPod: (ctx, at) => this.carryOut({ type: "createPod", ctx }, at),
        catchingUp: () => this.backlog.catchingUp
      },
      audit
    )
    this.lowBalance = new BalanceMonitor({
      clock,
      ledger,
      notifier,
      journal,
      spendable: (account) => this.spendable(account),
      measureBurn: (account, at) => this.measureBurn(account, at),
      unitOfWork: (fn) => this.background(fn),
      afterUnitOf: (accounts) => this.payments?.afterUnit(accounts)
    })
    const raise = (intent: Intent): void => {
      assert(this.intents.length < INTENTS_PER_DISPATCH_MAX, () => `more than ${INTENTS_PER_DISPATCH_MAX} intents in one dispatch`)
      this.intents.push(intent)
    }
    this.machine = gpuInstanceMachine.provide({
      actions: {
        placeHold: ({ context }) => raise({ type: "placeHold", ctx: context }),
        extendHold: ({ context }, params) => raise({ type: "extendHold", ctx: context, hours: params.hours }),
        settle: ({ context }) => raise({ type: "settle", ctx: context }),
        createPod: ({ context }) => raise({ type: "createPod", ctx: context }),
        deletePod: ({ context }) => raise({ type: "deletePod", ctx: context }),
        notifyDurationWarning: ({ context }, params) => {
          const severity = policy.DURATION_WARNINGS.find((w) => w.minutes === params.minutes)?.severity ?? "warning"
          raise({
            type: "notify",
            ctx: context,
            severity,
            kind: "duration_warning",
            text: policy.texts.durationWarning(policy.gpuNoun(context.kind), context.id, params.minutes),
            data: { minutes: params.minutes, deadline_at: context.deadline_at }
          })
        },
        notifyPreempted: ({ context }) =>
          raise({ type: "notify", ctx: context, severity: "warning", kind: "preempted", text: policy.texts.preempted(policy.gpuNoun(context.kind), context.id) }),
        notifyResumed: ({ context }) =>
          raise({ type: "notify", ctx: context, severity: "info", kind: "resumed", text: policy.texts.resumed(policy.gpuNoun(context.kind), context.id) }),
        notifyTerminated: ({ context, event }) => {
          const reason = context.termination_reason ?? "failed"
          // A failure comes from a pod that failed or vanished, or from the watchdog's stuck-pending rule.
          const cause: policy.FailureCause = event.type === "watchdog" ? "not_started" : "pod_failed"
          raise({
            type: "notify",
            ctx: context,
            severity: policy.TERMINATION_SEVERITY[reason],
            kind: "terminated",
            text: policy.terminatedText(reason, cause),
            data: reason === "failed" ? { termination_reason: reason, cause } : { termination_reason: reason }
          })
        }
      }
    })
    // A user instance's GPU time is billed by its hold; its requests cost nothing more.
    this.metering = new Metering(ledger, catalog.modelPrices, (account, name, id) => ({ ...this.userInstance(account, name, id), price: null }), {
      aggregate: catalog.aggregateApiUsage
    })
    this.storage = storageMachine.provide({
      actions: {
        notifySuspended: ({ context }) =>
          raise({ type: "notify", ctx: context, severity: "critical", kind: "storage_suspended", text: policy.texts.storageSuspended(context.id) }),
        notifyRestored: ({ context }) =>
          raise({ type: "notify", ctx: context, severity: "info", kind: "storage_restored", text: policy.texts.storageRestored(context.id) })
      }
    })
    this.inference = inferenceInstanceMachine.provide({
      actions: {
        placeHold: ({ context }) => raise({ type: "placeCycleHold", ictx: context }),
        settleCycle: ({ context, event }) => raise({ type: "settleCycle", ictx: context, at: event.at }),
        createPods: ({ context }) => raise({ type: "createReplicaPods", ictx: context }),
        deletePods: ({ context }) => raise({ type: "deleteReplicaPods", ictx: context }),
        notifyPartialHold: ({ context }, params) =>
          raise({
            type: "notify",
            ctx: context,
            severity: "warning",
            kind: "partial_hold",
            text: policy.texts.partialHold(formatDollars(BigInt(params.hold_micros)), policy.hoursToTenths(params.window_ms)),
            data: { hold: params.hold_micros, window_ms: params.window_ms, cycle: context.cycle.number }
          }),
        notifyTerminated: ({ context }) => {
          const reason = context.termination_reason ?? "failed"
          // An inference instance fails only when its last replica does.
          const cause: policy.FailureCause = "replicas_failed"
          raise({
            type: "notify",
            ctx: context,
            severity: policy.TERMINATION_SEVERITY[reason],
            kind: "terminated",
            text: policy.terminatedText(reason, cause),
            data: reason === "failed" ? { termination_reason: reason, cause } : { termination_reason: reason }
          })
        }
      }
    })
  }

  // ── lifecycle ─────────────────────────────────────────────────────────────────────────
  /** Rehydrates live actors, re-arms alarms, reconciles with the cluster, starts the watchdog. */
  start(): void {
    // Every row, not only the live ones restored here: a finished resource a newer engine wrote
    // would otherwise be refused later, at the first request that reads it (docs/ENGINE.md, "Upgrades").
    const newer = this.ledger.newerSnapshot(SNAPSHOT_VERSION)
    if (newer !== undefined) throw newerFormat(newer)
    this.unitOfWork(() => {
      for (const record of this.ledger.liveResources()) {
        const entry = this.rehydrate(record)
        this.live.set(record.id, entry)
        if (entry.kind !== "storage") this.withPods.set(record.id, entry)
        const status = statusOf(entry)
        if (entry.kind === "gpu" && status === "pending") this.pending.add(record.id)
        if (entry.kind === "gpu" && status === "terminating") this.stopping.add(record.id)
        this.track(entry)
        this.lowBalance.touch(accountOf(entry))
        this.rearm(entry)
      }
      // Before the reconciliation looks for them: otherwise every started resource of a world
      // that begins empty would be found without its pods, and failed (docs/ENGINE.md, Recovery).
      if (this.restoreWorkloads !== null) this.restoreWorkloads([...this.withPods.values()].sort((a, b) => (a.id < b.id ? -1 : 1)).flatMap(placedWorkloads))
      this.reconcile("start")
    })
    this.unsubscribe = this.cluster.subscribe((event) => this.onClusterEvent(event))
    this.armWatchdog()
    this.armStorageBilling()
    this.payments?.start()
  }

  /** A live resource's actor, started from its stored snapshot (upgraded if an earlier version wrote it). */
  private rehydrate(record: ResourceRecord): LiveEntry {
    const entry = this.fromRecord(record)
    entry.actor.start()
    return entry
  }

  /**
   * Stops at once and refuses every later unit of work with `NotLeader`: the replica lost its
   * lease, and another may be writing the database already (src/api/kubernetesServer.ts).
   * Nothing more is written, not even pending API usage.
   */
  fence(): void {
    this.deposed = true
    this.stop()
  }

  get fenced(): boolean {
    if (!this.deposed && this.termCheckDue() && !this.ledger.holdsLeaderTerm()) this.fence()
    return this.deposed
  }

  /**
   * Whether `fenced` asks the database for the term now: at most once per
   * TERM_CHECK_INTERVAL_MS of engine time, and at least once per TERM_CHECK_EVERY_CALLS asks (a
   * live clock standing still). Asked on every request, the check cost the read route 9% of
   * its CPU (BENCHMARKS.md, seventh session); a superseded process may answer reads for that
   * long, never a write (every transaction checks the term under the write lock).
   */
  private termCheckDue(): boolean {
    const now = this.clock.now()
    if (now - this.termCheckedAt < TERM_CHECK_INTERVAL_MS && ++this.termChecksSkipped < TERM_CHECK_EVERY_CALLS) return false
    this.termCheckedAt = now
    this.termChecksSkipped = 0
    return true
  }

  /** Drops the supervisor without writing anything: timers cancelled, actors stopped. Idempotent. */
  stop(): void {
    if (this.stopped) return
    this.stopped = true
    this.payments?.stop()
    this.unsubscribe?.()
    this.unsubscribe = null
    if (this.watchdogTimer !== null) this.clock.clearTimeout(this.watchdogTimer)
    if (this.meteringTimer !== null) this.clock.clearTimeout(this.meteringTimer.handle)
    if (this.storageTimer !== null) this.clock.clearTimeout(this.storageTimer)
    for (const entry of this.live.values()) {
      if (entry.alarm !== null) this.clock.clearTimeout(entry.alarm.handle)
      entry.actor.stop()
    }
    this.lowBalance.stop()
    // What waits for the database is not run: the next start recovers from the database.
    this.backlog.stop()
    this.live.clear()
    this.withPods.clear()
    this.pending.clear()
    this.stopping.clear()
    this.byAccount.clear()
  }

  unitOfWork<T>(fn: () => T): T {
    if (this.deposed) throw new NotLeader()
    assert(this.broken === null, () => `unit of work after a unit rolled back (${String(this.broken)}): restart from the database`)
    assert(!this.stopped, () => "unit of work on a stopped supervisor")
    if (this.depth > 0) return fn()
    // The engine's own units wait for the database (src/backlog.ts): a write that came after
    // them must not commit before them, so it is refused as if the lock were still held. They
    // are never run from here (`catchUp` runs them before a request reads anything): a command
    // has already checked its request against memory by now (the instance running, the drive
    // detached, the balance), and they would change that memory under it.
    if (this.backlog.holds) throw new DatabaseBusy()
    let result: T
    const changes = this.changes
    try {
      result = this.ledger.transaction(() => {
        this.depth++
        this.replenished.clear()
        try {
          const value = fn()
          this.restoreReplenished()
          this.lowBalance.afterUnit()
          // In a batch the snapshots are written once, at the batch's commit.
          if (!this.batching) this.flush()
          return value
        } finally {
          this.depth--
        }
      })
    } catch (e) {
      // Rolled back: the calls it asked for were never made.
      this.committedCalls.length = 0
      if (e instanceof NotLeader) {
        // Another replica took a newer leader term (src/ledger/store.ts): this one is deposed.
        this.fence()
      } else if (!isRefusal(e) || this.changes !== changes) {
        // A refusal thrown before any actor moved leaves memory as the database has it.
        // Anything else (a defect, a write SQLite refused) rolled back rows that the actors,
        // their alarms and the caches in memory already reflect: memory is ahead of the
        // database, and the next unit would write it (a hold never settled, a GPU running
        // without one). So the supervisor stops here and writes nothing more; a restart
        // recovers from SQLite, which is consistent (docs/ENGINE.md).
        this.broken = e instanceof Error ? e.message : e
        this.stop()
      }
      throw e
    }
    if (this.committedCalls.length > 0) for (const call of this.committedCalls.splice(0)) call()
    return result
  }

  /**
   * Before a request that may write reads anything (its route's checks, its command's): once
   * the lock is free, what waits for the database runs now, in order, as the backlog's next
   * retry would have run it (src/backlog.ts `catchUp`), so the request is checked against, and
   * commits after, what it would have found had that retry come first; a client that retries
   * as soon as the lock goes is served, not refused until the retry, up to a second later.
   * Not from `unitOfWork`: by then the command has checked its request against memory, and what
   * waits would change that memory between the check and the write (a drive found attached by
   * the check, detached by the deadline run inside the delete's unit: a 409 for a drive free).
   * Otherwise (the lock still held, nothing waiting, or the supervisor fenced or stopped) it
   * does nothing, and a write is refused 503 by `unitOfWork` as before.
   */
  catchUp(): void {
    if (this.deposed || this.broken !== null || this.stopped || this.depth > 0 || !this.backlog.holds) return
    this.backlog.catchUp()
  }

  /**
   * A unit of work the engine starts itself (a timer, a cluster event, a provider's answer).
   * Once another replica holds a newer leader term it does nothing: the unit that finds out
   * fences the supervisor (`unitOfWork`), and the `NotLeader` goes no further, where a
   * request's would answer 503. Otherwise it would escape a timer or a watch handler and stop
   * the process, where the replica should stand by.
   *
   * Refused the database (`DatabaseBusy`: another connection held the write lock past the busy
   * timeout, so nothing of `fn` ran), it waits in the backlog and runs once the lock is free,
   * as of the instant it read now, in order with everything the engine starts after it
   * (src/backlog.ts); so does a unit started while others wait. Before, the `DatabaseBusy`
   * escaped the timer or the watch handler and stopped the process.
   */
  background(fn: () => void): void {
    // Inside a unit of work (the simulator's clock step) it is part of that unit: nothing waits.
    const own = this.depth === 0
    if (own && this.backlog.holds) return this.backlog.join(fn)
    const at = own ? this.clock.now() : 0
    try {
      this.unitOfWork(fn)
    } catch (e) {
      if (own && e instanceof DatabaseBusy) this.backlog.refused(fn, at)
      else if (!(e instanceof NotLeader)) throw e
    }
  }

  /**
   * Runs `call` (a request to the payment provider) once the current unit of work has
   * committed, so nothing leaves for the outside world on behalf of rows that may yet roll
   * back; outside a unit of work, at once. In the simulator's group commit, "committed" is the
   * unit's end: the batch commits later, and every simulated crash comes after a commit.
   */
  whenCommitted(call: () => void): void {
    if (this.depth === 0) call()
    else this.committedCalls.push(call)
  }

  /**
   * Group commit (the simulator): units of work until `commitBatch` share one transaction,
   * and each touched actor's snapshot is written once, just before the commit, so what
   * commits is always a consistent cut of money and snapshots.
   */
  beginBatch(): void {
    if (this.batching) return
    this.ledger.beginBatch()
    this.batching = true
  }

  commitBatch(): void {
    if (!this.batching) return
    this.flush()
    this.ledger.commitBatch()
    this.batching = false
  }

  // ── payments (issue 6): the two money rows src/payments.ts posts ───────────────────────
  /**
   * A card payment's row: `topup` (+) when the provider confirms it, a negative `refund`
   * when a top-up is refunded at the provider, or a positive `refund` (the credit back) when
   * such a refund fails there later. Decision: a card refund is booked in full even
   * when it takes the balance below 0 (the money has left at the provider; the ledger must
   * reconcile with it to the cent); SPEC §9.4 exempts these rows.
   */
  postPayment(row: { account: string; kind: "topup" | "refund"; amount_micros: Micros; resource: string; description: string }): Micros {
    // A card refund is − when made and + when it failed at the provider (its credit back).
    assert(row.kind === "topup" ? row.amount_micros > 0n : row.amount_micros !== 0n, () => `payment row ${row.kind} ${row.amount_micros}`)
    return this.unitOfWork(() => this.book(row))
  }

  /**
   * A wallet row that is not a hold's: credits and adjustments, card top-ups and refunds. The
   * low-balance monitor looks at the account again; only money coming in can lift it above a
   * warned threshold (SPEC §7) or make suspended storage usable (SPEC §5).
   */
  private book(row: { account: string; kind: "topup" | "adjustment" | "refund"; amount_micros: Micros; resource: string | null; description: string }): Micros {
    const at = this.clock.now()
    if (row.amount_micros > 0n) this.lowBalance.credit(row.account)
    else this.lowBalance.touch(row.account)
    const balance = this.ledger.post({ account: row.account, at, kind: row.kind, amount_micros: row.amount_micros, resource: row.resource, description: row.description })
    if (row.amount_micros > 0n) this.replenished.add(row.account)
    return balance
  }

  touch(account: string): void {
    this.lowBalance.touch(account)
  }

  // ── API commands ──────────────────────────────────────────────────────────────────────
  openAccount(id: string): Either.Either<void, Conflict> {
    return this.unitOfWork(() => {
      const opened = this.ledger.openAccount(id, this.clock.now())
      if (Either.isRight(opened)) this.journal.append(this.clock.now(), "open_account", { id })
      return opened
    })
  }

  credit(account: string, kind: "topup" | "adjustment", amount_micros: Micros, description: string): Either.Either<Micros, NotFound | ValidationError | InsufficientBalance> {
    if (!this.ledger.hasAccount(account)) return Either.left(new NotFound({ code: "account_not_found", id: account }))
    if (amount_micros === 0n || (kind === "topup" && amount_micros < 0n)) {
      return Either.left(new ValidationError({ code: "invalid_amount", field: "amount", message: kind === "topup" ? "amount must be positive" : "amount must not be zero" }))
    }
    const balance = this.ledger.balance(account)
    if (balance + amount_micros < 0n) return Either.left(new InsufficientBalance({ account, required_micros: -amount_micros, balance_micros: balance }))
    if (balance + amount_micros > policy.WALLET_BALANCE_MAX_MICROS) {
      return Either.left(new ValidationError({ code: "invalid_amount", field: "amount", message: `a wallet holds at most $${formatDollars(policy.WALLET_BALANCE_MAX_MICROS)}; this would make it $${formatDollars(balance + amount_micros)}` }))
    }
    return Either.right(
      this.unitOfWork(() => {
        this.journal.append(this.clock.now(), kind, { account, amount_micros: amount_micros.toString() })
        return this.book({ account, kind, amount_micros, resource: null, description })
      })
    )
  }

  launchGpu(req: LaunchGpuRequest, caller: Caller = "operator"): Either.Either<GpuView, EngineError> {
    const checked = this.admit(req, caller)
    if (Either.isLeft(checked)) return Either.left(checked.left)
    const attachable = this.checkAttachments(req)
    if (Either.isLeft(attachable)) return Either.left(attachable.left)
    const { rate } = checked.right
    const units = req.gpu_count * req.node_count
    const hold = holdMicros(rate, units, req.estimated_duration_hours)
    const covered = this.covers(req.account, hold)
    if (Either.isLeft(covered)) return Either.left(covered.left)
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "launch_gpu", { ...req })
        const input: GpuInstanceInput = {
          id: req.id,
          account: req.account,
          kind: req.kind,
          gpu: req.gpu,
          gpu_count: req.gpu_count,
          node_count: req.node_count,
          region: req.region,
          image: req.image ?? null,
          hourly_rate_micros: rate.toString(),
          estimated_duration_hours: req.estimated_duration_hours,
          created_at: at,
          drive: req.drive ?? null,
          filesystems: req.filesystems ?? []
        }
        const entry = this.launch({ kind: "gpu", id: req.id, actor: createActor(this.machine, { input, clock: this.clock }), alarm: null }, at)
        this.attachStorageOf(entry, at)
        return viewOf(entry.actor.getSnapshot(), at)
      })
    )
  }

  extend(id: string, hours: number, caller: Caller = "operator"): Either.Either<ExtendResult, EngineError> {
    if (!Number.isSafeInteger(hours) || hours < policy.DURATION_HOURS_MIN || hours > policy.DURATION_HOURS_MAX) {
      return Either.left(
        new ValidationError({ code: "invalid_hours", field: "hours", message: `hours must be a whole number from ${policy.DURATION_HOURS_MIN} to ${policy.DURATION_HOURS_MAX}` })
      )
    }
    const found = this.findActive(id, caller, "extend")
    if (Either.isLeft(found)) return Either.left(found.left)
    const entry = found.right
    if (entry.kind !== "gpu") {
      return Either.left(new Conflict({ code: "invalid_state", id, status: statusOf(entry), message: `${id} is an inference instance: it renews every 24 h and has nothing to extend` }))
    }
    const ctx = entry.actor.getSnapshot().context
    const amount = holdMicros(rateOf(ctx), gpuUnits(ctx), hours)
    const covered = this.covers(ctx.account, amount)
    if (Either.isLeft(covered)) return Either.left(covered.left)
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "extend", { id, hours })
        this.dispatch(entry, { type: "extend", at, hours })
        return {
          additional_cost_micros: amount,
          new_balance_micros: this.ledger.balance(ctx.account),
          deadline_at: entry.actor.getSnapshot().context.deadline_at
        }
      })
    )
  }

  terminate(id: string, caller: Caller = "operator"): Either.Either<ResourceView, NotFound | Conflict> {
    const entry = this.live.get(id)
    if (entry?.kind === "storage") return this.deleteStorage(id, caller)
    if (entry !== undefined && statusOf(entry) === "terminating" && this.visible(accountOf(entry), caller)) {
      // A second stop while the first is under way changes nothing: the hold settled once.
      return Either.right(viewOfEntry(entry, this.clock.now()))
    }
    const found = this.findActive(id, caller, "terminate")
    if (Either.isLeft(found)) return Either.left(found.left)
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        const behind = this.worldBehind()
        this.journal.append(at, "terminate", { id, ...behind })
        // What the stop settles must be what the pods ran: look at them first (a preemption
        // whose event has not come yet is billed only up to when it happened).
        this.reconciler.reconcileOne(id)
        this.dispatch(found.right, { type: "terminate", at, ...behind })
        return viewOfEntry(found.right, at)
      })
    )
  }

  describe(id: string, caller: Caller = "operator"): Either.Either<ResourceView, NotFound> {
    const entry = this.live.get(id) ?? this.stored(id)
    if (entry === undefined || !this.visible(accountOf(entry), caller)) {
      return Either.left(new NotFound({ code: "resource_not_found", id }))
    }
    return Either.right(viewOfEntry(entry, this.clock.now()))
  }

  list(account: string, query: ListQuery, caller: Caller = "operator"): Either.Either<ReadonlyArray<ResourceView>, NotFound> {
    if (!this.visible(account, caller) || !this.ledger.hasAccount(account)) return Either.left(new NotFound({ code: "account_not_found", id: account }))
    const at = this.clock.now()
    return Either.right(
      this.ledger.resourcesOf(account, query.kinds, query.after, query.limit).map((record) => {
        const entry = this.live.get(record.id) ?? this.fromRecord(record)
        return viewOfEntry(entry, at)
      })
    )
  }

  balance(account: string): Either.Either<Micros, NotFound> {
    return this.ledger.hasAccount(account) ? Either.right(this.ledger.balance(account)) : Either.left(new NotFound({ code: "account_not_found", id: account }))
  }

  // ── the model registry and inference instances (SPEC §4) ─────────────────────────────
  registerModel(req: RegisterModelRequest, caller: Caller = "operator"): Either.Either<void, EngineError> {
    if (!this.ledger.hasAccount(req.account) || !this.visible(req.account, caller)) return Either.left(new NotFound({ code: "account_not_found", id: req.account }))
    if (!policy.MODEL_NAME_RE.test(req.model)) return invalid("invalid_model", "model", "a model name is 1-128 letters, digits, '.', '_', '/' or '-'")
    if (!(policy.MODEL_SOURCES as ReadonlyArray<string>).includes(req.source)) return invalid("invalid_source", "source", `source is one of ${policy.MODEL_SOURCES.join(", ")}`)
    if (req.source === "shared_fs") {
      if (req.filesystem == null) return invalid("filesystem_required", "filesystem", "a shared_fs model names the shared filesystem its weights are on")
      const fs = this.storageEntry(req.filesystem)
      if (fs === undefined || accountOf(fs) !== req.account || fs.actor.getSnapshot().status !== "active") {
        return Either.left(new NotFound({ code: "resource_not_found", id: req.filesystem }))
      }
      // Answered as a launch that names a drive among its filesystems is (checkAttachments).
      if (fs.actor.getSnapshot().context.kind !== "shared_fs") {
        return Either.left(new ValidationError({ code: "wrong_storage_kind", field: "filesystem", message: `${req.filesystem} is not a shared filesystem` }))
      }
    } else if (req.filesystem != null) {
      // Only a shared_fs model's weights are on a filesystem; one named for another source would be kept and never used.
      return invalid("unexpected_filesystem", "filesystem", `a ${req.source} model does not name a filesystem; only a shared_fs model does`)
    }
    if (this.catalog.gpuRate(req.gpu) === undefined) return invalid("unknown_gpu", "gpu", `no GPU type ${req.gpu} in the catalog`)
    if (!Number.isSafeInteger(req.gpu_count) || req.gpu_count < 1 || req.gpu_count > policy.GPU_COUNT_MAX) {
      return invalid("invalid_gpu_count", "gpu_count", `gpu_count must be a whole number from 1 to ${policy.GPU_COUNT_MAX}`)
    }
    if (this.ledger.model(req.account, req.model) !== undefined) {
      return Either.left(new Conflict({ code: "already_exists", id: req.model, status: "registered", message: `model ${req.model} is already registered` }))
    }
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "register_model", { ...req })
        this.ledger.registerModel({ account: req.account, name: req.model, source: req.source, filesystem: req.filesystem ?? null, gpu: req.gpu, gpu_count: req.gpu_count, created_at: at })
      })
    )
  }

  deleteModel(account: string, model: string, caller: Caller = "operator"): Either.Either<void, NotFound | Conflict> {
    if (!this.visible(account, caller) || this.ledger.model(account, model) === undefined) {
      return Either.left(new NotFound({ code: "model_not_found", id: model }))
    }
    const active = (e: LiveEntry) => ["pending", "loading", "running", "preempted"].includes(statusOf(e))
    // The smallest id names the user, so the answer does not hang on the order actors were loaded.
    const users = [...(this.byAccount.get(account) ?? [])].filter((id) => {
      const e = this.live.get(id)
      return e !== undefined && e.kind === "inference" && e.actor.getSnapshot().context.model === model && active(e)
    })
    if (users.length > 0) {
      const user = users.reduce((a, b) => (b < a ? b : a))
      return Either.left(new Conflict({ code: "invalid_state", id: model, status: "in_use", message: `model ${model} is in use by instance ${user}; delete the instance first` }))
    }
    return Either.right(
      this.unitOfWork(() => {
        this.journal.append(this.clock.now(), "delete_model", { account, model })
        this.ledger.deleteModel(account, model)
      })
    )
  }

  launchInference(req: LaunchInferenceRequest, caller: Caller = "operator"): Either.Either<InferenceView, EngineError> {
    const fresh = this.checkNewId(req.id)
    if (Either.isLeft(fresh)) return Either.left(fresh.left)
    if (!this.ledger.hasAccount(req.account) || !this.visible(req.account, caller)) return Either.left(new NotFound({ code: "account_not_found", id: req.account }))
    const model = this.ledger.model(req.account, req.model)
    if (model === undefined) return Either.left(new NotFound({ code: "model_not_found", id: req.model }))
    // Decision: the replicas go to the first regions by name (2 for HuggingFace and platform
    // models); a catalog with one region gets one replica. A shared_fs model runs one replica
    // in its filesystem's region, with the filesystem mounted.
    const fs = model.source === "shared_fs" && model.filesystem !== null ? this.storageEntry(model.filesystem) : undefined
    if (model.source === "shared_fs") {
      if (fs === undefined || fs.actor.getSnapshot().status !== "active") return Either.left(new NotFound({ code: "resource_not_found", id: model.filesystem ?? "" }))
      if (statusOf(fs) === "suspended") {
        return Either.left(new Conflict({ code: "invalid_state", id: fs.id, status: "suspended", message: `${fs.id} is suspended: recharge to use it again` }))
      }
    }
    const regions = fs !== undefined ? [fs.actor.getSnapshot().context.region] : this.cluster.regionNames().slice(0, policy.INFERENCE_REPLICAS_MULTI_REGION)
    if (regions.length === 0) return invalid("no_region", "model", "no region to run the model in")
    for (const region of regions) {
      if (model.gpu_count > this.cluster.region(region)!.gpus_per_node) return invalid("gpu_count_exceeds_node", "gpu_count", "gpu_count exceeds GPUs per node")
    }
    const rate = this.catalog.gpuRate(model.gpu)
    if (rate === undefined) return invalid("unknown_gpu", "gpu", `no GPU type ${model.gpu} in the catalog`)
    const hold = holdMicros(rate, model.gpu_count * regions.length, policy.INFERENCE_CYCLE_MS / policy.MS_PER_HOUR)
    const covered = this.covers(req.account, hold)
    if (Either.isLeft(covered)) return Either.left(covered.left)
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "launch_inference", { ...req })
        const input: InferenceInput = {
          id: req.id,
          account: req.account,
          model: req.model,
          source: model.source,
          gpu: model.gpu,
          gpu_count: model.gpu_count,
          regions,
          hourly_rate_micros: rate.toString(),
          first_hold_micros: hold.toString(),
          created_at: at,
          filesystem: fs?.id ?? null
        }
        const entry = this.launch({ kind: "inference", id: req.id, actor: createActor(this.inference, { input, clock: this.clock }), alarm: null }, at)
        this.attachStorageOf(entry, at)
        return inferenceViewOf(entry.actor.getSnapshot())
      })
    )
  }

  // ── storage (SPEC §5) ───────────────────────────────────────────────────────────────
  createStorage(req: CreateStorageRequest, caller: Caller = "operator"): Either.Either<StorageView, EngineError> {
    const fresh = this.checkNewId(req.id)
    if (Either.isLeft(fresh)) return Either.left(fresh.left)
    if (!this.ledger.hasAccount(req.account) || !this.visible(req.account, caller)) return Either.left(new NotFound({ code: "account_not_found", id: req.account }))
    if (!Number.isSafeInteger(req.size_gb) || req.size_gb < 1 || req.size_gb > policy.STORAGE_SIZE_GB_MAX) {
      return invalid("invalid_size", "size_gb", `size_gb must be a whole number from 1 to ${policy.STORAGE_SIZE_GB_MAX}`)
    }
    if (this.cluster.region(req.region) === undefined) return invalid("unknown_region", "region", `no region ${req.region}`)
    const rate = this.catalog.storageRate(req.kind)
    if (rate === undefined) return invalid("storage_not_priced", "kind", `the catalog has no price for ${req.kind}`)
    // Decision (docs/POLICY.md, Storage): storage is billed after the fact, at midnight, so
    // creating it takes no hold; but the balance must cover one day of it and of the account's
    // other storage that midnight charges. Otherwise the next midnight would suspend some of it
    // at once, and an account at $0 could keep any amount of disk for nothing.
    const day = rate * BigInt(req.size_gb) + this.storageDayMicros(req.account)
    const spendable = this.spendable(req.account)
    if (day > 0n && spendable < day) return Either.left(new InsufficientBalance({ account: req.account, required_micros: day, balance_micros: spendable }))
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "create_storage", { ...req })
        const input: StorageInput = { id: req.id, account: req.account, kind: req.kind, size_gb: req.size_gb, region: req.region, daily_rate_micros: rate.toString(), created_at: at }
        const entry = this.launch({ kind: "storage", id: req.id, actor: createActor(this.storage, { input, clock: this.clock }), alarm: null }, at)
        this.cluster.ensureVolume(volumeOf(entry.actor.getSnapshot().context))
        return storageViewOf(entry.actor.getSnapshot())
      })
    )
  }

  /** Deletes storage and its data; refused 409 while an instance has it attached (SPEC §5). */
  deleteStorage(id: string, caller: Caller = "operator"): Either.Either<ResourceView, NotFound | Conflict> {
    const entry = this.live.get(id)
    if (entry === undefined || entry.kind !== "storage" || !this.visible(accountOf(entry), caller) || entry.actor.getSnapshot().status !== "active") {
      // A deleted one is still shown (GET answers it `deleted`): deleting it again is a
      // conflict with its state, as a second terminate of a terminated instance is, not a 404.
      // Deleted in this batch, it is still in memory (its machine done) until the flush.
      const stored = entry === undefined ? this.ledger.resource(id) : undefined
      const deleted =
        entry !== undefined ? entry.kind === "storage" && statusOf(entry) === "deleted" && this.visible(accountOf(entry), caller)
        : stored !== undefined && STORAGE_KINDS.includes(stored.kind) && stored.status === "deleted" && this.visible(stored.account, caller)
      if (deleted) {
        return Either.left(new Conflict({ code: "invalid_state", id, status: "deleted", message: `${id} is already deleted` }))
      }
      return Either.left(new NotFound({ code: "resource_not_found", id }))
    }
    const ctx = entry.actor.getSnapshot().context
    if (ctx.attached_to.length > 0) {
      return Either.left(
        new Conflict({ code: "invalid_state", id, status: "in_use", message: `${id} is attached to ${ctx.attached_to.join(", ")}; terminate the instance, then delete it` })
      )
    }
    // Suspended storage still belongs to the instances it goes back to when restored (and in
    // a cluster their pods still mount it): deleting it is refused like an attached one's.
    const owners = ctx.suspended_from
    if (owners.length > 0) {
      return Either.left(
        new Conflict({ code: "invalid_state", id, status: "suspended", message: `${id} is suspended and goes back to ${owners.join(", ")} when restored; terminate the instance, then delete it` })
      )
    }
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "delete_storage", { id })
        this.dispatch(entry, { type: "delete", at })
        this.cluster.deleteVolume(id)
        return storageViewOf(entry.actor.getSnapshot())
      })
    )
  }

  /** What a launch asks to attach, checked: same account, same region, usable, a drive free. */
  private checkAttachments(req: LaunchGpuRequest): Either.Either<void, EngineError> {
    const wanted = [...(req.drive == null ? [] : [{ id: req.drive, kind: "cloud_drive" as const, field: "drive" }]), ...(req.filesystems ?? []).map((id) => ({ id, kind: "shared_fs" as const, field: "filesystems" }))]
    // One mount per filesystem: a second would attach it twice, and one detach would not release it.
    const twice = wanted.find((w, i) => wanted.findIndex((o) => o.id === w.id) !== i)
    if (twice !== undefined) return Either.left(new ValidationError({ code: "duplicate_storage", field: twice.field, message: `${twice.id} is listed more than once` }))
    for (const w of wanted) {
      const entry = this.live.get(w.id)
      if (entry === undefined || entry.kind !== "storage" || accountOf(entry) !== req.account || entry.actor.getSnapshot().status !== "active") {
        return Either.left(new NotFound({ code: "resource_not_found", id: w.id }))
      }
      const ctx = entry.actor.getSnapshot().context
      if (ctx.kind !== w.kind) return Either.left(new ValidationError({ code: "wrong_storage_kind", field: w.field, message: `${w.id} is not a ${w.kind === "cloud_drive" ? "cloud drive" : "shared filesystem"}` }))
      if (ctx.region !== req.region) return Either.left(new ValidationError({ code: "storage_region_mismatch", field: w.field, message: `${w.id} is in ${ctx.region}, the instance in ${req.region}` }))
      const status = statusOf(entry)
      if (status === "suspended") return Either.left(new Conflict({ code: "invalid_state", id: w.id, status, message: `${w.id} is suspended: recharge to use it again` }))
      if (w.kind === "cloud_drive" && ctx.attached_to.length > 0) {
        return Either.left(new Conflict({ code: "invalid_state", id: w.id, status, message: `drive ${w.id} is attached to ${ctx.attached_to[0]}` }))
      }
    }
    return Either.right(undefined)
  }

  private storageEntry(id: string): Extract<LiveEntry, { kind: "storage" }> | undefined {
    const entry = this.live.get(id)
    return entry?.kind === "storage" ? entry : undefined
  }

  /** A launched instance takes its storage: its drive and filesystems, or its model's filesystem. */
  private attachStorageOf(instance: LiveEntry, at: number): void {
    for (const id of storageOf(instance)) {
      const entry = this.storageEntry(id)
      if (entry !== undefined) this.dispatch(entry, { type: "attach", at, instance: instance.id })
    }
  }

  /** A new resource: live from now, its machine started (entry actions: hold, pods) in this unit of work. */
  private launch<E extends LiveEntry>(entry: E, at: number): E {
    this.live.set(entry.id, entry)
    if (entry.kind !== "storage") this.withPods.set(entry.id, entry)
    this.run(entry, () => entry.actor.start(), null, at)
    return entry
  }

  /** An instance that stops releases its storage; the data stays (SPEC §5). */
  private detachStorageOf(instance: string, storage: ReadonlyArray<string>, at: number): void {
    for (const id of storage) {
      const entry = this.storageEntry(id)
      if (entry !== undefined) this.deferred.push(() => this.dispatch(entry, { type: "detach", at, instance }))
    }
  }

  private armStorageBilling(): void {
    if (this.stopped) return
    const next = nextMark(this.clock.now(), policy.STORAGE_BILLING_INTERVAL_MS)
    this.storageTimer = this.clock.schedule(next, () => this.onStorageBilling(), { lane: Lane.engine, key: "storage" })
  }

  /**
   * 00:00 UTC: every storage resource is charged `size_gb × daily_rate`, attached or idle.
   * Decision: storage whose charge the balance cannot cover is suspended instead (nothing is
   * taken, no debt accrues), and suspended storage is not charged; a credit restores it.
   */
  private onStorageBilling(): void {
    this.storageTimer = null
    const ids = [...this.live.values()].filter((e) => e.kind === "storage").map((e) => e.id).sort()
    // The days restores paid are forgotten once the midnight's unit has read them: if it waits
    // for the database (src/backlog.ts), they wait with it.
    if (ids.length === 0) this.paidByRestore.clear()
    else {
      this.background(() => {
        const at = this.clock.now()
        this.journal.append(at, "storage_billing", { count: ids.length })
        for (const id of ids) {
          const entry = this.storageEntry(id)!
          const status = statusOf(entry)
          if (status !== "available" && status !== "in_use") continue
          if (this.paidByRestore.get(id) === dayOf(at)) continue
          const ctx = entry.actor.getSnapshot().context
          const amount = dayMicrosOf(ctx)
          // Free storage (a $0 rate) writes no row: the ledger holds no zero-amount rows.
          if (amount === 0n) continue
          if (this.spendable(ctx.account) < amount) {
            this.dispatch(entry, { type: "suspend", at })
            continue
          }
          this.chargeStorageDay(ctx, at, ctx.attached_to.length > 0)
        }
        this.paidByRestore.clear()
      })
    }
    this.armStorageBilling()
  }

  /** What the next midnight charges the account's storage (available or in use; not suspended). */
  private storageDayMicros(account: string): Micros {
    let day = 0n
    // A sum of integers: the order the resources are visited does not change it.
    for (const id of this.byAccount.get(account) ?? []) {
      const entry = this.storageEntry(id)
      if (entry === undefined) continue
      const status = statusOf(entry)
      if (status !== "available" && status !== "in_use") continue
      const ctx = entry.actor.getSnapshot().context
      day += dayMicrosOf(ctx)
    }
    return day
  }

  /** One day of storage: `size_gb × daily_rate`, one `storage_billing` row naming it. */
  private chargeStorageDay(ctx: StorageSnapshot["context"], at: number, attached: boolean): void {
    const rate = BigInt(ctx.daily_rate_micros)
    this.ledger.post({
      account: ctx.account,
      at,
      kind: "storage_billing",
      amount_micros: -dayMicrosOf(ctx),
      resource: ctx.id,
      description: policy.descriptions.storage(ctx.kind, ctx.id, ctx.size_gb, formatDollars(rate), attached)
    })
    this.lowBalance.touch(ctx.account)
  }

  /**
   * At the end of a unit of work, an account money came back to (a credit, a settlement's
   * refund) gets its suspended storage back if that left it money to spend: the balance is
   * restored (the manual), whoever restored it. After the unit's own work, so an instance
   * stopping in it has let go of its storage first.
   */
  private restoreReplenished(): void {
    if (this.replenished.size === 0) return
    const at = this.clock.now()
    for (const account of [...this.replenished].sort()) this.restoreStorage(account, at)
    this.replenished.clear()
  }

  /**
   * Money to spend makes the account's suspended storage usable again, once it pays for the
   * day: storage is suspended only at a midnight it could not pay for, so the day it comes back
   * in is unpaid, and is charged now (one `storage_billing` row, as at midnight). Storage the
   * balance cannot pay a day of stays suspended. Decision (POLICY.md): before, a top-up of a
   * cent restored it for the rest of the day for nothing, every day.
   */
  private restoreStorage(account: string, at: number): void {
    if (this.spendable(account) <= 0n) return
    for (const id of [...(this.byAccount.get(account) ?? [])].sort()) {
      const entry = this.storageEntry(id)
      if (entry === undefined || statusOf(entry) !== "suspended") continue
      const ctx = entry.actor.getSnapshot().context
      const amount = dayMicrosOf(ctx)
      if (amount > 0n) {
        if (this.spendable(account) < amount) continue
        this.chargeStorageDay(ctx, at, ctx.suspended_from.length > 0)
        this.paidByRestore.set(id, dayOf(at))
      }
      this.dispatch(entry, { type: "restore", at })
    }
  }

  // ── API usage (SPEC §6) ──────────────────────────────────────────────────────────────
  apiRequest(req: Omit<ApiRequest, "at">, caller: Caller = "operator"): Either.Either<ChargeResult, MeteringError> {
    if (!this.visible(req.account, caller)) return Either.left(new NotFound({ code: "account_not_found", id: req.account }))
    return this.unitOfWork(() => {
      const at = this.clock.now()
      // A literal of the request's own fields, not a spread: this runs once per `/v1` request.
      const charged = this.metering.charge({ account: req.account, model: req.model, input_tokens: req.input_tokens, output_tokens: req.output_tokens, images: req.images, seconds: req.seconds, at })
      if (Either.isRight(charged)) {
        this.journal.append(at, "api_request", req)
        this.lowBalance.touch(req.account)
        this.armMeteringFlush()
      }
      return charged
    })
  }

  settleApiUsage(): void {
    // After a unit rolled back (see `unitOfWork`), once fenced, or while units wait for the
    // database (they are not run at shutdown), nothing more is written: usage still in an open
    // minute is lost with the rest of memory, as in a crash. With no minute open (per-request
    // rows, the default) there is nothing to post, and no transaction is begun: a shutdown
    // does not wait for a lock another connection holds.
    if (this.broken !== null || this.deposed || this.backlog.holds || this.metering.pendingBuckets === 0) return
    this.unitOfWork(() => {
      for (const bucket of this.metering.flushAll(this.clock.now())) this.lowBalance.touch(bucket.account)
    })
  }

  /** One clock timer for the earliest aggregation bucket to close. */
  private armMeteringFlush(): void {
    if (this.stopped) return
    const due = this.metering.nextFlushAt()
    if (due === undefined || this.meteringTimer?.at === due) return
    if (this.meteringTimer !== null) this.clock.clearTimeout(this.meteringTimer.handle)
    const handle = this.clock.schedule(
      due,
      () => {
        this.meteringTimer = null
        this.background(() => {
          for (const bucket of this.metering.flush(this.clock.now())) this.lowBalance.touch(bucket.account)
          this.armMeteringFlush()
        })
      },
      { lane: Lane.engine, key: "metering" }
    )
    this.meteringTimer = { at: due, handle }
  }

  /** What an account can spend: its balance less API usage admitted but not yet posted. */
  spendable(account: string): Micros {
    return this.metering.spendableMicros(account)
  }

  userInstance(account: string, model: string, id: string): UserInstanceState {
    const entry = this.live.get(id)
    if (entry === undefined || entry.kind !== "inference" || accountOf(entry) !== account || entry.actor.getSnapshot().context.model !== model) {
      return this.finishedInstance(account, model, id)
    }
    const ctx = entry.actor.getSnapshot().context
    const status = statusOf(entry)
    // Stopping counts as stopped: its reason is set the moment the stop is decided.
    if (status === "terminating" || status === "terminated" || status === "failed") return { status: "terminated", healthy_regions: [], termination_reason: ctx.termination_reason }
    return { status: "active", healthy_regions: healthyRegions(ctx), termination_reason: null }
  }

  /**
   * An instance out of memory (finished), or one the caller named wrongly: its stored record
   * answers. Another account's id is `missing`, exactly as an id never used. The stop reason
   * comes from the last saved snapshot, read only here, on a refusal's path (a running
   * instance never gets here), and only when the name is the instance's own.
   */
  private finishedInstance(account: string, model: string, id: string): UserInstanceState {
    const record = this.ledger.resource(id)
    if (record === undefined || record.account !== account || record.kind !== INFERENCE_KIND) return { status: "missing", healthy_regions: [], termination_reason: null }
    const stored = readSnapshot(record)
    assert(stored.kind === "inference", () => `${id} is stored as ${record.kind}`)
    const ctx = stored.snapshot.context
    return { status: "terminated", healthy_regions: [], termination_reason: ctx.model === model ? ctx.termination_reason : null }
  }

  // ── admission ─────────────────────────────────────────────────────────────────────────
  private admit(req: LaunchGpuRequest, caller: Caller): Either.Either<{ rate: Micros }, EngineError> {
    const fresh = this.checkNewId(req.id)
    if (Either.isLeft(fresh)) return Either.left(fresh.left)
    if (caller !== "operator" && caller.account !== req.account) return Either.left(new NotFound({ code: "account_not_found", id: req.account }))
    if (!this.ledger.hasAccount(req.account)) return Either.left(new NotFound({ code: "account_not_found", id: req.account }))
    const hours = req.estimated_duration_hours
    if (!Number.isSafeInteger(hours) || hours < policy.DURATION_HOURS_MIN || hours > policy.DURATION_HOURS_MAX) {
      return invalid("invalid_duration", "estimated_duration_hours", `estimated_duration_hours must be a whole number from ${policy.DURATION_HOURS_MIN} to ${policy.DURATION_HOURS_MAX}`)
    }
    if (!Number.isSafeInteger(req.gpu_count) || req.gpu_count < 1 || req.gpu_count > policy.GPU_COUNT_MAX) {
      return invalid("invalid_gpu_count", "gpu_count", `gpu_count must be a whole number from 1 to ${policy.GPU_COUNT_MAX}`)
    }
    if (!Number.isSafeInteger(req.node_count) || req.node_count < 1 || req.node_count > policy.NODE_COUNT_MAX) {
      return invalid("invalid_node_count", "node_count", `node_count must be a whole number from 1 to ${policy.NODE_COUNT_MAX}`)
    }
    const rate = this.catalog.gpuRate(req.gpu)
    if (rate === undefined) return invalid("unknown_gpu", "gpu", `no GPU type ${req.gpu} in the catalog`)
    const region = this.cluster.region(req.region)
    if (region === undefined) return invalid("unknown_region", "region", `no region ${req.region}`)
    if (req.gpu_count > region.gpus_per_node) return invalid("gpu_count_exceeds_node", "gpu_count", "gpu_count exceeds GPUs per node")
    if (req.node_count > region.nodes) return invalid("node_count_exceeds_region", "node_count", "node_count exceeds nodes in region")
    return Either.right({ rate })
  }

  /** A new resource's id: well formed (400) and never used before, live or finished (409). */
  private checkNewId(id: string): Either.Either<void, ValidationError | Conflict> {
    if (!policy.RESOURCE_ID_RE.test(id)) return invalid("invalid_id", "id", "id must be 1-63 letters, digits, '.', '_' or '-'")
    if (this.live.has(id) || this.ledger.resource(id) !== undefined) {
      return Either.left(new Conflict({ code: "already_exists", id, status: "exists", message: `resource ${id} already exists` }))
    }
    return Either.right(undefined)
  }

  /** 402 unless the account can spend `amount` now (SPEC §2: the hold must be covered). */
  private covers(account: string, amount: Micros): Either.Either<void, InsufficientBalance> {
    const balance = this.spendable(account)
    return balance < amount ? Either.left(new InsufficientBalance({ account, required_micros: amount, balance_micros: balance })) : Either.right(undefined)
  }

  private visible(account: string, caller: Caller): boolean {
    return caller === "operator" || caller.account === account
  }

  /** A finished resource, read back from its last snapshot (a stopped actor, not started). */
  private stored(id: string): LiveEntry | undefined {
    const record = this.ledger.resource(id)
    return record === undefined ? undefined : this.fromRecord(record)
  }

  /**
   * An entry over a stored snapshot, its actor not started: for reading a view (or, started,
   * for a restore). The snapshot is read by `readSnapshot`, which brings one an earlier version
   * wrote to the current context (docs/ENGINE.md, "Upgrades").
   */
  private fromRecord(record: ResourceRecord): LiveEntry {
    const id = record.id
    const stored = readSnapshot(record)
    switch (stored.kind) {
      case "storage":
        return { kind: "storage", id, actor: createActor(this.storage, { snapshot: stored.snapshot, input: stored.snapshot.context, clock: this.clock }), alarm: null }
      case "inference":
        return { kind: "inference", id, actor: createActor(this.inference, { snapshot: stored.snapshot, input: stored.snapshot.context, clock: this.clock }), alarm: null }
      case "gpu":
        return { kind: "gpu", id, actor: createActor(this.machine, { snapshot: stored.snapshot, input: stored.snapshot.context, clock: this.clock }), alarm: null }
    }
  }

  /** The live, not-stopping actor for `id`: 404 if unknown or another account's, 409 if stopped. */
  private findActive(id: string, caller: Caller, action: string): Either.Either<LiveEntry, NotFound | Conflict> {
    const live = this.live.get(id)
    // A resource out of memory has finished: its stored record (status and owner, as its last
    // snapshot was saved) answers, without an actor built over the snapshot.
    const found = live === undefined ? this.ledger.resource(id) : { account: accountOf(live), status: statusOf(live) }
    if (found === undefined || !this.visible(found.account, caller)) {
      return Either.left(new NotFound({ code: "resource_not_found", id }))
    }
    const status = found.status
    const active = status === "pending" || status === "loading" || status === "running" || status === "preempted"
    if (live === undefined || !active) {
      return Either.left(new Conflict({ code: "instance_not_active", id, status, message: `cannot ${action} instance ${id}: it is ${status}` }))
    }
    return Either.right(live)
  }

  // ── dispatch: one event to one actor, its intents carried out ─────────────────────────
  private dispatch(entry: LiveEntry, event: GpuInstanceEvent | InferenceEvent | StorageEvent, cause: string | null = null): void {
    // A machine that reached its final state in this unit of work hears nothing more
    // (a pod's deletion after the instance failed, say); it leaves memory at the flush.
    if (entry.actor.getSnapshot().status !== "active") return
    const send = () =>
      entry.kind === "gpu" ? entry.actor.send(event as GpuInstanceEvent)
      : entry.kind === "inference" ? entry.actor.send(event as InferenceEvent)
      : entry.actor.send(event as StorageEvent)
    // A stop the world dates earlier than now (learned late) is logged when billing stopped,
    // so the transitions say what was billed; notifications and money rows are stamped now.
    const stoppedAt =
      !("ended_at" in event) || event.ended_at === undefined ? event.at
      : entry.kind === "gpu" ? billingEndOf(entry.actor.getSnapshot().context, event)
      : entry.kind === "inference" && event.type === "replica.pod" ? billingEndOf(entry.actor.getSnapshot().context.replicas[event.region] ?? { billing_since: null }, event)
      : event.at
    // A stop requested while the world was behind (`settle_at_deleted`) was logged at the
    // request; its pods' deletion tells where billing really ended (the request, or their own
    // earlier stop), and the transitions are made to say so (SPEC §9.3): a GPU resource whose
    // pods had stopped before the request is logged `preempted` from their stop to the request
    // (as it would have been, heard in time); a replica's move into `deleted` is logged where its
    // stretch's billing ended, as its cycle settles only now.
    const deferred = event.type === "pod.deleted" || (event.type === "replica.pod" && event.pod === "deleted") ? deferredStopEnd(entry, event) : null
    if (deferred?.kind === "gpu") this.ledger.splitTransition(entry.id, "terminating", deferred.requested_at, "preempted", deferred.at)
    this.run(entry, send, statusOf(entry), event.at, event, cause, stoppedAt, deferred?.kind === "replica" ? deferred.at : stoppedAt)
  }

  private run(entry: LiveEntry, step: () => void, before: string | null, at: number, event?: GpuInstanceEvent | InferenceEvent | StorageEvent, cause: string | null = null, stoppedAt = at, replicaStoppedAt = stoppedAt): void {
    assert(this.depth > 0, () => "dispatch outside a unit of work")
    assert(this.intents.length === 0, () => "re-entrant dispatch")
    const replicasBefore = replicaStatuses(entry)
    // Counted before anything can throw: once the actor moved, a rollback leaves memory ahead.
    this.changes++
    step()
    const intents = this.intents
    this.intents = []
    for (const intent of intents) this.carryOut(intent, at)
    const after = statusOf(entry)
    const reasonOf = (): string | null =>
      entry.kind !== "storage" && (after === "terminating" || after === "terminated" || after === "failed") ? entry.actor.getSnapshot().context.termination_reason
      : event?.type === "watchdog" ? "watchdog_healed"
      : cause
    // Each region of an inference instance has its own status (SPEC §4): logged as `id@region`.
    for (const [region, status] of Object.entries(replicaStatuses(entry))) {
      const was = replicasBefore[region] ?? "pending"
      // A move into `failed` carries its reason, as an instance's does (docs/TIMELINE-EXTENSIONS.md).
      if (status !== was) this.ledger.recordTransition({ at: replicaStoppedAt, resource: replicaResource(entry.id, region), from_state: was, to_state: status, reason: status === "failed" ? "failed" : cause })
    }
    if (before !== null && after !== before) {
      this.ledger.recordTransition({ at: stoppedAt, resource: entry.id, from_state: before, to_state: after, reason: reasonOf() })
    }
    const stopping = (s: string | null) => s === "terminating" || s === "terminated" || s === "failed"
    const stoppedNow = entry.kind !== "storage" && stopping(after) && !stopping(before)
    if (stoppedNow) this.detachStorageOf(entry.id, storageOf(entry), at)
    if (entry.kind === "gpu") {
      if (after === "pending") this.pending.add(entry.id)
      else this.pending.delete(entry.id)
      if (after === "terminating") this.stopping.add(entry.id)
      else this.stopping.delete(entry.id)
    }
    this.dirty.add(entry.id)
    this.reconciler.changed(entry.id)
    this.track(entry)
    if (stoppedNow) this.lowBalance.resourceStopped(accountOf(entry))
    else this.lowBalance.burnChanged(accountOf(entry))
    this.rearm(entry)
    while (this.deferred.length > 0) this.deferred.shift()!()
  }

  private track(entry: LiveEntry): void {
    const account = accountOf(entry)
    const ids = this.byAccount.get(account) ?? new Set<string>()
    ids.add(entry.id)
    this.byAccount.set(account, ids)
  }

  private carryOut(intent: Intent, at: number): void {
    switch (intent.type) {
      case "placeCycleHold":
      case "settleCycle":
      case "createReplicaPods":
      case "deleteReplicaPods":
        return this.carryOutInference(intent, at)
      case "notify":
        this.notifier.notify({ account: intent.ctx.account, resource: intent.ctx.id, at, severity: intent.severity, kind: intent.kind, text: intent.text, data: intent.data ?? null })
        return
    }
    const ctx = intent.ctx
    const rate = rateOf(ctx)
    const units = gpuUnits(ctx)
    const label = policy.unitsLabel(ctx.gpu_count, ctx.node_count)
    switch (intent.type) {
      case "placeHold": {
        const placed = this.ledger.placeHold({
          hold_id: holdIdFor(ctx.id),
          account: ctx.account,
          resource: ctx.id,
          amount_micros: holdMicros(rate, units, ctx.estimated_duration_hours),
          at,
          description: policy.descriptions.hold(ctx.id, ctx.estimated_duration_hours, formatDollars(rate), label)
        })
        // Admission checked the balance a moment ago on this same single thread.
        assert(Either.isRight(placed), () => `hold for ${ctx.id} refused after admission`)
        return
      }
      case "extendHold": {
        const extended = this.ledger.extendHold({
          hold_id: holdIdFor(ctx.id),
          amount_micros: holdMicros(rate, units, intent.hours),
          at,
          description: policy.descriptions.extendHold(ctx.id, intent.hours, formatDollars(rate), label)
        })
        assert(Either.isRight(extended), () => `extension for ${ctx.id} refused after admission`)
        return
      }
      case "settle": {
        assert(ctx.billing_since === null, () => `settle of ${ctx.id} while still billing`)
        this.settle(holdIdFor(ctx.id), ctx.account, ctx.id, costMicros(rate, units, ctx.billable_ms), at)
        return
      }
      case "createPod":
        this.cluster.createWorkload(gpuSpec(ctx))
        return
      case "deletePod":
        this.cluster.deleteWorkload(podNameFor(ctx.id))
        return
    }
  }

  private carryOutInference(intent: Extract<Intent, { ictx: InferenceContext }>, at: number): void {
    const ctx = intent.ictx
    const rate = BigInt(ctx.hourly_rate_micros)
    switch (intent.type) {
      case "placeCycleHold": {
        const cycle = ctx.cycle
        const placed = this.ledger.placeHold({
          hold_id: cycleHoldIdFor(ctx.id, cycle.number),
          account: ctx.account,
          resource: ctx.id,
          amount_micros: BigInt(cycle.hold_micros),
          at,
          description: cycle.partial
            ? policy.descriptions.inferencePartialHold(ctx.id, cycle.number, policy.hoursToTenths(cycle.ends_at - cycle.started_at))
            : policy.descriptions.inferenceHold(ctx.id, cycle.number, formatDollars(rate), ctx.gpu_count, ctx.regions.length)
        })
        // The renewal was computed from this balance in the same unit of work.
        assert(Either.isRight(placed), () => `cycle ${cycle.number} hold for ${ctx.id} refused after admission`)
        return
      }
      case "settleCycle":
        this.settle(cycleHoldIdFor(ctx.id, ctx.cycle.number), ctx.account, ctx.id, costMicros(rate, ctx.gpu_count, cycleBillableMsAt(ctx, intent.at)), at)
        return
      case "createReplicaPods":
        for (const region of ctx.regions) this.cluster.createWorkload(replicaSpec(ctx, region))
        return
      case "deleteReplicaPods":
        for (const region of ctx.regions) this.cluster.deleteWorkload(podNameFor(replicaResource(ctx.id, region)))
        return
    }
  }

  private settle(hold_id: string, account: string, resource: string, consumed_micros: Micros, at: number): void {
    const settlement = this.ledger.settleHold({
      hold_id,
      consumed_micros,
      at,
      refund_description: policy.descriptions.refund(resource),
      overage_description: policy.descriptions.overage(resource)
    })
    assert(
      settlement.consumed_micros - settlement.overage_micros + settlement.refunded_micros === settlement.held_micros,
      () => `settlement of ${hold_id}: consumed + refunded != held`
    )
    if (settlement.refunded_micros > 0n) {
      this.replenished.add(account)
      // Unused credit came back to the wallet: like a top-up, it arms again a warned
      // threshold the account is now clearly above (docs/POLICY.md, "When the balance runs low").
      this.lowBalance.credit(account)
    }
  }

  /** Writes the snapshot of every actor touched in this unit of work; drops finished actors. */
  private flush(): void {
    if (this.dirty.size === 0) return
    const at = this.clock.now()
    for (const id of this.dirty) {
      const entry = this.live.get(id)
      if (entry === undefined) continue
      const snapshot = entry.actor.getSnapshot()
      const finished = snapshot.status === "done"
      this.ledger.saveResource({
        id,
        account: snapshot.context.account,
        kind: entry.kind === "inference" ? INFERENCE_KIND : entry.actor.getSnapshot().context.kind,
        status: statusOf(entry),
        live: !finished,
        snapshot: JSON.stringify(entry.actor.getPersistedSnapshot()),
        snapshot_version: SNAPSHOT_VERSION,
        at
      })
      if (finished) {
        if (entry.alarm !== null) this.clock.clearTimeout(entry.alarm.handle)
        entry.actor.stop()
        this.live.delete(id)
        if (entry.kind !== "storage") for (const pod of Object.values(podsOf(entry))) this.reconciler.gone(pod)
        this.withPods.delete(id)
        this.byAccount.get(snapshot.context.account)?.delete(id)
      }
    }
    this.dirty.clear()
  }

  // ── workers on the clock ──────────────────────────────────────────────────────────────
  /** Arms the actor's next alarm (deadline, warning, cycle end) from its snapshot, replacing the old one. */
  private rearm(entry: LiveEntry): void {
    const next: { at: number; key: string; fire: () => void } | null = (() => {
      if (entry.kind === "gpu") {
        const alarm = nextAlarm(entry.actor.getSnapshot())
        return alarm === null ? null : { at: alarm.at, key: alarmKey(alarm), fire: () => this.onGpuAlarm(entry.id, alarm) }
      }
      if (entry.kind === "storage") return null
      const alarm = inferenceAlarm(entry.actor.getSnapshot())
      return alarm === null ? null : { at: alarm.at, key: "cycle_end", fire: () => this.onCycleEnd(entry.id) }
    })()
    if (entry.alarm !== null && next !== null && entry.alarm.at === next.at && entry.alarm.key === next.key) return
    if (entry.alarm !== null) this.clock.clearTimeout(entry.alarm.handle)
    entry.alarm = null
    if (next === null) return
    const handle = this.clock.schedule(next.at, next.fire, { lane: Lane.engine, key: alarmClockKey(entry) })
    entry.alarm = { at: next.at, key: next.key, handle }
  }

  private onGpuAlarm(id: string, alarm: GpuAlarm): void {
    const entry = this.live.get(id)
    if (entry === undefined || entry.kind !== "gpu") return
    entry.alarm = null
    this.background(() => {
      const at = this.clock.now()
      const behind = alarm.event === "deadline" ? this.worldBehind() : {}
      this.journal.append(at, "alarm", { id, ...alarm, ...behind })
      // What the deadline settles must be what the pod ran: look at it first.
      if (alarm.event === "deadline") this.reconciler.reconcileOne(id)
      if (alarm.event === "duration_warning") {
        this.dispatch(entry, { type: "duration_warning", at, minutes: alarm.minutes })
      } else {
        this.dispatch(entry, { type: "deadline", at, credit_depleted: this.creditDepleted(entry.actor.getSnapshot().context, at), ...behind })
      }
    })
  }

  /** Every 24 h (or when a partial hold runs out): settle the cycle and renew, or stop (SPEC §4). */
  private onCycleEnd(id: string): void {
    const entry = this.live.get(id)
    if (entry === undefined || entry.kind !== "inference") return
    entry.alarm = null
    this.background(() => {
      const at = this.clock.now()
      // What the cycle settles must be what the replicas ran: look at them first. A partial
      // cycle whose end that moved (a stop found late) ends at the new end instead (its alarm
      // is rearmed by the dispatch), and one that nothing consumes now waits (`partialWaits`).
      this.reconciler.reconcileOne(id)
      if (entry.actor.getSnapshot().status !== "active") return
      const cycle = entry.actor.getSnapshot().context.cycle
      if (cycle.partial && (cycle.ends_at > at || partialWaits(entry.actor.getSnapshot().context))) return
      const renewal = this.renewalFor(entry.actor.getSnapshot().context, at)
      // A cycle end that cannot renew stops the instance: while the world is behind, it settles
      // once the replicas' pods are known gone, as a terminate does.
      const behind = this.worldBehind()
      this.journal.append(at, "cycle_end", { id, renewal, ...behind })
      this.dispatch(entry, { type: "cycle_end", at, renewal, ...behind })
    })
  }

  /**
   * The next cycle's hold, from the balance as it will be once this cycle settles: full if it
   * covers 24 h of every replica, else partial (all of it) if it covers at least
   * INFERENCE_PARTIAL_HOLD_MIN_MS of the replicas that can still bill, else null: the
   * instance stops. Decision: a partial hold's window is the time those replicas take to
   * consume it (`liveHourlyMicros`), so after a failover it is neither cut short nor renewed
   * in a series of ever smaller holds.
   */
  private renewalFor(ctx: InferenceContext, at: number): Renewal | null {
    const hold = this.ledger.hold(cycleHoldIdFor(ctx.id, ctx.cycle.number))
    assert(hold !== undefined && hold.status === "open", () => `cycle hold of ${ctx.id} is not open at its end`)
    const consumed = costMicros(BigInt(ctx.hourly_rate_micros), ctx.gpu_count, cycleBillableMsAt(ctx, at))
    const balance = this.spendable(ctx.account) + hold.held_micros - consumed
    const full = fullHoldMicros(ctx)
    if (balance >= full) return { kind: "full", hold_micros: full.toString(), window_ms: policy.INFERENCE_CYCLE_MS }
    if (balance < leastPartialHoldMicros(ctx)) return null
    const window_ms = Number((balance * BigInt(policy.MS_PER_HOUR)) / liveHourlyMicros(ctx))
    return { kind: "partial", hold_micros: balance.toString(), window_ms }
  }

  /**
   * Decision (SPEC §7): a GPU resource is prepaid up to its deadline, so "terminated
   * immediately at $0" bites only where it has outrun its hold (a deadline reached late, as
   * after an outage of the control plane) and the balance cannot cover the overage.
   */
  private creditDepleted(ctx: GpuInstanceContext, at: number): boolean {
    const consumed = costMicros(rateOf(ctx), gpuUnits(ctx), billableMsAt(ctx, at))
    const held = this.ledger.hold(holdIdFor(ctx.id))?.held_micros ?? 0n
    const overage = consumed - held
    // What the account can spend, as every other admission reads it: usage still in an
    // aggregation bucket is already the user's to pay.
    return overage > 0n && this.spendable(ctx.account) < overage
  }

  // ── the low-balance monitor (SPEC §7): src/balanceMonitor.ts; the burn is measured here ──
  /**
   * The burn rate (micros per hour) of the account's resources holding GPUs now, what their
   * holds have not consumed yet (micro-ms), and each active inference instance's renewal.
   */
  private measureBurn(account: string, at: number): BurnMeasure {
    let burn = 0n
    let unconsumed = 0n
    const renewals: ForeseenRenewal[] = []
    let storage: Array<{ readonly id: string; readonly daily_micros: bigint }> | null = null
    // Sums of integers: the order the resources are visited does not change them.
    for (const id of this.byAccount.get(account) ?? []) {
      const entry = this.live.get(id)
      if (entry === undefined) continue
      if (entry.kind === "storage") {
        // What the next midnight charges (onStorageBilling): available or in use, not free.
        const status = statusOf(entry)
        const ctx = entry.actor.getSnapshot().context
        const daily_micros = dayMicrosOf(ctx)
        if ((status === "available" || status === "in_use") && daily_micros > 0n) (storage ??= []).push({ id, daily_micros })
        continue
      }
      if (entry.actor.getSnapshot().status !== "active") continue
      if (entry.kind === "gpu") {
        const ctx = entry.actor.getSnapshot().context
        // Its deadline gives back what the hold will not have used by then (billing as now, a
        // preempted one too): money a cycle end at or after it renews on. Not once its stop was
        // asked for: the stop settles the hold (its refund is in the balance already, or comes
        // at a pod.deleted a watch gap defers: when, nobody can foresee).
        if (ctx.deadline_at !== null && ctx.stop_requested_at === null) {
          const consumed = costMicros(rateOf(ctx), gpuUnits(ctx), billableMsAt(ctx, ctx.deadline_at))
          const refund_micros = holdMicros(rateOf(ctx), gpuUnits(ctx), ctx.hours_committed) - consumed
          renewals.push({ kind: "deadline", id, ends_at: ctx.deadline_at, refund_micros, full_micros: 0n, min_micros: 0n, live_hourly_micros: 0n })
        }
        if (ctx.billing_since === null) continue
        const hourly = rateOf(ctx) * BigInt(gpuUnits(ctx))
        burn += hourly
        unconsumed += microMs(holdMicros(rateOf(ctx), gpuUnits(ctx), ctx.hours_committed)) - hourly * BigInt(billableMsAt(ctx, at))
      } else {
        const ctx = entry.actor.getSnapshot().context
        // A partial cycle nothing consumes has no end to foresee (`partialWaits`).
        if (entry.actor.getSnapshot().value === "active" && !partialWaits(ctx)) {
          // What renewalFor will find at the cycle's end if nothing changes: the hold less what
          // the replicas billing now will have consumed by then comes back (an overage if
          // negative), and the least partial hold it renews on.
          const consumed = costMicros(BigInt(ctx.hourly_rate_micros), ctx.gpu_count, cycleBillableMsAt(ctx, ctx.cycle.ends_at))
          renewals.push({
            kind: "cycle_end",
            id,
            ends_at: ctx.cycle.ends_at,
            refund_micros: BigInt(ctx.cycle.hold_micros) - consumed,
            full_micros: fullHoldMicros(ctx),
            min_micros: leastPartialHoldMicros(ctx),
            live_hourly_micros: liveHourlyMicros(ctx)
          })
        }
        let running = 0
        for (const region of ctx.regions) if (ctx.replicas[region]?.billing_since != null) running++
        if (running === 0) continue
        const perReplica = BigInt(ctx.hourly_rate_micros) * BigInt(ctx.gpu_count)
        burn += perReplica * BigInt(running)
        unconsumed += microMs(BigInt(ctx.cycle.hold_micros)) - perReplica * BigInt(cycleBillableMsAt(ctx, at))
      }
    }
    // Played in the engine's order: by instant, deadlines before cycle ends, then id (the alarms' keys).
    renewals.sort((a, b) => (foreseenBefore(a, b) ? -1 : 1))
    // The storage worker charges in id order.
    const storage_daily_micros = storage === null ? NO_STORAGE : storage.sort((a, b) => (a.id < b.id ? -1 : 1)).map((s) => s.daily_micros)
    let last_cycle_end = renewals.length - 1
    while (last_cycle_end >= 0 && renewals[last_cycle_end]!.kind !== "cycle_end") last_cycle_end--
    return { at, burn, unconsumed, renewals, last_cycle_end, storage_daily_micros }
  }

  private armWatchdog(): void {
    // A fenced supervisor arms nothing: its background unit did nothing, and nothing follows.
    if (this.stopped) return
    const next = nextMark(this.clock.now(), policy.WATCHDOG_INTERVAL_MS)
    this.watchdogTimer = this.clock.schedule(next, () => this.onWatchdog(), { lane: Lane.engine, key: "watchdog" })
  }

  /**
   * Every 5 minutes: a pending instance older than 15 minutes heals or fails (SPEC §3), and a
   * stopping one whose pod-deleted event was lost is confirmed from the cluster (level-triggered).
   */
  private onWatchdog(): void {
    this.watchdogTimer = null
    const at = this.clock.now()
    const gpu = (id: string) => this.live.get(id) as Extract<LiveEntry, { kind: "gpu" }>
    const stuck = [...this.pending].filter((id) => isStuckPending(gpu(id).actor.getSnapshot().context, at)).sort()
    const stopping = [...this.stopping].sort()
    this.background(() => {
      // Level-triggered, every tick: what the machines believe is made to agree with what the
      // cluster shows, so a lost pod event is healed within one watchdog interval. A pending
      // GPU resource is left to SPEC §3's stuck-pending rule below.
      this.reconcile("tick")
      // Run as of an instant the world has passed (src/backlog.ts): the pods' state now is not
      // theirs at `at`; the next tick on time applies the stuck-pending rule and confirms stops.
      if (this.backlog.catchingUp) return
      if (stuck.length > 0 || stopping.length > 0) {
        for (const id of stuck) {
          // The rule's input, with what the cluster says about the pods (a world that can
          // describe them): evidence for whoever reads why the instance failed or healed.
          const { pod, pods } = stuckPendingEvidence(this.cluster, podNameFor(id))
          this.journal.append(at, "watchdog", pods.length === 0 ? { id, pod } : { id, pod, pods })
          this.dispatch(gpu(id), { type: "watchdog", at, pod })
        }
        for (const id of stopping) {
          if (this.cluster.get(podNameFor(id)) !== undefined) {
            this.cluster.deleteWorkload(podNameFor(id))
            continue
          }
          this.journal.append(at, "watchdog", { id, pod: "missing" })
          this.dispatch(gpu(id), { type: "pod.deleted", at })
        }
      }
    })
    this.armWatchdog()
  }

  /**
   * Whether a stop requested now must wait for the world to catch up before it settles: its
   * view of the pods is behind (a Kubernetes watch gap), so they may have stopped unheard, and
   * `pod.deleted` will date it (docs/KUBERNETES.md, "A stop asked for during a watch gap"). The
   * simulated world is never behind: its stops settle when requested, as always.
   */
  private worldBehind(): { readonly world_behind?: true } {
    return this.cluster.viewBehind?.() === true ? { world_behind: true } : {}
  }

  private onClusterEvent(event: ClusterEvent): void {
    const [id, region] = event.resource.split("@") as [string, string | undefined]
    this.background(() => {
      // Looked up when the unit runs: one that waited for the database (src/backlog.ts) finds
      // what the units before it left.
      const entry = this.live.get(id)
      this.journal.append(event.at, event.type, event)
      if (entry === undefined) return
      // A stop the world learned late carries when it happened: billing ends there.
      const ended = "ended_at" in event && event.ended_at !== undefined ? { ended_at: event.ended_at } : {}
      if (entry.kind === "inference" && region !== undefined) {
        this.dispatch(entry, { type: "replica.pod", region, pod: podPhaseOf(event.type), at: event.at, ...ended })
      } else if (entry.kind === "gpu" && region === undefined) {
        this.dispatch(entry, { type: event.type, at: event.at, ...ended })
      }
    })
  }

  /** Reconciles with the cluster (src/reconciler.ts), then the volumes at their hourly mark. */
  private reconcile(when: "start" | "tick"): void {
    this.reconciler.reconcile(when)
    const at = this.clock.now()
    if (when === "start" || at % policy.VOLUME_RESYNC_INTERVAL_MS === 0) {
      // Volumes are level-triggered too: every live drive and filesystem exists in the cluster
      // (a claim deleted behind our back, or whose create gave up, comes back within the hour).
      const volumes: Array<Extract<LiveEntry, { kind: "storage" }>> = []
      for (const entry of this.live.values()) if (entry.kind === "storage" && entry.actor.getSnapshot().status === "active") volumes.push(entry)
      volumes.sort((a, b) => (a.id < b.id ? -1 : 1))
      for (const entry of volumes) this.cluster.ensureVolume(volumeOf(entry.actor.getSnapshot().context))
      this.sweepVolumes(at)
    }
  }

  /**
   * A volume the cluster still holds for storage the ledger says was deleted (its delete gave
   * up, or the control plane stopped before it went through) is deleted again, and journaled.
   * Decision: a volume the ledger does not know, or whose storage is not deleted, is left
   * alone: data is deleted only on the ledger's word, never because memory lacks an entry.
   */
  private sweepVolumes(at: number): void {
    const leftover: string[] = []
    this.cluster.forEachVolume((id) => {
      if (!this.live.has(id)) leftover.push(id)
    })
    for (const id of leftover.sort()) {
      if (this.ledger.resource(id)?.status !== "deleted") continue
      this.journal.append(at, "volume_deleted_again", { id })
      this.cluster.deleteVolume(id)
    }
  }

}

/** The cluster's volume for a drive or filesystem. */
const volumeOf = (ctx: { readonly id: string; readonly account: string; readonly kind: "cloud_drive" | "shared_fs"; readonly size_gb: number; readonly region: string }): VolumeSpec => ({
  id: ctx.id,
  account: ctx.account,
  kind: ctx.kind,
  size_gb: ctx.size_gb,
  region: ctx.region
})

/** An inference instance's full cycle hold, as the manual writes it: rate × GPUs × every replica × 24 h. */
const fullHoldMicros = (ctx: InferenceContext): Micros => fullHourlyMicros(ctx) * BigInt(policy.INFERENCE_CYCLE_MS / policy.MS_PER_HOUR)

/** The least partial hold an inference instance renews on: INFERENCE_PARTIAL_HOLD_MIN_MS of the replicas that can still bill, rounded up. */
const leastPartialHoldMicros = (ctx: InferenceContext): Micros =>
  (liveHourlyMicros(ctx) * BigInt(policy.INFERENCE_PARTIAL_HOLD_MIN_MS) + BigInt(policy.MS_PER_HOUR) - 1n) / BigInt(policy.MS_PER_HOUR)

/** A 400: the input `field` is malformed or out of bounds. */
const invalid = (code: string, field: string, message: string): Either.Either<never, ValidationError> =>
  Either.left(new ValidationError({ code, field, message }))

/**
 * The next whole multiple of `interval_ms` after `now`: workers run on marks aligned to the
 * epoch (every 5 minutes on the :00, :05…; storage at 00:00 UTC), so a restarted supervisor
 * keeps the same schedule as one that never stopped.
 */
const nextMark = (now: number, interval_ms: number): number => (Math.floor(now / interval_ms) + 1) * interval_ms

/** The midnight (00:00 UTC) that begins the day of `at`. */
const dayOf = (at: number): number => at - (at % policy.STORAGE_BILLING_INTERVAL_MS)

const podPhaseOf = (type: ClusterEvent["type"]): "loading" | "running" | "preempted" | "failed" | "deleted" =>
  type.slice("pod.".length) as "loading" | "running" | "preempted" | "failed" | "deleted"

/**
 * The clock key of a resource's alarm (clock.ts orders timers of one instant by lane, then
 * key). Every GPU alarm sorts before every inference cycle end: a deadline settles its hold
 * and gives back what it did not use, and a cycle end renews on the balance it finds, so at
 * one instant every hold that ends is settled before any renewal looks at the balance.
 * Before, both were `alarm:<id>`, and whether an instance renewed on a GPU instance's refund
 * or stopped for credit a moment before it landed depended on the ids' alphabetical order.
 * The prefixes differ in one character, so the order holds whatever the ids, and both stay
 * before the monitor's `balance:` alarms, as they were. The key is a function of the
 * resource alone, so a restarted supervisor re-arms the same order.
 */
/** `fenced` reads the database's term at most this often in engine time (`termCheckDue`). */
const TERM_CHECK_INTERVAL_MS = 10
/** …and at least once in this many asks, should the live clock stand still. */
const TERM_CHECK_EVERY_CALLS = 1_000

const alarmClockKey = (entry: LiveEntry): string => (entry.kind === "inference" ? `alarm:1:${entry.id}` : `alarm:0:${entry.id}`)

/** An account without storage to charge: one shared empty list (`measureBurn`). */
const NO_STORAGE: ReadonlyArray<bigint> = Object.freeze([])

const alarmKey = (alarm: GpuAlarm): string => (alarm.event === "deadline" ? "deadline" : `warning:${alarm.minutes}`)

const fromEither = <A, E>(e: Either.Either<A, E>): Effect.Effect<A, E> => (Either.isRight(e) ? Effect.succeed(e.right) : Effect.fail(e.left))

/** Builds the supervisor from the world's services, started, and stopped with its scope. */
export const make: Effect.Effect<SupervisorApi, never, Ledger | Cluster | Clock | Catalog | Notifier | Journal | import("effect/Scope").Scope> = Effect.gen(function* () {
  const payments = yield* Effect.serviceOption(Payments)
  const audit = Option.isSome(yield* Effect.serviceOption(ReconcileAudit))
  const ledger = yield* Ledger
  const clock = yield* Clock
  // A live clock starts no earlier than the latest instant the database holds, so a restart on
  // a wall clock that is behind never writes before what was written (src/clock.ts).
  clock.notBefore?.(ledger.latestInstant())
  const log = Option.getOrElse(yield* Effect.serviceOption(EngineLog), () => stderrLog)
  const restore = Option.getOrNull(yield* Effect.serviceOption(RestoreWorkloads))
  const sup = new GpuSupervisor(ledger, yield* Cluster, clock, yield* Catalog, yield* Notifier, yield* Journal, Option.getOrNull(payments), audit, log, restore)
  yield* Effect.acquireRelease(
    Effect.sync(() => sup.start()),
    () => Effect.sync(() => sup.stop())
  )
  return {
    openAccount: (id) => Effect.suspend(() => fromEither(sup.openAccount(id))),
    credit: (account, kind, amount, description) => Effect.suspend(() => fromEither(sup.credit(account, kind, amount, description))),
    launchGpu: (req, caller) => Effect.suspend(() => fromEither(sup.launchGpu(req, caller))),
    extend: (id, hours, caller) => Effect.suspend(() => fromEither(sup.extend(id, hours, caller))),
    terminate: (id, caller) => Effect.suspend(() => fromEither(sup.terminate(id, caller))),
    describe: (id, caller) => Effect.suspend(() => fromEither(sup.describe(id, caller))),
    list: (account, query, caller) => Effect.suspend(() => fromEither(sup.list(account, query, caller))),
    registerModel: (req, caller) => Effect.suspend(() => fromEither(sup.registerModel(req, caller))),
    deleteModel: (account, model, caller) => Effect.suspend(() => fromEither(sup.deleteModel(account, model, caller))),
    launchInference: (req, caller) => Effect.suspend(() => fromEither(sup.launchInference(req, caller))),
    userInstance: (account, model, id) => sup.userInstance(account, model, id),
    apiRequest: (req, caller) => Effect.suspend(() => fromEither(sup.apiRequest(req, caller))),
    settleApiUsage: () => sup.settleApiUsage(),
    fence: () => sup.fence(),
    get fenced() {
      return sup.fenced
    },
    createStorage: (req, caller) => Effect.suspend(() => fromEither(sup.createStorage(req, caller))),
    deleteStorage: (id, caller) => Effect.suspend(() => fromEither(sup.deleteStorage(id, caller))),
    balance: (account) => Effect.suspend(() => fromEither(sup.balance(account))),
    catchUp: () => sup.catchUp(),
    unitOfWork: (fn) => sup.unitOfWork(fn),
    beginBatch: () => sup.beginBatch(),
    commitBatch: () => sup.commitBatch(),
    sync: sup,
    payments: sup.payments
  } satisfies SupervisorApi
})

export const layer = Layer.scoped(Supervisor, make)
