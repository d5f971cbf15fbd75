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
 * Inputs go through the same dispatch as the simulated world (`applyInput` in sim/runner.ts);
 * only the world's hands (the scripted kubelet) differ.
 */
import { Either, Runtime } from "effect"
import { expect } from "vitest"
import type { ClusterEvent, ClusterPort, VolumeSpec, WorkloadSpec } from "../../src/cluster.js"
import type { LedgerStore } from "../../src/ledger/store.js"
import * as policy from "../../src/policy.js"
import { simPaymentsFor, webhookTo, type SimPayments } from "../../sim/payments.js"
import { Lane } from "../../src/clock.js"
import type { WorldOutcome } from "../../sim/cluster.js"
import {
  applyInput,
  declinedTopUps,
  startSimEngine,
  stopEngine as stopSimEngine,
  withLateRefusals,
  type Engine,
  type Rejected,
  type RunResult,
  type TimelineWorld,
  type TopUpStarted
} from "../../sim/runner.js"
import type { Timeline, TimelineEvent } from "../../sim/timeline.js"
import { isoInstant } from "../../sim/iso.js"
import type { KubernetesCluster } from "../../src/k8s/cluster.js"
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
  forEachVolume(visit: (id: string) => void): void {
    this.inner.forEachVolume(visit)
  }
  forEachWorkload(visit: (name: string, resource: string) => void): void {
    this.inner.forEachWorkload(visit)
  }
  drainChanges(visit: (name: string, resource: string) => void): void {
    this.inner.drainChanges(visit)
  }
  get(name: string) {
    return this.inner.get(name)
  }
  firstStopAt(name: string, from: number) {
    return this.inner.firstStopAt(name, from)
  }
  recallGone(workload: Parameters<NonNullable<ClusterPort["recallGone"]>>[0], from: number) {
    return this.inner.recallGone?.(workload, from) ?? null
  }
  phaseOf(name: string) {
    return this.inner.phaseOf(name)
  }
  podsOf(name: string) {
    return this.inner.podsOf?.(name) ?? []
  }
  viewBehind() {
    return this.inner.viewBehind?.() ?? false
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

export type KubeEngine = Engine

/** The engine (ledger, supervisor) over any cluster port on the stepped clock: `startSimEngine`'s. */
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
  const storage_rates = t?.storage_rates ?? world.storage_rates
  return startSimEngine({
    db: world.db,
    clock: world.clock,
    cluster: world.cluster,
    gpu_rates: t?.gpu_rates ?? world.gpu_rates ?? new Map(),
    ...(t?.model_prices === undefined ? {} : { model_prices: t.model_prices }),
    aggregate_api_usage: t?.aggregate_api_usage ?? false,
    ...(storage_rates === undefined ? {} : { storage_rates }),
    ...(world.payments === undefined ? {} : { payments: world.payments }),
    audit_reconcile: true
  })
}

export const stopEngine = (e: KubeEngine): void => stopSimEngine(e)

/**
 * An engine on a database file over a world's driver, with account `acme` opened at $100:
 * what a test of the control plane's restarts needs. `outage` drops the engine and its driver
 * and brings both back on the same file (`K8sWorld.outage`); `stop` ends it (afterEach).
 */
export class EngineOnDriver {
  private engine: KubeEngine | null = null

  private constructor(
    readonly w: K8sWorld,
    private readonly db: string,
    private readonly gpu_rates: ReadonlyMap<string, bigint>,
    private driverNow: KubernetesCluster
  ) {
    this.engine = this.start()
  }

  static async open(w: K8sWorld, gpu_rates: ReadonlyMap<string, bigint>, db: string): Promise<EngineOnDriver> {
    const run = new EngineOnDriver(w, db, gpu_rates, await w.driver())
    expect(Either.isRight(run.sup.openAccount("acme"))).toBe(true)
    expect(Either.isRight(run.sup.credit("acme", "adjustment", 100_000_000n, "Opening balance"))).toBe(true)
    return run
  }

  private start(): KubeEngine {
    return startEngine({ db: this.db, clock: this.w.clock, cluster: this.driverNow, gpu_rates: this.gpu_rates })
  }

  /** The engine running now (a new one after each outage). */
  get current(): KubeEngine {
    return this.engine!
  }

  get sup(): KubeEngine["sup"]["sync"] {
    return this.engine!.sup.sync
  }

  get driver(): KubernetesCluster {
    return this.driverNow
  }

  /** The engine and its driver are down from now until `until_ms` (since START); `during` happens at its offsets. */
  outage(until_ms: number, during: ReadonlyArray<readonly [number, () => void]> = []): Promise<void> {
    return this.w.outage(
      until_ms,
      during,
      () => {
        this.stop()
        this.driverNow.stop()
      },
      async () => {
        this.driverNow = await this.w.driver()
        this.engine = this.start()
      }
    )
  }

  stop(): void {
    if (this.engine !== null) stopEngine(this.engine)
    this.engine = null
  }
}

export interface KubeRunResult {
  readonly ledger: LedgerStore
  readonly rejected: ReadonlyArray<Rejected>
  readonly world: K8sWorld
  readonly engine: KubeEngine
}

/** Money, notices and states as text (bigints as decimal strings), one field a line: readable diffs. */
const json = (x: unknown): string => JSON.stringify(x, (_, v) => (typeof v === "bigint" ? v.toString() : v), 1)

/** The Kubernetes world told the same story as the simulated one: ledger, notifications, transitions and refusals, to the byte. */
export const expectSameAsSimulated = (k8s: KubeRunResult, sim: RunResult): void => {
  expect(json(k8s.ledger.ledgerRows())).toBe(json(sim.facts.rows))
  expect(json(k8s.ledger.notifications())).toBe(json(sim.facts.notifications))
  expect(json(k8s.ledger.transitions())).toBe(json(sim.facts.transitions))
  expect(json(k8s.rejected)).toBe(json(sim.output.rejected))
}

/**
 * Runs the timeline; the caller reads the ledger, then calls `finish`. `restartAt` and
 * `outages`: the drills of the simulated runner (`RunOptions`). After the work of `at_ms` the
 * engine and its driver are dropped; the cluster runs on alone (inputs meanwhile are refused
 * with 503, pod events go unheard); `duration_ms` later a new driver (which lists the pods
 * again) and a new engine start on the same SQLite file. A restart is an outage of 0 ms.
 */
export const runTimelineInKubernetes = async (
  timeline: Timeline,
  options: {
    readonly db?: string
    readonly restartAt?: ReadonlyArray<number>
    readonly outages?: ReadonlyArray<{ readonly at_ms: number; readonly duration_ms: number }>
  } = {}
): Promise<KubeRunResult & { finish(): Promise<void> }> => {
  const outages = [...(options.restartAt ?? []).map((at_ms) => ({ at_ms, duration_ms: 0 })), ...(options.outages ?? [])].sort((a, b) => a.at_ms - b.at_ms)
  if (outages.length > 0 && (options.db ?? ":memory:") === ":memory:") throw new Error("restarts need a database file")
  for (const r of timeline.regions) {
    if (r.image_pull_jitter_ms > 0 || r.pull_failure_probability > 0 || r.preemption_mean_interval_ms > 0) {
      throw new Error(`region ${r.name}: the scripted kubelet has no random source (jitter, pull failures, random preemptions)`)
    }
  }
  const world = await K8sWorld.start({ start_ms: timeline.start_ms, regions: timeline.regions })
  const payments = simPaymentsFor(world.clock, timeline.seed, timeline.payments, timeline.accounts.map((a) => a.id))
  let driver = await world.driver()
  let cluster = new MissEvents(driver)
  const start = (): KubeEngine => startEngine({ db: options.db ?? ":memory:", clock: world.clock, cluster, timeline, payments })
  let engine: KubeEngine | null = start()
  // While the engine is down the provider gets no answer and redelivers later (as in the simulated runner).
  payments.deliver = webhookTo(() => engine?.sup.payments)
  const first = engine
  const rejected: Rejected[] = []
  const k = world.kubelet
  // The same dispatch as the simulated world's runner; only the world's hands differ.
  const hands: TimelineWorld = {
    preempt: (target) => k.preempt(target),
    resume: (target) => k.resume(target),
    failPod: (target) => k.fail(target),
    regionDown: (region) => k.regionDown(region),
    regionUp: (region) => k.regionUp(region),
    missEvents: (id, count) => cluster.missEvents(id, count),
    payments
  }
  const topUps: TopUpStarted[] = []
  const apply = (e: TimelineEvent): void => {
    const refusal = applyInput(e, engine?.sup ?? null, hands, (payment_id) => topUps.push({ event: e, payment_id }))
    if (refusal !== null) rejected.push({ at: isoInstant(e.at_ms), event: e.index, do: e.do, ...refusal })
  }

  first.sup.unitOfWork(() => {
    for (const a of timeline.accounts) {
      Runtime.runSync(first.runtime)(first.sup.openAccount(a.id))
      if (a.balance_micros > 0n) Runtime.runSync(first.runtime)(first.sup.credit(a.id, "adjustment", a.balance_micros, policy.OPENING_BALANCE_DESCRIPTION))
    }
  })
  for (const e of timeline.events) world.clock.schedule(e.at_ms, () => apply(e), { lane: Lane.input, key: String(e.index).padStart(9, "0") })
  for (const outage of outages) {
    if (outage.at_ms > timeline.until_ms) break
    await world.advanceTo(Math.max(outage.at_ms, world.clock.now()))
    if (engine !== null) stopEngine(engine)
    engine = null
    driver.stop()
    await world.advanceTo(Math.min(Math.max(outage.at_ms + outage.duration_ms, world.clock.now()), timeline.until_ms))
    driver = await world.driver()
    cluster = new MissEvents(driver)
    engine = start()
    await world.settle()
  }
  await world.advanceTo(timeline.until_ms)
  const last = engine ?? start()
  last.sup.settleApiUsage()
  return {
    ledger: last.ledger,
    // A top-up the card declined is refused too, as in the simulated runner.
    rejected: withLateRefusals(rejected, declinedTopUps(last.sup.payments, topUps)),
    world,
    engine: last,
    finish: async () => {
      stopEngine(last)
      await world.close()
    }
  }
}
