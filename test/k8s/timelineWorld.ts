/**
 * Runs a timeline (../shared/TIMELINE.md) in the Kubernetes world: the same supervisor and
 * machines as `sim/runner.ts`, over `KubernetesCluster` against the API test server, with
 * the scripted kubelet playing the simulated cluster's part on the stepped virtual clock.
 * The same file must give the same ledger, notifications and transitions in both worlds.
 *
 * What the world does for the timeline's world events: `preempt`/`resume`/`pod_fail`/
 * `region_down`/`region_up` go to the kubelet; `miss_pod_events` makes the engine miss pod
 * events, as a watch can, through `MissEvents` (the driver's cache still sees the truth,
 * which is what the watchdog's heal reads).
 *
 * This duplicates the input dispatch of `sim/runner.ts#runTimeline`, which builds its world
 * itself; see docs/KUBERNETES.md ("Integration") for the change that would share it.
 */
import { Context, Effect, Either, Exit, Layer, Runtime, Scope } from "effect"
import type { ClusterEvent, ClusterPort, VolumeSpec, WorkloadSpec } from "../../src/cluster.js"
import { errorStatus, type EngineError } from "../../src/errors.js"
import type { LedgerStore } from "../../src/ledger/store.js"
import { dollars } from "../../src/money.js"
import * as policy from "../../src/policy.js"
import { replicaResource } from "../../src/resources.js"
import { catalogLayer, clockLayer, Cluster, Ledger, ledgerLayer, Payments, sqliteNotifierAndJournal } from "../../src/services.js"
import { simPaymentsFor, type SimPayments } from "../../sim/payments.js"
import { layer as supervisorLayer, Supervisor, type SupervisorApi, type SupervisorSync } from "../../src/supervisor.js"
import { Lane } from "../../src/clock.js"
import type { WorldOutcome } from "../../sim/cluster.js"
import type { Rejected } from "../../sim/runner.js"
import type { Timeline, TimelineEvent } from "../../sim/timeline.js"
import { isoInstant } from "../../sim/iso.js"
import { K8sWorld, type SteppedClock } from "./harness.js"

/** The engine's watch misses the next N events of a resource (the timeline's `miss_pod_events`). */
export class MissEvents implements ClusterPort {
  private readonly missing = new Map<string, number>()
  constructor(private readonly inner: ClusterPort) {}

  missEvents(resource: string, count: number): WorldOutcome {
    this.missing.set(resource, (this.missing.get(resource) ?? 0) + count)
    return { ok: true }
  }

  subscribe(handler: (event: ClusterEvent) => void): () => void {
    return this.inner.subscribe((event) => {
      const missed = this.missing.get(event.resource) ?? 0
      if (missed > 0) return void this.missing.set(event.resource, missed - 1)
      handler(event)
    })
  }

  createWorkload(spec: WorkloadSpec): void {
    this.inner.createWorkload(spec)
  }
  deleteWorkload(name: string): void {
    this.inner.deleteWorkload(name)
  }
  ensureVolume(volume: VolumeSpec): void {
    this.inner.ensureVolume(volume)
  }
  deleteVolume(id: string): void {
    this.inner.deleteVolume(id)
  }
  forEachWorkload(visit: (name: string, resource: string) => void): void {
    this.inner.forEachWorkload(visit)
  }
  get(name: string) {
    return this.inner.get(name)
  }
  phaseOf(name: string) {
    return this.inner.phaseOf(name)
  }
  list() {
    return this.inner.list()
  }
  region(name: string) {
    return this.inner.region(name)
  }
  regionNames() {
    return this.inner.regionNames()
  }
}

export interface KubeEngine {
  readonly scope: Scope.CloseableScope
  readonly runtime: Runtime.Runtime<Supervisor | Ledger>
  readonly sup: SupervisorApi
  readonly ledger: LedgerStore
}

/** The engine (ledger, supervisor) over any cluster port on the stepped clock. */
export const startEngine = (world: {
  readonly db: string
  readonly clock: SteppedClock
  readonly cluster: ClusterPort
  readonly timeline?: Timeline
  readonly gpu_rates?: ReadonlyMap<string, bigint>
  /** Daily rate per GB by storage kind (`cloud_drive`, `shared_fs`), without a timeline. */
  readonly storage_rates?: ReadonlyMap<string, bigint>
  readonly payments?: SimPayments
}): KubeEngine => {
  const t = world.timeline
  const worldLayer = Layer.mergeAll(
    clockLayer(world.clock),
    Layer.succeed(Cluster, world.cluster),
    world.payments === undefined ? Layer.empty : Layer.succeed(Payments, world.payments),
    catalogLayer(t?.gpu_rates ?? world.gpu_rates ?? new Map(), t?.model_prices, t?.aggregate_api_usage ?? false, t?.storage_rates ?? world.storage_rates)
  )
  const engineLayer = supervisorLayer.pipe(Layer.provideMerge(sqliteNotifierAndJournal), Layer.provideMerge(Layer.merge(ledgerLayer(world.db, { synchronous: "OFF" }), worldLayer)))
  const scope = Effect.runSync(Scope.make())
  const runtime = Effect.runSync(Layer.toRuntime(engineLayer).pipe(Scope.extend(scope)))
  return { scope, runtime, sup: Context.get(runtime.context, Supervisor), ledger: Context.get(runtime.context, Ledger) }
}

export const stopEngine = (e: KubeEngine): void => Effect.runSync(Scope.close(e.scope, Exit.void))

export interface KubeRunResult {
  readonly ledger: LedgerStore
  readonly rejected: ReadonlyArray<Rejected>
  readonly world: K8sWorld
  readonly engine: KubeEngine
}

/** Runs the timeline; the caller reads the ledger, then calls `finish`. */
export const runTimelineInKubernetes = async (timeline: Timeline, options: { readonly db?: string } = {}): Promise<KubeRunResult & { finish(): Promise<void> }> => {
  for (const r of timeline.regions) {
    if (r.image_pull_jitter_ms > 0 || r.pull_failure_probability > 0 || r.preemption_mean_interval_ms > 0) {
      throw new Error(`region ${r.name}: the scripted kubelet has no random source (jitter, pull failures, random preemptions)`)
    }
  }
  const world = await K8sWorld.start({ start_ms: timeline.start_ms, regions: timeline.regions })
  const driver = await world.driver()
  const cluster = new MissEvents(driver)
  const payments = simPaymentsFor(world.clock, timeline.seed, timeline.payments)
  const engine = startEngine({ db: options.db ?? ":memory:", clock: world.clock, cluster, timeline, payments })
  payments.deliver = (event) => engine.sup.payments?.handleEvent(event) ?? null
  const rejected: Rejected[] = []
  const reject = (e: TimelineEvent, status: number, error: string, message: string): void => {
    rejected.push({ at: isoInstant(e.at_ms), event: e.index, do: e.do, status, error, message })
  }
  const call = <A>(e: TimelineEvent, command: (sup: SupervisorSync) => Either.Either<A, EngineError>): void => {
    const result = command(engine.sup.sync)
    if (Either.isRight(result)) return
    const mapped = errorStatus(result.left)
    reject(e, mapped.status, mapped.error, mapped.message)
  }
  const world_ = (e: TimelineEvent, outcome: WorldOutcome): void => {
    if (!outcome.ok) reject(e, outcome.status, outcome.error, outcome.message)
  }
  const podTarget = (e: { id: string; region?: string | undefined }): string => (e.region === undefined ? e.id : replicaResource(e.id, e.region))
  const k = world.kubelet

  const apply = (e: TimelineEvent): void => {
    switch (e.do) {
      case "launch_gpu_instance":
        return call(e, (sup) =>
          sup.launchGpu({
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
        return call(e, (sup) => sup.createStorage({ account: e.account, id: e.id, kind: e.do === "create_drive" ? "cloud_drive" : "shared_fs", size_gb: e.size_gb, region: e.region }))
      case "delete_storage":
        return call(e, (sup) => sup.deleteStorage(e.id))
      case "launch_gpu_cluster":
        return call(e, (sup) => sup.launchGpu({ account: e.account, id: e.id, kind: "gpu_cluster", gpu: e.gpu, gpu_count: e.gpu_count, node_count: e.node_count, region: e.region, estimated_duration_hours: e.estimated_duration_hours, image: e.image ?? null }))
      case "extend":
        return call(e, (sup) => sup.extend(e.id, e.hours))
      case "terminate":
        return call(e, (sup) => sup.terminate(e.id))
      case "top_up": {
        const amount = dollars(e.amount)
        if (amount < policy.TOP_UP_MIN_MICROS || amount > policy.TOP_UP_MAX_MICROS) return reject(e, 400, "invalid_amount", "a top-up is $1 to $1,000 per transaction")
        return call(e, () => engine.sup.payments!.startTopUp(e.account, amount))
      }
      case "set_auto_recharge":
        return call(e, () => engine.sup.payments!.setAutoRecharge(e.account, { threshold_micros: dollars(e.threshold), amount_micros: dollars(e.amount), payment_method: e.payment_method ?? "pm_card_visa" }))
      case "card_decline":
        return world_(e, payments.declineNext(e.account, e.count ?? 1))
      case "stripe_refund":
        return world_(e, payments.refund(e.account, e.payment ?? null, e.amount === undefined ? null : Number(dollars(e.amount) / policy.MICROS_PER_CENT)))
      case "preempt":
        return world_(e, k.preempt(podTarget(e)))
      case "resume":
        return world_(e, k.resume(podTarget(e)))
      case "pod_fail":
        return world_(e, k.fail(podTarget(e)))
      case "register_model":
        return call(e, (sup) => sup.registerModel({ account: e.account, model: e.model, source: e.source as "huggingface", filesystem: e.filesystem ?? null, gpu: e.gpu, gpu_count: e.gpu_count }))
      case "delete_model":
        return call(e, (sup) => sup.deleteModel(e.account, e.model))
      case "api_request":
        return call(e, (sup) => sup.apiRequest({ account: e.account, model: e.model, input_tokens: e.input_tokens, output_tokens: e.output_tokens, images: e.images, seconds: e.seconds }))
      case "launch_inference_instance":
        return call(e, (sup) => sup.launchInference({ account: e.account, id: e.id, model: e.model }))
      case "region_down":
        return world_(e, k.regionDown(e.region))
      case "region_up":
        return world_(e, k.regionUp(e.region))
      case "miss_pod_events":
        return world_(e, cluster.missEvents(e.id, e.count ?? 3))
      default:
        return reject(e, 501, "unsupported_event", `event kind ${e.do} arrives with a later capability of the engine`)
    }
  }

  engine.sup.unitOfWork(() => {
    for (const a of timeline.accounts) {
      Runtime.runSync(engine.runtime)(engine.sup.openAccount(a.id))
      if (a.balance_micros > 0n) Runtime.runSync(engine.runtime)(engine.sup.credit(a.id, "adjustment", a.balance_micros, policy.OPENING_BALANCE_DESCRIPTION))
    }
  })
  for (const e of timeline.events) world.clock.schedule(e.at_ms, () => apply(e), { lane: Lane.input, key: String(e.index).padStart(9, "0") })
  await world.advanceTo(timeline.until_ms)
  engine.sup.settleApiUsage()
  return {
    ledger: engine.ledger,
    rejected,
    world,
    engine,
    finish: async () => {
      stopEngine(engine)
      await world.close()
    }
  }
}
