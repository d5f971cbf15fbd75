/**
 * Runs a timeline: the simulated world (virtual clock + simulated cluster) and the engine
 * (ledger, supervisor, machines) built as Effect layers, the timeline's inputs scheduled on
 * the clock's input lane, one SQLite transaction per clock step, and at the end the output
 * of TIMELINE.md with the invariant checker's verdict.
 *
 * `restartAt` drops the whole engine (supervisor, actors, SQLite connection) after the
 * given instants and starts a new one on the same database file, while the world runs on:
 * the crash-and-recover drill of DESIGN.md "Persistence and recovery".
 */
import { Context, Effect, Either, Exit, Layer, Runtime, Scope } from "effect"
import { VirtualClock, Lane, type EngineClock } from "../src/clock.js"
import type { ClusterPort } from "../src/cluster.js"
import { assert, errorStatus, type EngineError } from "../src/errors.js"
import type { Hold, LedgerStore } from "../src/ledger/store.js"
import type { LedgerRowKind } from "../src/ledger/migrations.js"
import type { ModelPrice } from "../src/metering.js"
import type { PaymentBook } from "../src/payments.js"
import { dollars, formatDollars, type Micros } from "../src/money.js"
import * as policy from "../src/policy.js"
import { catalogLayer, clockLayer, Cluster, Ledger, ledgerLayer, Payments, ReconcileAudit, sqliteNotifierAndJournal } from "../src/services.js"
import { SIM_DECLINE_MESSAGE, simPaymentsFor, webhookTo, type SimPayments } from "./payments.js"
import { INFERENCE_KIND, replicaResource } from "../src/resources.js"
import { readSnapshot } from "../src/snapshots.js"
import { layer as supervisorLayer, Supervisor, type SupervisorApi, type SupervisorSync } from "../src/supervisor.js"
import type { ModelSource } from "../machines/inferenceInstance.js"
import { SimCluster, type WorldOutcome } from "./cluster.js"
import { type ApiUsageFacts, checkInvariants, type ResourceFacts, type RunFacts, type Violation } from "./invariants.js"
import type { ApiRequestFact } from "./oracle.js"
import { isoInstant, parseDurationMs } from "./iso.js"
import type { Timeline, TimelineEvent } from "./timeline.js"

/**
 * Clock steps per SQLite commit in a simulation. A commit costs far more than the rows in it
 * (BENCHMARKS.md); a simulation needs consistency at restarts, not durability per step. Each
 * commit writes every index page the batch touched, and rows keyed by account touch nearly
 * all of the ledger's and notifications' index pages, so fewer commits write less: the full
 * fleet (71,000 steps) ran 0.16 to 0.45 s faster with 65,536 than with 16,384 in three
 * back-to-back pairs.
 */
export const SIM_STEPS_PER_COMMIT = 65_536

export interface RunOptions {
  /** SQLite file for the ledger; `:memory:` (the default) only for tests and one-off runs. */
  readonly db?: string
  /** Instants (ms) after whose work the engine is dropped and started again on the same file. */
  readonly restartAt?: ReadonlyArray<number>
  /**
   * Control-plane outages: after the work of `at_ms` the engine is dropped, and a new one
   * starts on the same file `duration_ms` later. Inputs meanwhile are refused with 503; the
   * world's pod events are lost, as a dead controller's watch loses them.
   */
  readonly outages?: ReadonlyArray<{ readonly at_ms: number; readonly duration_ms: number }>
  /** Tests: check every incremental reconcile against a full scan (`ReconcileAudit`); slower. */
  readonly auditReconcile?: boolean
  /**
   * Clock steps per SQLite commit (default `SIM_STEPS_PER_COMMIT`). Group commit is for speed
   * only: any cadence gives the same output (tests run the examples with every step its own
   * commit).
   */
  readonly stepsPerCommit?: number
  /**
   * Told when each phase of the run ends: `"ran"` after the last commit, `"read"` once the
   * facts are read back, `"checked"` once the invariants are checked and the output rendered.
   * The benchmark times the phases with it; the run itself never reads a wall clock.
   */
  readonly onPhase?: (phase: RunPhase) => void
}

export type RunPhase = "ran" | "read" | "checked"

export interface Rejected {
  readonly at: string
  readonly event: number
  readonly do: string
  readonly status: number
  readonly error: string
  readonly message: string
}

export interface SimOutput {
  readonly ledger: ReadonlyArray<Record<string, unknown>>
  readonly notifications: ReadonlyArray<Record<string, unknown>>
  readonly transitions: ReadonlyArray<Record<string, unknown>>
  readonly rejected: ReadonlyArray<Rejected>
  readonly accounts: Readonly<Record<string, { balance: string }>>
  readonly account_totals: Readonly<Record<string, AccountTotals>>
  readonly resources: Readonly<Record<string, Record<string, unknown>>>
  readonly invariants: { readonly ok: boolean; readonly violations: ReadonlyArray<Violation> }
}

/**
 * What finance reconciles an account's balance with, from the output alone
 * (docs/TIMELINE-EXTENSIONS.md). `by_kind` are the signed sums of its ledger rows by kind (they
 * add up to its balance); `holds` sums its holds as SPEC §2 names their parts (amounts, not
 * signs): every hold placed (`held`, extensions included), and of the settled ones what was
 * `consumed`, `refunded` and charged as `overage`, and what the holds still open reserve (`open`).
 */
export interface AccountTotals {
  readonly by_kind: Readonly<Record<LedgerRowKind, string>>
  readonly holds: HoldSums<string>
  /** The signed sum of its `api_usage` rows per model (the Billing page's per-model breakdown). */
  readonly api_usage_by_model: Readonly<Record<string, string>>
}

export interface HoldSums<T> {
  readonly held: T
  readonly consumed: T
  readonly refunded: T
  readonly overage: T
  readonly open: T
}

/** The ledger's row kinds, in the order the output lists their totals. */
const ROW_KINDS: ReadonlyArray<LedgerRowKind> = ["topup", "adjustment", "gpu_usage", "refund", "api_usage", "storage_billing"]

/** Sums holds by part: settled ones' consumption, refund and overage, open ones' amount. */
const sumHolds = (holds: ReadonlyArray<Hold>): HoldSums<Micros> => {
  const sums = { held: 0n, consumed: 0n, refunded: 0n, overage: 0n, open: 0n }
  for (const h of holds) {
    sums.held += h.held_micros
    if (h.status === "open") sums.open += h.held_micros
    else {
      sums.consumed += h.consumed_micros ?? 0n
      sums.refunded += h.refunded_micros ?? 0n
      sums.overage += h.overage_micros ?? 0n
    }
  }
  return sums
}

const holdSumsOutput = (s: HoldSums<Micros>): HoldSums<string> => ({
  held: formatDollars(s.held),
  consumed: formatDollars(s.consumed),
  refunded: formatDollars(s.refunded),
  overage: formatDollars(s.overage),
  open: formatDollars(s.open)
})

/** Each account's totals, from its rows and holds alone. */
const accountTotals = (facts: RunFacts): Record<string, AccountTotals> => {
  const out: Record<string, AccountTotals> = {}
  const totals = new Map<string, Record<LedgerRowKind, Micros>>()
  const byModel = new Map<string, Map<string, Micros>>()
  for (const a of facts.accounts) {
    totals.set(a.id, Object.fromEntries(ROW_KINDS.map((k) => [k, 0n])) as Record<LedgerRowKind, Micros>)
    byModel.set(a.id, new Map())
  }
  for (const r of facts.rows) {
    const t = totals.get(r.account)
    if (t === undefined) continue
    t[r.kind] = t[r.kind]! + r.amount_micros
    if (r.kind === "api_usage") {
      const models = byModel.get(r.account)!
      const model = r.resource ?? ""
      models.set(model, (models.get(model) ?? 0n) + r.amount_micros)
    }
  }
  const holds = new Map<string, Hold[]>()
  for (const h of facts.holds) {
    const list = holds.get(h.account)
    if (list === undefined) holds.set(h.account, [h])
    else list.push(h)
  }
  for (const a of facts.accounts) {
    const t = totals.get(a.id)!
    out[a.id] = {
      by_kind: Object.fromEntries(ROW_KINDS.map((k) => [k, formatDollars(t[k]!)])) as Record<LedgerRowKind, string>,
      holds: holdSumsOutput(sumHolds(holds.get(a.id) ?? [])),
      api_usage_by_model: Object.fromEntries([...byModel.get(a.id)!].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)).map(([m, v]) => [m, formatDollars(v)]))
    }
  }
  return out
}

export interface RunResult {
  readonly output: SimOutput
  readonly facts: RunFacts
  /** Engine inputs handled (timeline inputs, pod events, alarms, watchdog checks): the journal's length. */
  readonly engine_events: number
}

export interface Engine {
  readonly scope: Scope.CloseableScope
  readonly runtime: Runtime.Runtime<Supervisor | Ledger>
  readonly sup: SupervisorApi
  readonly ledger: LedgerStore
}

/**
 * Builds the engine (ledger, notifier, journal, supervisor) over a world, as Effect layers,
 * and returns the runtime that carries the world's clock as Effect's `Clock`: the simulated
 * cluster on the virtual clock here, the Kubernetes driver on a stepped clock in test/k8s.
 */
export const startSimEngine = (world: {
  readonly db: string
  readonly clock: EngineClock
  readonly cluster: ClusterPort
  readonly gpu_rates: ReadonlyMap<string, Micros>
  readonly model_prices?: ReadonlyMap<string, ModelPrice | null>
  readonly aggregate_api_usage?: boolean
  readonly storage_rates?: ReadonlyMap<string, Micros>
  readonly payments?: SimPayments
  /** Tests: `ReconcileAudit` (every watchdog tick checked against a full scan). */
  readonly audit_reconcile?: boolean
}): Engine => {
  const worldLayer = Layer.mergeAll(
    clockLayer(world.clock),
    world.audit_reconcile === true ? Layer.succeed(ReconcileAudit, true) : Layer.empty,
    Layer.succeed(Cluster, world.cluster),
    world.payments === undefined ? Layer.empty : Layer.succeed(Payments, world.payments),
    catalogLayer(world.gpu_rates, world.model_prices, world.aggregate_api_usage ?? false, world.storage_rates)
  )
  // A simulation can always be run again, so it does not pay for fsync (OpenOptions).
  const engineLayer = supervisorLayer.pipe(
    Layer.provideMerge(sqliteNotifierAndJournal),
    Layer.provideMerge(Layer.merge(ledgerLayer(world.db, { synchronous: "OFF" }), worldLayer))
  )
  const scope = Effect.runSync(Scope.make())
  const runtime = Effect.runSync(Layer.toRuntime(engineLayer).pipe(Scope.extend(scope)))
  return { scope, runtime, sup: Context.get(runtime.context, Supervisor), ledger: Context.get(runtime.context, Ledger) }
}

export const stopEngine = (e: Engine): void => Effect.runSync(Scope.close(e.scope, Exit.void))

/** What a world does for the timeline's world events (the simulated cluster, or Kubernetes' kubelet). */
export interface TimelineWorld {
  preempt(target: string): WorldOutcome
  resume(target: string): WorldOutcome
  failPod(target: string): WorldOutcome
  regionDown(region: string): WorldOutcome
  regionUp(region: string): WorldOutcome
  /** The engine's watch misses the next `count` events of a resource. */
  missEvents(id: string, count: number): WorldOutcome
  readonly payments: SimPayments
}

export interface Refusal {
  readonly status: number
  readonly error: string
  readonly message: string
}

/**
 * Applies one timeline input (TIMELINE.md) to the engine or the world, in any world: null, or
 * the refusal to record. Commands go through the supervisor's synchronous facade
 * (`SupervisorApi.sync`): the same code as its Effects, without a fiber per input; a defect
 * still throws out of the run. `sup` is null while the control plane is down (503).
 */
export const applyInput = (e: TimelineEvent, sup: SupervisorApi | null, world: TimelineWorld, onTopUp?: (payment_id: string) => void): Refusal | null => {
  const call = <A>(command: (sync: SupervisorSync) => Either.Either<A, EngineError>): Refusal | null => {
    if (sup === null) return { status: 503, error: "engine_unavailable", message: "the control plane is down" }
    const result = command(sup.sync)
    if (Either.isRight(result)) return null
    const mapped = errorStatus(result.left)
    return { status: mapped.status, error: mapped.error, message: mapped.message }
  }
  const outcome = (o: WorldOutcome): Refusal | null => (o.ok ? null : { status: o.status, error: o.error, message: o.message })
  // With a region, a pod event hits that region's replica of an inference instance.
  const podTarget = (x: { id: string; region?: string | undefined }): string => (x.region === undefined ? x.id : replicaResource(x.id, x.region))
  // An inference instance's pods are its replicas: without a region the world finds no pod by its
  // id, and "no pod runs for ii-1" of an instance that runs (or a watch that misses nothing)
  // would send a reader the wrong way. The instance's regions, if `id` is one the engine knows.
  const inferenceRegions = (id: string): ReadonlyArray<string> | null => {
    if (sup === null) return null
    const view = sup.sync.describe(id)
    return Either.isRight(view) && view.right.kind === INFERENCE_KIND ? view.right.regions.map((r) => r.region) : null
  }
  const podOutcome = (x: { id: string; region?: string | undefined }, o: WorldOutcome): Refusal | null => {
    const refusal = outcome(o)
    const regions = refusal === null || x.region !== undefined ? null : inferenceRegions(x.id)
    if (regions === null) return refusal
    return { status: 400, error: "region_required", message: `${x.id} is an inference instance: ${e.do} hits one replica, so name its region (${regions.join(", ")})` }
  }
  switch (e.do) {
    case "launch_gpu_instance":
      return call((s) =>
        s.launchGpu({
          account: e.account,
          id: e.id,
          kind: "gpu_instance",
          gpu: e.gpu,
          gpu_count: e.gpu_count,
          node_count: 1,
          region: e.region,
          estimated_duration_hours: e.estimated_duration_hours,
          image: e.image ?? null,
          drive: e.drive ?? null,
          filesystems: e.filesystems ?? []
        })
      )
    case "create_drive":
    case "create_filesystem":
      return call((s) => s.createStorage({ account: e.account, id: e.id, kind: e.do === "create_drive" ? "cloud_drive" : "shared_fs", size_gb: e.size_gb, region: e.region }))
    case "delete_storage":
      return call((s) => s.deleteStorage(e.id))
    case "launch_gpu_cluster":
      return call((s) => s.launchGpu({ account: e.account, id: e.id, kind: "gpu_cluster", gpu: e.gpu, gpu_count: e.gpu_count, node_count: e.node_count, region: e.region, estimated_duration_hours: e.estimated_duration_hours, image: e.image ?? null }))
    case "extend":
      return call((s) => s.extend(e.id, e.hours))
    case "terminate":
      return call((s) => s.terminate(e.id))
    // Money enters through the payment provider (issue 6): the top-up is credited when its
    // `payment_intent.succeeded` webhook arrives, on the provider's schedule.
    case "top_up": {
      const amount = dollars(e.amount)
      if (amount < policy.TOP_UP_MIN_MICROS || amount > policy.TOP_UP_MAX_MICROS) return { status: 400, error: "invalid_amount", message: "a top-up is $1 to $1,000 per transaction" }
      return call(() => {
        const started = sup!.payments!.startTopUp(e.account, amount)
        if (Either.isRight(started)) onTopUp?.(started.right.id)
        return started
      })
    }
    case "set_auto_recharge":
      return call(() => sup!.payments!.setAutoRecharge(e.account, { threshold_micros: dollars(e.threshold), amount_micros: dollars(e.amount), payment_method: e.payment_method ?? "pm_card_visa" }))
    case "card_decline":
      return outcome(world.payments.declineNext(e.account, e.count ?? 1))
    case "stripe_refund":
      return outcome(
        world.payments.refund(e.account, e.payment ?? null, e.amount === undefined ? null : Number(dollars(e.amount) / policy.MICROS_PER_CENT), e.fail_after === undefined ? null : parseDurationMs(e.fail_after)!)
      )
    case "stripe_dispute":
      return outcome(
        world.payments.dispute(e.account, e.payment ?? null, e.amount === undefined ? null : Number(dollars(e.amount) / policy.MICROS_PER_CENT), e.won_after === undefined ? null : parseDurationMs(e.won_after)!)
      )
    case "preempt":
      return podOutcome(e, world.preempt(podTarget(e)))
    case "resume":
      return podOutcome(e, world.resume(podTarget(e)))
    case "pod_fail":
      return podOutcome(e, world.failPod(podTarget(e)))
    case "register_model":
      return call((s) => s.registerModel({ account: e.account, model: e.model, source: e.source as ModelSource, filesystem: e.filesystem ?? null, gpu: e.gpu, gpu_count: e.gpu_count }))
    case "delete_model":
      return call((s) => s.deleteModel(e.account, e.model))
    case "api_request":
      return call((s) => s.apiRequest({ account: e.account, model: e.model, input_tokens: e.input_tokens, output_tokens: e.output_tokens, images: e.images, seconds: e.seconds }))
    case "launch_inference_instance":
      return call((s) => s.launchInference({ account: e.account, id: e.id, model: e.model }))
    case "region_down":
      return outcome(world.regionDown(e.region))
    case "region_up":
      return outcome(world.regionUp(e.region))
    case "miss_pod_events": {
      const regions = inferenceRegions(e.id)
      if (regions !== null) {
        return { status: 400, error: "region_required", message: `${e.id} is an inference instance: its pod events are its replicas', so name one (${regions.map((r) => replicaResource(e.id, r)).join(", ")})` }
      }
      return outcome(world.missEvents(e.id, e.count ?? 3))
    }
    default:
      return { status: 501, error: "unsupported_event", message: `event kind ${e.do} arrives with a later capability of the engine` }
  }
}

/** A crash drill: the engine dropped after the work of `at_ms`, back `duration_ms` later (0: a restart). */
export interface Drill {
  readonly at_ms: number
  readonly duration_ms: number
  /** How the drill was asked for, to name it in a problem (`--restart-at PT1H`); else its kind and instant. */
  readonly label?: string
}

/**
 * Why the drills cannot happen as asked, or null. A drill must fall within the run (from its
 * start to `until`, both included) and outside every outage before it: a drill after `until`
 * never happened, one before the start or inside an outage would happen at another instant,
 * and either way the run would report a crash drill it did not do.
 */
export const drillProblem = (timeline: Pick<Timeline, "start_ms" | "until_ms">, drills: ReadonlyArray<Drill>): string | null => {
  const labelOf = (d: Drill): string => d.label ?? `${d.duration_ms === 0 ? "restart" : "outage"} at ${isoInstant(d.at_ms)}`
  let down: Drill | null = null
  for (const d of [...drills].sort((a, b) => a.at_ms - b.at_ms)) {
    if (d.at_ms < timeline.start_ms) return `${labelOf(d)}: before the run's start (${isoInstant(timeline.start_ms)})`
    if (d.at_ms > timeline.until_ms) return `${labelOf(d)}: after the run's end (until ${isoInstant(timeline.until_ms)}), so it would never happen; lengthen until or move it`
    if (down !== null && d.at_ms < down.at_ms + down.duration_ms) return `${labelOf(d)}: inside ${labelOf(down)}, while the engine is already down`
    if (down === null || d.at_ms + d.duration_ms > down.at_ms + down.duration_ms) down = d
  }
  return null
}

/** A top-up the engine took: its input and the payment it wrote. */
export interface TopUpStarted {
  readonly event: TimelineEvent
  readonly payment_id: string
}

/**
 * The top-ups whose payment failed, as the refusals they are: TIMELINE.md reports a refused
 * input with its code, and a declined card refuses a top-up as the API does (402
 * `payment_failed` with the provider's message, src/api/routes/payments.ts). The engine takes
 * the input, and learns of the decline when the provider's `payment_intent.payment_failed`
 * arrives (at the same instant by default, or `webhook_delay` later), so this reads the
 * payments as the engine left them: a top-up whose failure it has not heard of by the end is
 * not reported. The simulated provider fails a top-up only by declining the card.
 */
export const declinedTopUps = (book: PaymentBook | null, started: ReadonlyArray<TopUpStarted>): Rejected[] =>
  started.flatMap(({ event, payment_id }) => {
    const payment = book?.payment(payment_id)
    if (payment?.status !== "failed") return []
    return [{ at: isoInstant(event.at_ms), event: event.index, do: event.do, status: 402, error: "payment_failed", message: `${SIM_DECLINE_MESSAGE} (payment ${payment_id}: ${payment.failure_code ?? "failed"})` }]
  })

/** `rejected` with `late` among them, in the order the inputs applied (by instant, then file position). */
export const withLateRefusals = (rejected: ReadonlyArray<Rejected>, late: ReadonlyArray<Rejected>): ReadonlyArray<Rejected> =>
  late.length === 0 ? rejected : [...rejected, ...late].sort((a, b) => Date.parse(a.at) - Date.parse(b.at) || a.event - b.event)

export const runTimeline = (timeline: Timeline, options: RunOptions = {}): RunResult => {
  const db = options.db ?? ":memory:"
  const outages = [...(options.restartAt ?? []).map((at_ms) => ({ at_ms, duration_ms: 0 })), ...(options.outages ?? [])].sort((a, b) => a.at_ms - b.at_ms)
  const drillError = drillProblem(timeline, outages)
  if (drillError !== null) throw new Error(drillError)
  // SQLite's `:memory:` dies with its connection, and `""` is a temporary database per connection.
  if (outages.length > 0 && (db === ":memory:" || db === "")) throw new Error("restarts need a database file: an in-memory ledger dies with its engine")
  const stepsPerCommit = options.stepsPerCommit ?? SIM_STEPS_PER_COMMIT
  if (!Number.isSafeInteger(stepsPerCommit) || stepsPerCommit < 1) throw new Error(`stepsPerCommit must be a positive integer, got ${stepsPerCommit}`)

  const clock = new VirtualClock(timeline.start_ms)
  const cluster = new SimCluster(clock, timeline.regions, timeline.seed)
  const payments = simPaymentsFor(clock, timeline.seed, timeline.payments, timeline.accounts.map((a) => a.id))
  const startEngine = (): Engine =>
    startSimEngine({
      payments,
      db,
      clock,
      cluster,
      gpu_rates: timeline.gpu_rates,
      model_prices: timeline.model_prices,
      aggregate_api_usage: timeline.aggregate_api_usage,
      storage_rates: timeline.storage_rates,
      audit_reconcile: options.auditReconcile ?? false
    })
  let engine: Engine | null = startEngine()
  const rejected: Rejected[] = []
  // Webhooks reach the engine while it is up; while it is down the provider retries.
  payments.deliver = webhookTo(() => engine?.sup.payments)

  const reject = (e: TimelineEvent, refusal: Refusal): void => {
    rejected.push({ at: isoInstant(e.at_ms), event: e.index, do: e.do, ...refusal })
  }
  const world: TimelineWorld = {
    preempt: (target) => cluster.preempt(target),
    resume: (target) => cluster.resume(target),
    failPod: (target) => cluster.failPod(target),
    regionDown: (region) => cluster.regionDown(region),
    regionUp: (region) => cluster.regionUp(region),
    missEvents: (id, count) => cluster.missEvents(id, count),
    payments
  }
  const topUps: TopUpStarted[] = []
  const apply = (e: TimelineEvent): void => {
    const refusal = applyInput(e, engine?.sup ?? null, world, (payment_id) => topUps.push({ event: e, payment_id }))
    if (refusal !== null) reject(e, refusal)
  }

  // Accounts open at the start, each with its opening balance as an operator's adjustment.
  const first = engine
  first.sup.unitOfWork(() => {
    for (const a of timeline.accounts) {
      Runtime.runSync(first.runtime)(first.sup.openAccount(a.id))
      if (a.balance_micros > 0n) {
        Runtime.runSync(first.runtime)(first.sup.credit(a.id, "adjustment", a.balance_micros, policy.OPENING_BALANCE_DESCRIPTION))
      }
    }
  })
  feedInputs(clock, timeline.events, apply)

  // One unit of work per clock step, committed in groups of SIM_STEPS_PER_COMMIT steps and
  // always before the engine stops: a restart or an outage only ever cuts between commits.
  // While the engine is down the world runs alone.
  let steps = 0
  const step = (_: number, fire: () => void): void => {
    if (engine === null) return fire()
    engine.sup.beginBatch()
    engine.sup.unitOfWork(fire)
    if (++steps % stepsPerCommit === 0) engine.sup.commitBatch()
  }
  for (const outage of outages) {
    clock.advanceTo(Math.max(outage.at_ms, clock.now()), step)
    engine?.sup.commitBatch()
    if (engine !== null) stopEngine(engine)
    engine = null
    clock.advanceTo(Math.min(Math.max(outage.at_ms + outage.duration_ms, clock.now()), timeline.until_ms), step)
    engine = startEngine()
  }
  clock.advanceTo(timeline.until_ms, step)
  // Usage still in an open aggregation minute is posted at the end of the run.
  engine?.sup.settleApiUsage()
  engine?.sup.commitBatch()

  const last: Engine = engine ?? startEngine()
  options.onPhase?.("ran")
  const engine_down = outages.filter((o) => o.duration_ms > 0).map((o) => ({ from_ms: o.at_ms, to_ms: Math.min(o.at_ms + o.duration_ms, timeline.until_ms) }))
  const facts = { ...collectFacts(last.ledger, timeline), provider_net: payments.netByAccount(), engine_down, world_phases: cluster.phaseHistory(), api_usage: apiUsageFacts(timeline, rejected, outages) }
  const engine_events = last.ledger.journalLength()
  const refused = withLateRefusals(rejected, declinedTopUps(last.sup.payments, topUps))
  stopEngine(last)
  options.onPhase?.("read")
  const violations = checkInvariants(facts)
  const output = render(facts, refused, violations)
  options.onPhase?.("checked")
  return { output, facts, engine_events }
}

/**
 * Puts the timeline's events on the clock one at a time: each, as it fires, schedules the
 * next (by instant, then index), so the timer heap holds one input, not every input of the
 * run. Inputs fire in the order they would if all were scheduled at the start: an input's
 * timer (lane `input`, keyed by its index) is on the heap before anything that must follow
 * it can be popped, and at one instant it fires before the world's and the engine's timers.
 */
const feedInputs = (clock: VirtualClock, events: ReadonlyArray<TimelineEvent>, apply: (e: TimelineEvent) => void): void => {
  // `Timeline.events` comes in the order inputs apply (decodeTimeline sorts it); checked, not copied.
  for (let i = 1; i < events.length; i++) {
    const a = events[i - 1]!
    const b = events[i]!
    assert(a.at_ms < b.at_ms || (a.at_ms === b.at_ms && a.index < b.index), () => `timeline events out of order at ${b.index}`)
  }
  const scheduleFrom = (i: number): void => {
    const e = events[i]
    if (e === undefined) return
    clock.schedule(
      e.at_ms,
      () => {
        scheduleFrom(i + 1)
        apply(e)
      },
      { lane: Lane.input, key: String(e.index).padStart(9, "0") }
    )
  }
  scheduleFrom(0)
}

/**
 * The `/v1` requests the engine admitted (the timeline's `api_request` inputs it did not refuse:
 * a refusal writes nothing), with the catalog's prices, for the checker to price them itself.
 */
const apiUsageFacts = (timeline: Timeline, rejected: ReadonlyArray<Rejected>, outages: ReadonlyArray<{ readonly at_ms: number }>): ApiUsageFacts => {
  const refused = new Set(rejected.filter((r) => r.do === "api_request").map((r) => r.event))
  const requests: ApiRequestFact[] = []
  for (const e of timeline.events) {
    if (e.do !== "api_request" || refused.has(e.index)) continue
    requests.push({ at: e.at_ms, account: e.account, model: e.model, input_tokens: e.input_tokens, output_tokens: e.output_tokens, images: e.images, seconds: e.seconds })
  }
  return {
    rows: timeline.aggregate_api_usage ? "per_minute" : "per_request",
    prices: timeline.model_prices,
    requests,
    engine_stops_ms: outages.map((o) => o.at_ms)
  }
}

/** What the run left in SQLite, read back whole: the invariant checker and the output use nothing else. */
export const collectFacts = (ledger: LedgerStore, timeline: Timeline): RunFacts => ({
  start_ms: timeline.start_ms,
  end_ms: timeline.until_ms,
  rows: ledger.ledgerRows(),
  holds: ledger.holds(),
  notifications: ledger.notifications(),
  transitions: ledger.transitions(),
  accounts: ledger.accounts(),
  resources: ledger.resources().map((r): ResourceFacts => {
    const stored = readSnapshot(r)
    switch (stored.kind) {
      case "storage":
        return { id: r.id, account: r.account, kind: "storage" as const, status: r.status, live: r.live, context: stored.snapshot.context }
      case "inference":
        return { id: r.id, account: r.account, kind: "inference_instance" as const, status: r.status, live: r.live, context: stored.snapshot.context }
      default:
        return { id: r.id, account: r.account, kind: r.kind as "gpu_instance" | "gpu_cluster", status: r.status, live: r.live, context: stored.snapshot.context }
    }
  })
})

/** The output of TIMELINE.md: the run's facts, the refused inputs and the invariant checker's verdict. */
export const render = (facts: RunFacts, rejected: ReadonlyArray<Rejected>, violations: ReadonlyArray<Violation>): SimOutput => {
  const holdsOf = new Map<string, Hold[]>()
  for (const h of facts.holds) {
    const list = holdsOf.get(h.resource)
    if (list === undefined) holdsOf.set(h.resource, [h])
    else list.push(h)
  }
  const chargedOf = new Map<string, Micros>()
  for (const r of facts.rows) if (r.kind === "storage_billing" && r.resource !== null) chargedOf.set(r.resource, (chargedOf.get(r.resource) ?? 0n) - r.amount_micros)
  /** What a GPU resource's or inference instance's holds came to: every part, and what is still held. */
  const money = (id: string) => {
    const s = holdSumsOutput(sumHolds(holdsOf.get(id) ?? []))
    return { held: s.held, consumed: s.consumed, refunded: s.refunded, overage: s.overage, open_hold: s.open }
  }
  return {
  ledger: facts.rows.map((r) => ({
    id: r.id,
    at: isoInstant(r.at),
    account: r.account,
    kind: r.kind,
    amount: formatDollars(r.amount_micros),
    balance_after: formatDollars(r.balance_after_micros),
    resource: r.resource,
    hold: r.hold_id,
    description: r.description
  })),
  notifications: facts.notifications.map((n) => ({
    at: isoInstant(n.at),
    account: n.account,
    resource: n.resource,
    severity: n.severity,
    kind: n.kind,
    text: n.text
  })),
  transitions: facts.transitions.map((t) => ({ at: isoInstant(t.at), resource: t.resource, from: t.from_state, to: t.to_state, reason: t.reason })),
  rejected,
  accounts: Object.fromEntries(facts.accounts.map((a) => [a.id, { balance: formatDollars(a.balance_micros) }])),
  account_totals: accountTotals(facts),
  resources: Object.fromEntries(
    facts.resources.map((r) => [
      r.id,
      r.kind === "storage"
        ? {
            kind: r.context.kind,
            account: r.account,
            status: r.status,
            // TIMELINE.md names it on every resource; storage is deleted, never terminated.
            termination_reason: null,
            size_gb: r.context.size_gb,
            region: r.context.region,
            in_use: r.context.attached_to.length > 0,
            attached_to: r.context.attached_to,
            charged: formatDollars(chargedOf.get(r.id) ?? 0n)
          }
        : r.kind === "inference_instance"
        ? {
            kind: r.kind,
            account: r.account,
            status: r.status,
            termination_reason: r.context.termination_reason,
            model: r.context.model,
            gpu: r.context.gpu,
            gpu_count: r.context.gpu_count,
            regions: Object.fromEntries(r.context.regions.map((region) => [region, r.context.replicas[region]?.status ?? "pending"])),
            cycle: r.context.cycle.number,
            cycle_hold: formatDollars(BigInt(r.context.cycle.hold_micros)),
            ...money(r.id)
          }
        : {
        kind: r.kind,
        account: r.account,
        status: r.status,
        termination_reason: r.context.termination_reason,
        gpu: r.context.gpu,
        gpu_count: r.context.gpu_count,
        node_count: r.context.node_count,
        region: r.context.region,
        hours_committed: r.context.hours_committed,
        started_at: r.context.started_at === null ? null : isoInstant(r.context.started_at),
        deadline_at: r.context.deadline_at === null ? null : isoInstant(r.context.deadline_at),
        ...money(r.id)
          }
    ])
  ),
  invariants: { ok: violations.length === 0, violations }
  }
}

/**
 * Runs the same timeline again, with the same restarts and outages, and says whether the two
 * outputs are byte-identical (SPEC §9.8). (Without them, a run with an outage would be
 * compared with one that had none: inputs refused with 503 in one are applied in the other.)
 */
export const checkDeterminism = (timeline: Timeline, first: SimOutput, db: string, options: Pick<RunOptions, "restartAt" | "outages"> = {}): boolean =>
  JSON.stringify(runTimeline(timeline, { db, restartAt: options.restartAt, outages: options.outages }).output) === JSON.stringify(first)
