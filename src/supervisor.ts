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
import { Context, Effect, Either, Layer } from "effect"
import { createActor, type Actor } from "xstate"
import {
  billableMsAt,
  gpuInstanceMachine,
  gpuStatusOf,
  gpuUnits,
  isActiveStatus,
  isStuckPending,
  nextAlarm,
  type GpuAlarm,
  type GpuInstanceContext,
  type GpuInstanceEvent,
  type GpuInstanceInput,
  type GpuInstanceSnapshot,
  type GpuResourceKind,
  type GpuStatus
} from "../machines/gpuInstance.js"
import { Lane, type EngineClock, type TimerHandle } from "./clock.js"
import { podNameFor, type ClusterEvent, type ClusterPort } from "./cluster.js"
import { assert, Conflict, InsufficientBalance, NotFound, ValidationError, type EngineError } from "./errors.js"
import type { LedgerStore } from "./ledger/store.js"
import { costMicros, formatDollars, holdMicros, type Micros } from "./money.js"
import * as policy from "./policy.js"
import { Catalog, Clock, Cluster, Journal, Ledger, Notifier, type CatalogPort, type JournalPort, type NotifierPort } from "./services.js"

export interface LaunchGpuRequest {
  readonly account: string
  readonly id: string
  readonly kind: GpuResourceKind
  readonly gpu: string
  readonly gpu_count: number
  readonly node_count: number
  readonly region: string
  readonly estimated_duration_hours: number
  readonly image?: string | null
}

export interface GpuView {
  readonly id: string
  readonly account: string
  readonly kind: GpuResourceKind
  readonly status: GpuStatus
  readonly gpu: string
  readonly gpu_count: number
  readonly node_count: number
  readonly region: string
  readonly hourly_rate_micros: Micros
  readonly hours_committed: number
  readonly created_at: number
  readonly started_at: number | null
  readonly deadline_at: number | null
  readonly billable_ms: number
  readonly termination_reason: policy.TerminationReason | null
}

export interface ExtendResult {
  readonly additional_cost_micros: Micros
  readonly new_balance_micros: Micros
  readonly deadline_at: number | null
}

/**
 * Who is asking: an account (a customer's key) sees only its own resources; `operator`
 * (the timeline, an operator's tools) sees all.
 */
export type Caller = { readonly account: string } | "operator"

export interface SupervisorApi {
  openAccount(id: string): Effect.Effect<void, Conflict>
  /** Credits a wallet (`topup` from a payment, `adjustment` by an operator). */
  credit(account: string, kind: "topup" | "adjustment", amount_micros: Micros, description: string): Effect.Effect<Micros, NotFound | ValidationError>
  launchGpu(req: LaunchGpuRequest, caller?: Caller): Effect.Effect<GpuView, EngineError>
  extend(id: string, hours: number, caller?: Caller): Effect.Effect<ExtendResult, EngineError>
  terminate(id: string, caller?: Caller): Effect.Effect<GpuView, NotFound | Conflict>
  describe(id: string, caller?: Caller): Effect.Effect<GpuView, NotFound>
  balance(account: string): Effect.Effect<Micros, NotFound>
  /** Runs `fn` as one unit of work (one transaction); the simulator wraps each clock step. */
  unitOfWork<T>(fn: () => T): T
  /** Group commit: units of work share one transaction until `commitBatch` (simulator only). */
  beginBatch(): void
  commitBatch(): void
}

export class Supervisor extends Context.Tag("ecolink/Supervisor")<Supervisor, SupervisorApi>() {}

type GpuActor = Actor<typeof gpuInstanceMachine>

interface LiveEntry {
  readonly id: string
  readonly actor: GpuActor
  alarm: { readonly at: number; readonly key: string; readonly handle: TimerHandle } | null
}

/** Intents the machine raised during one dispatch, carried out in order afterwards. */
type Intent =
  | { readonly type: "placeHold"; readonly ctx: GpuInstanceContext }
  | { readonly type: "extendHold"; readonly ctx: GpuInstanceContext; readonly hours: number }
  | { readonly type: "settle"; readonly ctx: GpuInstanceContext }
  | { readonly type: "createPod"; readonly ctx: GpuInstanceContext }
  | { readonly type: "deletePod"; readonly ctx: GpuInstanceContext }
  | {
      readonly type: "notify"
      readonly ctx: GpuInstanceContext
      readonly severity: policy.Severity
      readonly kind: string
      readonly text: string
      readonly data?: Readonly<Record<string, number | string | null>>
    }

/** Bound on intents one event may raise; a machine looping on itself stops loudly. */
const INTENTS_PER_DISPATCH_MAX = 64

export const holdIdFor = (resource: string): string => `hold:${resource}`

const rateOf = (ctx: GpuInstanceContext): Micros => BigInt(ctx.hourly_rate_micros)

const viewOf = (snapshot: GpuInstanceSnapshot, at: number): GpuView => {
  const c = snapshot.context
  return {
    id: c.id,
    account: c.account,
    kind: c.kind,
    status: gpuStatusOf(snapshot),
    gpu: c.gpu,
    gpu_count: c.gpu_count,
    node_count: c.node_count,
    region: c.region,
    hourly_rate_micros: rateOf(c),
    hours_committed: c.hours_committed,
    created_at: c.created_at,
    started_at: c.started_at,
    deadline_at: c.deadline_at,
    billable_ms: billableMsAt(c, at),
    termination_reason: c.termination_reason
  }
}

export class GpuSupervisor {
  private readonly live = new Map<string, LiveEntry>()
  /** Live resources in `pending`, for the watchdog. Iterated sorted, never in insertion order. */
  private readonly pending = new Set<string>()
  /** Live resources in `terminating`: the watchdog confirms their pods are gone. */
  private readonly stopping = new Set<string>()
  private readonly dirty = new Set<string>()
  private intents: Intent[] = []
  private depth = 0
  private watchdogTimer: TimerHandle | null = null
  private unsubscribe: (() => void) | null = null
  private readonly machine: typeof gpuInstanceMachine
  private stopped = false
  private batching = false

  constructor(
    private readonly ledger: LedgerStore,
    private readonly cluster: ClusterPort,
    private readonly clock: EngineClock,
    private readonly catalog: CatalogPort,
    private readonly notifier: NotifierPort,
    private readonly journal: JournalPort
  ) {
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
            text: policy.texts.durationWarning(context.id, params.minutes),
            data: { minutes: params.minutes, deadline_at: context.deadline_at }
          })
        },
        notifyPreempted: ({ context }) =>
          raise({ type: "notify", ctx: context, severity: "warning", kind: "preempted", text: policy.texts.preempted(context.id) }),
        notifyResumed: ({ context }) =>
          raise({ type: "notify", ctx: context, severity: "info", kind: "resumed", text: policy.texts.resumed(context.id) }),
        notifyTerminated: ({ context }) => {
          const reason = context.termination_reason ?? "failed"
          raise({
            type: "notify",
            ctx: context,
            severity: policy.TERMINATION_SEVERITY[reason],
            kind: "terminated",
            text: policy.texts.terminated[reason],
            data: { termination_reason: reason }
          })
        }
      }
    })
  }

  // ── lifecycle ─────────────────────────────────────────────────────────────────────────
  /** Rehydrates live actors, re-arms alarms, reconciles with the cluster, starts the watchdog. */
  start(): void {
    this.unitOfWork(() => {
      for (const record of this.ledger.liveResources()) {
        const snapshot = JSON.parse(record.snapshot) as GpuInstanceSnapshot
        const actor = createActor(this.machine, { snapshot, input: snapshot.context, clock: this.clock })
        actor.start()
        const entry: LiveEntry = { id: record.id, actor, alarm: null }
        this.live.set(record.id, entry)
        const status = gpuStatusOf(actor.getSnapshot())
        if (status === "pending") this.pending.add(record.id)
        if (status === "terminating") this.stopping.add(record.id)
        this.rearm(entry)
      }
      this.reconcile()
    })
    this.unsubscribe = this.cluster.subscribe((event) => this.onClusterEvent(event))
    this.armWatchdog()
  }

  /** Drops the supervisor without writing anything: timers cancelled, actors stopped. */
  stop(): void {
    this.stopped = true
    this.unsubscribe?.()
    this.unsubscribe = null
    if (this.watchdogTimer !== null) this.clock.clearTimeout(this.watchdogTimer)
    for (const entry of this.live.values()) {
      if (entry.alarm !== null) this.clock.clearTimeout(entry.alarm.handle)
      entry.actor.stop()
    }
    this.live.clear()
    this.pending.clear()
    this.stopping.clear()
  }

  unitOfWork<T>(fn: () => T): T {
    assert(!this.stopped, () => "unit of work on a stopped supervisor")
    if (this.depth > 0) return fn()
    return this.ledger.transaction(() => {
      this.depth++
      try {
        const result = fn()
        // In a batch the snapshots are written once, at the batch's commit.
        if (!this.batching) this.flush()
        return result
      } finally {
        this.depth--
      }
    })
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

  // ── API commands ──────────────────────────────────────────────────────────────────────
  openAccount(id: string): Either.Either<void, Conflict> {
    return this.unitOfWork(() => {
      const opened = this.ledger.openAccount(id, this.clock.now())
      if (Either.isRight(opened)) this.journal.append(this.clock.now(), "open_account", { id })
      return opened
    })
  }

  credit(account: string, kind: "topup" | "adjustment", amount_micros: Micros, description: string): Either.Either<Micros, NotFound | ValidationError> {
    if (!this.ledger.hasAccount(account)) return Either.left(new NotFound({ code: "account_not_found", id: account }))
    if (amount_micros <= 0n) return Either.left(new ValidationError({ code: "invalid_amount", field: "amount", message: "amount must be positive" }))
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, kind, { account, amount_micros: amount_micros.toString() })
        return this.ledger.post({ account, at, kind, amount_micros, description })
      })
    )
  }

  launchGpu(req: LaunchGpuRequest, caller: Caller = "operator"): Either.Either<GpuView, EngineError> {
    const checked = this.admit(req, caller)
    if (Either.isLeft(checked)) return Either.left(checked.left)
    const { rate } = checked.right
    const units = req.gpu_count * req.node_count
    const hold = holdMicros(rate, units, req.estimated_duration_hours)
    const balance = this.ledger.balance(req.account)
    if (balance < hold) return Either.left(new InsufficientBalance({ account: req.account, required_micros: hold, balance_micros: balance }))
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
          created_at: at
        }
        const actor = createActor(this.machine, { input, clock: this.clock })
        const entry: LiveEntry = { id: req.id, actor, alarm: null }
        this.live.set(req.id, entry)
        this.run(entry, () => actor.start(), null, at)
        return viewOf(actor.getSnapshot(), at)
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
    const ctx = found.right.actor.getSnapshot().context
    const amount = holdMicros(rateOf(ctx), gpuUnits(ctx), hours)
    const balance = this.ledger.balance(ctx.account)
    if (balance < amount) return Either.left(new InsufficientBalance({ account: ctx.account, required_micros: amount, balance_micros: balance }))
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "extend", { id, hours })
        this.dispatch(found.right, { type: "extend", at, hours })
        return {
          additional_cost_micros: amount,
          new_balance_micros: this.ledger.balance(ctx.account),
          deadline_at: found.right.actor.getSnapshot().context.deadline_at
        }
      })
    )
  }

  terminate(id: string, caller: Caller = "operator"): Either.Either<GpuView, NotFound | Conflict> {
    const entry = this.live.get(id)
    if (entry !== undefined && gpuStatusOf(entry.actor.getSnapshot()) === "terminating" && this.visible(entry.actor.getSnapshot().context.account, caller)) {
      // A second stop while the first is under way changes nothing: the hold settled once.
      return Either.right(viewOf(entry.actor.getSnapshot(), this.clock.now()))
    }
    const found = this.findActive(id, caller, "terminate")
    if (Either.isLeft(found)) return Either.left(found.left)
    return Either.right(
      this.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "terminate", { id })
        this.dispatch(found.right, { type: "terminate", at })
        return viewOf(found.right.actor.getSnapshot(), at)
      })
    )
  }

  describe(id: string, caller: Caller = "operator"): Either.Either<GpuView, NotFound> {
    const entry = this.live.get(id)
    const snapshot = entry !== undefined ? entry.actor.getSnapshot() : this.storedSnapshot(id)
    if (snapshot === undefined || !this.visible(snapshot.context.account, caller)) {
      return Either.left(new NotFound({ code: "resource_not_found", id }))
    }
    return Either.right(viewOf(snapshot, this.clock.now()))
  }

  balance(account: string): Either.Either<Micros, NotFound> {
    return this.ledger.hasAccount(account) ? Either.right(this.ledger.balance(account)) : Either.left(new NotFound({ code: "account_not_found", id: account }))
  }

  // ── admission ─────────────────────────────────────────────────────────────────────────
  private admit(req: LaunchGpuRequest, caller: Caller): Either.Either<{ rate: Micros }, EngineError> {
    const invalid = (code: string, field: string, message: string) => Either.left(new ValidationError({ code, field, message }))
    if (!policy.RESOURCE_ID_RE.test(req.id)) return invalid("invalid_id", "id", "id must be 1-63 letters, digits, '.', '_' or '-'")
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
    if (this.live.has(req.id) || this.ledger.resource(req.id) !== undefined) {
      return Either.left(new Conflict({ code: "already_exists", id: req.id, status: "exists", message: `resource ${req.id} already exists` }))
    }
    return Either.right({ rate })
  }

  private visible(account: string, caller: Caller): boolean {
    return caller === "operator" || caller.account === account
  }

  private storedSnapshot(id: string): GpuInstanceSnapshot | undefined {
    const record = this.ledger.resource(id)
    return record === undefined ? undefined : (JSON.parse(record.snapshot) as GpuInstanceSnapshot)
  }

  /** The live, not-stopping actor for `id`: 404 if unknown or another account's, 409 if stopped. */
  private findActive(id: string, caller: Caller, action: string): Either.Either<LiveEntry, NotFound | Conflict> {
    const entry = this.live.get(id)
    const snapshot = entry?.actor.getSnapshot() ?? this.storedSnapshot(id)
    if (snapshot === undefined || !this.visible(snapshot.context.account, caller)) {
      return Either.left(new NotFound({ code: "resource_not_found", id }))
    }
    const status = gpuStatusOf(snapshot)
    if (entry === undefined || !isActiveStatus(status)) {
      return Either.left(new Conflict({ code: "instance_not_active", id, status, message: `cannot ${action} instance ${id}: it is ${status}` }))
    }
    return Either.right(entry)
  }

  // ── dispatch: one event to one actor, its intents carried out ─────────────────────────
  private dispatch(entry: LiveEntry, event: GpuInstanceEvent, cause: string | null = null): void {
    // A machine that reached its final state in this unit of work hears nothing more
    // (a pod's deletion after the instance failed, say); it leaves memory at the flush.
    if (entry.actor.getSnapshot().status !== "active") return
    const before = gpuStatusOf(entry.actor.getSnapshot())
    this.run(entry, () => entry.actor.send(event), before, event.at, event, cause)
  }

  private run(entry: LiveEntry, step: () => void, before: GpuStatus | null, at: number, event?: GpuInstanceEvent, cause: string | null = null): void {
    assert(this.depth > 0, () => "dispatch outside a unit of work")
    assert(this.intents.length === 0, () => "re-entrant dispatch")
    step()
    const intents = this.intents
    this.intents = []
    for (const intent of intents) this.carryOut(intent, at)
    const snapshot = entry.actor.getSnapshot()
    const after = gpuStatusOf(snapshot)
    if (before !== null && after !== before) {
      const reason =
        after === "terminating" || after === "terminated" || after === "failed" ? snapshot.context.termination_reason
        : event?.type === "watchdog" ? "watchdog_healed"
        : cause
      this.ledger.recordTransition({ at, resource: entry.id, from_state: before, to_state: after, reason })
    }
    if (after === "pending") this.pending.add(entry.id)
    else this.pending.delete(entry.id)
    if (after === "terminating") this.stopping.add(entry.id)
    else this.stopping.delete(entry.id)
    this.dirty.add(entry.id)
    this.rearm(entry)
  }

  private carryOut(intent: Intent, at: number): void {
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
        const settlement = this.ledger.settleHold({
          hold_id: holdIdFor(ctx.id),
          consumed_micros: costMicros(rate, units, ctx.billable_ms),
          at,
          refund_description: policy.descriptions.refund(ctx.id),
          overage_description: policy.descriptions.overage(ctx.id)
        })
        assert(
          settlement.consumed_micros - settlement.overage_micros + settlement.refunded_micros === settlement.held_micros,
          () => `settlement of ${ctx.id}: consumed + refunded != held`
        )
        return
      }
      case "createPod":
        this.cluster.createWorkload({
          name: podNameFor(ctx.id),
          resource: ctx.id,
          account: ctx.account,
          region: ctx.region,
          gpu: ctx.gpu,
          gpu_count: ctx.gpu_count,
          node_count: ctx.node_count,
          image: ctx.image
        })
        return
      case "deletePod":
        this.cluster.deleteWorkload(podNameFor(ctx.id))
        return
      case "notify":
        this.notifier.notify({ account: ctx.account, resource: ctx.id, at, severity: intent.severity, kind: intent.kind, text: intent.text, data: intent.data ?? null })
        return
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
      const status = gpuStatusOf(snapshot)
      const finished = snapshot.status === "done"
      this.ledger.saveResource({
        id,
        account: snapshot.context.account,
        kind: snapshot.context.kind,
        status,
        live: !finished,
        snapshot: JSON.stringify(entry.actor.getPersistedSnapshot()),
        at
      })
      if (finished) {
        if (entry.alarm !== null) this.clock.clearTimeout(entry.alarm.handle)
        entry.actor.stop()
        this.live.delete(id)
      }
    }
    this.dirty.clear()
  }

  // ── workers on the clock ──────────────────────────────────────────────────────────────
  /** Arms the actor's next alarm (deadline or warning) from its snapshot, replacing the old one. */
  private rearm(entry: LiveEntry): void {
    const alarm = nextAlarm(entry.actor.getSnapshot())
    const key = alarm === null ? null : alarmKey(alarm)
    if (entry.alarm !== null && key !== null && entry.alarm.at === alarm!.at && entry.alarm.key === key) return
    if (entry.alarm !== null) this.clock.clearTimeout(entry.alarm.handle)
    entry.alarm = null
    if (alarm === null) return
    const handle = this.clock.schedule(alarm.at, () => this.onAlarm(entry.id, alarm), { lane: Lane.engine, key: `alarm:${entry.id}` })
    entry.alarm = { at: alarm.at, key: key!, handle }
  }

  private onAlarm(id: string, alarm: GpuAlarm): void {
    const entry = this.live.get(id)
    if (entry === undefined) return
    entry.alarm = null
    this.unitOfWork(() => {
      const at = this.clock.now()
      this.journal.append(at, "alarm", { id, ...alarm })
      if (alarm.event === "duration_warning") {
        this.dispatch(entry, { type: "duration_warning", at, minutes: alarm.minutes })
      } else {
        this.dispatch(entry, { type: "deadline", at, credit_depleted: this.creditDepleted(entry.actor.getSnapshot().context, at) })
      }
    })
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
    return overage > 0n && this.ledger.balance(ctx.account) < overage
  }

  private armWatchdog(): void {
    const now = this.clock.now()
    const next = (Math.floor(now / policy.WATCHDOG_INTERVAL_MS) + 1) * policy.WATCHDOG_INTERVAL_MS
    this.watchdogTimer = this.clock.schedule(next, () => this.onWatchdog(), { lane: Lane.engine, key: "watchdog" })
  }

  /**
   * Every 5 minutes: a pending instance older than 15 minutes heals or fails (SPEC §3), and a
   * stopping one whose pod-deleted event was lost is confirmed from the cluster (level-triggered).
   */
  private onWatchdog(): void {
    this.watchdogTimer = null
    const at = this.clock.now()
    const stuck = [...this.pending].filter((id) => isStuckPending(this.live.get(id)!.actor.getSnapshot().context, at)).sort()
    const stopping = [...this.stopping].sort()
    if (stuck.length > 0 || stopping.length > 0) {
      this.unitOfWork(() => {
        for (const id of stuck) {
          const workload = this.cluster.get(podNameFor(id))
          const pod = workload === undefined ? "missing" : workload.phase === "running" ? "running" : "not_running"
          this.journal.append(at, "watchdog", { id, pod })
          this.dispatch(this.live.get(id)!, { type: "watchdog", at, pod })
        }
        for (const id of stopping) {
          if (this.cluster.get(podNameFor(id)) !== undefined) {
            this.cluster.deleteWorkload(podNameFor(id))
            continue
          }
          this.journal.append(at, "watchdog", { id, pod: "missing" })
          this.dispatch(this.live.get(id)!, { type: "pod.deleted", at })
        }
      })
    }
    this.armWatchdog()
  }

  private onClusterEvent(event: ClusterEvent): void {
    const entry = this.live.get(event.resource)
    this.unitOfWork(() => {
      this.journal.append(event.at, event.type, event)
      if (entry === undefined) return
      this.dispatch(entry, { type: event.type, at: event.at })
    })
  }

  /**
   * Level-triggered reconciliation: make what the machines believe agree with what the
   * cluster shows, for every live resource, and delete workloads nobody owns.
   */
  private reconcile(): void {
    const at = this.clock.now()
    const ids = [...this.live.keys()].sort()
    for (const id of ids) {
      const entry = this.live.get(id)!
      const status = gpuStatusOf(entry.actor.getSnapshot())
      const workload = this.cluster.get(podNameFor(id))
      const phase = workload?.phase ?? "missing"
      const send = (event: GpuInstanceEvent) => {
        this.journal.append(at, "reconcile", { id, status, phase })
        this.dispatch(entry, event, "reconciled")
      }
      if (status === "terminating") {
        if (workload === undefined) send({ type: "pod.deleted", at })
        else this.cluster.deleteWorkload(podNameFor(id))
      } else if (phase === "missing" || phase === "failed") {
        // A pending resource whose create was lost is created again (the name makes it
        // idempotent); a started one whose pods vanished or failed has failed.
        if (status === "pending" && phase === "missing") this.carryOut({ type: "createPod", ctx: entry.actor.getSnapshot().context }, at)
        else send({ type: "pod.failed", at })
      } else if (phase === "running" && status !== "running") {
        send({ type: "pod.running", at })
      } else if (phase === "loading" && status === "pending") {
        send({ type: "pod.loading", at })
      } else if (phase === "preempted" && (status === "running" || status === "loading")) {
        send({ type: "pod.preempted", at })
      }
    }
    for (const workload of this.cluster.list()) {
      if (!this.live.has(workload.resource)) this.cluster.deleteWorkload(workload.name)
    }
  }
}

const alarmKey = (alarm: GpuAlarm): string => (alarm.event === "deadline" ? "deadline" : `warning:${alarm.minutes}`)

const fromEither = <A, E>(e: Either.Either<A, E>): Effect.Effect<A, E> => (Either.isRight(e) ? Effect.succeed(e.right) : Effect.fail(e.left))

/** Builds the supervisor from the world's services, started, and stopped with its scope. */
export const make: Effect.Effect<SupervisorApi, never, Ledger | Cluster | Clock | Catalog | Notifier | Journal | import("effect/Scope").Scope> = Effect.gen(function* () {
  const sup = new GpuSupervisor(yield* Ledger, yield* Cluster, yield* Clock, yield* Catalog, yield* Notifier, yield* Journal)
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
    balance: (account) => Effect.suspend(() => fromEither(sup.balance(account))),
    unitOfWork: (fn) => sup.unitOfWork(fn),
    beginBatch: () => sup.beginBatch(),
    commitBatch: () => sup.commitBatch()
  } satisfies SupervisorApi
})

export const layer = Layer.scoped(Supervisor, make)
