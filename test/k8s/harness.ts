/**
 * The Kubernetes world for tests: the API test server, the scripted kubelet, and a virtual
 * clock that waits for the asynchronous HTTP between its timers.
 *
 * Why a clock of its own. The simulated world is synchronous: a pod event happens inside the
 * timer that causes it. Here a kubelet timer changes the server, and the driver hears of it
 * over HTTP, later. `SteppedClock` fires one timer at a time, in the same order as the
 * engine's VirtualClock (due time, lane, key, sequence), and between two timers waits until
 * the world is quiescent (`settle`): no request of the driver (or of a leader elector) in
 * flight, and every watch has seen the server's latest resourceVersion (the server sends a
 * BOOKMARK; the driver's resourceVersion catches up). So a pod event is handled at the
 * instant of the timer that caused it, before the next timer fires, as in the simulator.
 */
import { Clock as EffectClock, Duration, Effect, Scheduler } from "effect"
import { KubeConfig } from "@kubernetes/client-node"
import { before, followedInput, followUpKey, Lane, type EngineClock, type ScheduleOptions, type Timer, type TimerHandle } from "../../src/clock.js"
import { expect } from "vitest"
import type { ClusterEvent, WorkloadSpec } from "../../src/cluster.js"
import { KubernetesCluster, type DriverReport } from "../../src/k8s/cluster.js"
import { kubernetesConfig, type KubernetesClusterConfig, type KubernetesLimits } from "../../src/k8s/config.js"
import { KubeApiServer, writeKubeconfig } from "./apiServer.js"
import { ScriptedKubelet, type KubeletRegion } from "./kubelet.js"

/** Bound on timers one `advanceTo` fires: a runaway loop stops loudly. */
const STEPPED_FIRES_PER_ADVANCE_MAX = 1_000_000

/** A virtual clock whose `advanceTo` is asynchronous: it settles the world after each timer. */
export class SteppedClock implements EngineClock {
  private now_ms: number
  private seq = 0
  /** Few timers live at once in these tests: a sorted array is enough. */
  private readonly timers: SteppedTimer[] = []
  /**
   * The timer that fired last, while it fires and while the world settles what it caused (the
   * scripted kubelet schedules its pod moves from the HTTP it answers): an input's own
   * consequences at its instant follow it, as in VirtualClock (`followedInput`).
   */
  private cause: SteppedTimer | null = null
  readonly effectClock: EffectClock.Clock
  readonly effectScheduler: Scheduler.Scheduler = Scheduler.make((task) => task(), () => false)
  settle: () => Promise<void> = async () => {}

  constructor(start_ms: number) {
    this.now_ms = start_ms
    const self = this
    this.effectClock = {
      [EffectClock.ClockTypeId]: EffectClock.ClockTypeId,
      unsafeCurrentTimeMillis: () => self.now_ms,
      currentTimeMillis: Effect.sync(() => self.now_ms),
      unsafeCurrentTimeNanos: () => BigInt(self.now_ms) * 1_000_000n,
      currentTimeNanos: Effect.sync(() => BigInt(self.now_ms) * 1_000_000n),
      sleep: (duration: Duration.Duration) =>
        Effect.async<void>((resume) => {
          const handle = self.setTimeout(() => resume(Effect.void), Duration.toMillis(duration))
          return Effect.sync(() => self.clearTimeout(handle))
        })
    }
  }

  now(): number {
    return this.now_ms
  }

  setTimeout(fn: () => void, delay_ms: number): TimerHandle {
    if (delay_ms === Infinity) return { due_ms: Infinity, lane: 0, key: "", seq: -1, fn: null } as unknown as TimerHandle
    return this.schedule(this.now_ms + Math.max(0, Math.ceil(delay_ms || 0)), fn)
  }

  clearTimeout(handle: TimerHandle): void {
    const t = handle as unknown as Timer
    if (t !== undefined && t !== null) t.fn = null
  }

  schedule(at_ms: number, fn: () => void, options?: ScheduleOptions): TimerHandle {
    const due_ms = Math.max(Math.trunc(at_ms), this.now_ms)
    const lane: number = options?.lane ?? Lane.engine
    const key = options?.key ?? ""
    const follows = followedInput(this.cause, this.now_ms, due_ms, lane)
    const t: SteppedTimer =
      follows === null
        ? { due_ms, lane, key, input: lane === Lane.input ? key : null, seq: this.seq++, fn }
        : { due_ms, lane: Lane.input, key: followUpKey(follows, key), input: follows, seq: this.seq++, fn }
    let i = this.timers.length
    while (i > 0 && before(t, this.timers[i - 1]!)) i--
    this.timers.splice(i, 0, t)
    return t as unknown as TimerHandle
  }

  nextDueAt(): number | undefined {
    this.drop()
    return this.timers[0]?.due_ms
  }

  /** Fires every timer due by `target_ms`, one at a time, settling the world after each. */
  async advanceTo(target_ms: number): Promise<void> {
    if (target_ms < this.now_ms) throw new Error(`clock cannot go back from ${this.now_ms} to ${target_ms}`)
    let fired = 0
    for (;;) {
      await this.settle()
      this.cause = null
      this.drop()
      const top = this.timers[0]
      if (top === undefined || top.due_ms > target_ms) break
      this.timers.shift()
      this.now_ms = top.due_ms
      const fn = top.fn!
      top.fn = null
      if (++fired > STEPPED_FIRES_PER_ADVANCE_MAX) throw new Error(`more than ${STEPPED_FIRES_PER_ADVANCE_MAX} timers in one advance`)
      this.cause = top
      fn()
    }
    this.cause = null
    this.now_ms = target_ms
  }

  async advance(delta_ms: number): Promise<void> {
    await this.advanceTo(this.now_ms + delta_ms)
  }

  private drop(): void {
    while (this.timers.length > 0 && this.timers[0]!.fn === null) this.timers.shift()
  }
}

/** A timer of the stepped clock: placed as VirtualClock places its own (`followedInput`). */
interface SteppedTimer extends Timer {
  readonly input: string | null
}

/** Something whose HTTP the world waits for: a driver, a leader elector. */
export interface Participant {
  idle(): Promise<void>
  readonly requests_started: number
}

/** Bound on settle rounds: each round is one wave of requests caused by the last. */
const SETTLE_ROUNDS_MAX = 1_000
/** Wall-clock bound on one wait for a watch to catch up: a broken test fails, not hangs. */
const CATCH_UP_WALL_MS_MAX = 5_000

/** Resolves at the driver's next progress (an event, a bookmark, a connection) or its timeout. */
const nextProgress = (driver: KubernetesCluster): Promise<void> =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off()
      reject(new Error(`the driver's watch made no progress for ${CATCH_UP_WALL_MS_MAX} ms (state ${driver.watchState})`))
    }, CATCH_UP_WALL_MS_MAX)
    const off = driver.onProgress(() => {
      clearTimeout(timer)
      off()
      resolve()
    })
  })

/** Waits (on the driver's progress, a few wall seconds at most) until `predicate` holds. */
/** A GPU instance's workload as the supervisor asks for one: acme's `gi-1`, 2 H100s in us-east, unless `over` says otherwise. */
export const workloadSpec = (over: Partial<WorkloadSpec> = {}): WorkloadSpec => ({
  name: "eco-gi-1",
  resource: "gi-1",
  account: "acme",
  region: "us-east",
  gpu: "H100",
  gpu_count: 2,
  node_count: 1,
  image: null,
  volumes: [],
  service: null,
  ...over
})

/** A world with one driver subscribed, and the events it sends. */
export const startWithDriver = async (options: Parameters<typeof K8sWorld.start>[0] = {}): Promise<{ w: K8sWorld; d: KubernetesCluster; events: ClusterEvent[] }> => {
  const w = await K8sWorld.start(options)
  const d = await w.driver()
  const events: ClusterEvent[] = []
  d.subscribe((e) => events.push(e))
  return { w, d, events }
}

/** Runs a workload up to Ready: pull 60 s, start 30 s (the default region). */
export const runUntilReady = async (w: K8sWorld, d: KubernetesCluster, s: WorkloadSpec = workloadSpec()): Promise<void> => {
  d.createWorkload(s)
  await w.advance(90_000)
  expect(d.phaseOf(s.name)).toBe("running")
}

export const waitFor = async (driver: KubernetesCluster, predicate: () => boolean): Promise<void> => {
  for (let i = 0; i < SETTLE_ROUNDS_MAX && !predicate(); i++) await nextProgress(driver)
  if (!predicate()) throw new Error("condition never held")
}

/** The driver's pod watch is one the server holds unanswered (an injected `hang`): its every request arrived, and one is held. */
const watchHeld = (server: KubeApiServer, driver: KubernetesCluster): boolean =>
  driver.watchState === "watching" && !driver.watchConnected && server.watches.held > 0 && server.watches.requests >= driver.watches_opened

/** Waits until the driver's cache reflects the server's resourceVersion `rv` (or it is not watching). */
export const caughtUp = async (server: KubeApiServer, driver: KubernetesCluster, rv: number): Promise<void> => {
  for (let i = 0; i < SETTLE_ROUNDS_MAX; i++) {
    if (driver.watchState === "backoff" || driver.watchState === "stopped" || driver.watchState === "new") return
    // Its connect hangs at the server (an injected `hang`): nothing to catch up with until the
    // driver gives it up, on the clock.
    if (watchHeld(server, driver)) return
    // Its stream is frozen (a half-open connection): nothing comes until the driver cuts it.
    if (driver.watchConnected && server.frozenWatches > 0) return
    if (driver.watchConnected && Number(driver.observedResourceVersion()) >= rv) return
    const progress = nextProgress(driver)
    if (driver.watchConnected) server.bookmark()
    if (driver.watchConnected) await progress
    else {
      // The server holds a watch unanswered: the driver's may be it once its request arrives,
      // which is no progress of the driver's. Looked for on the wall clock meanwhile.
      let poll: NodeJS.Timeout | null = null
      const held = new Promise<void>((resolve) => {
        const look = (): void => {
          if (watchHeld(server, driver)) resolve()
          else poll = setTimeout(look, 2)
        }
        look()
      })
      try {
        await Promise.race([progress.catch(() => {}), held])
      } finally {
        if (poll !== null) clearTimeout(poll)
      }
    }
  }
  throw new Error("the driver's watch never caught up")
}

/** Waits until nothing moves: no request in flight anywhere, every watch caught up. */
export const settleWorld = async (server: KubeApiServer, drivers: () => ReadonlyArray<KubernetesCluster>, others: () => ReadonlyArray<Participant>): Promise<void> => {
  const requests = () => [...drivers(), ...others()].reduce((n, p) => n + p.requests_started, 0)
  for (let round = 0; round < SETTLE_ROUNDS_MAX; round++) {
    const rv = server.resourceVersion
    const started = requests()
    await Promise.all([...drivers(), ...others()].map((p) => p.idle()))
    for (const d of drivers()) await caughtUp(server, d, server.resourceVersion)
    await Promise.all([...drivers(), ...others()].map((p) => p.idle()))
    // One macrotask turn: callbacks queued behind the last answer run before we look again.
    await new Promise((resolve) => setImmediate(resolve))
    if (server.resourceVersion === rv && requests() === started) return
  }
  throw new Error(`the Kubernetes world did not settle in ${SETTLE_ROUNDS_MAX} rounds`)
}

export interface WorldOptions {
  readonly start_ms?: number
  readonly namespace?: string
  readonly regions?: ReadonlyArray<KubeletRegion>
  readonly limits?: Partial<KubernetesLimits>
  readonly config?: Partial<Omit<KubernetesClusterConfig, "limits">>
  readonly history_events_max?: number
}

export const START_MS = Date.parse("2026-03-01T00:00:00Z")

/** A timeline catalog for inference across two regions: H100 at $1.00/h, pods start at once. */
export const TWO_REGIONS_AT_ONE_DOLLAR = {
  gpus: { H100: { hourly_rate: "1.00" } },
  regions: {
    "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" },
    "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }
  }
}

export const DEFAULT_REGIONS: ReadonlyArray<KubeletRegion> = [
  { name: "us-east", nodes: 2, gpus_per_node: 8, image_pull_ms: 60_000, container_start_ms: 30_000, pod_stop_ms: 0 }
]

/**
 * Test limits: short backoffs, so a test's virtual seconds are few. The test server ends a
 * watch at `timeoutSeconds` on the wall clock, which a test's virtual days never reach: the
 * driver's bound on a stream past it (on the engine clock) is set beyond any test's span too
 * (23 days; a wall timer holds at most 24.8), so a watch is re-opened only when a test says.
 */
export const TEST_LIMITS: Partial<KubernetesLimits> = {
  pods_watch_backoff_ms_min: 1_000,
  pods_watch_backoff_ms_max: 8_000,
  request_backoff_ms_min: 1_000,
  request_backoff_ms_max: 4_000,
  pods_watch_timeout_s: 2_000_000
}

export class K8sWorld {
  readonly drivers: KubernetesCluster[] = []
  readonly participants: Participant[] = []
  readonly reports: DriverReport[] = []
  private constructor(
    readonly clock: SteppedClock,
    readonly server: KubeApiServer,
    readonly kubelet: ScriptedKubelet,
    readonly kubeconfig: string,
    readonly namespace: string,
    readonly regions: ReadonlyArray<KubeletRegion>,
    private readonly options: WorldOptions
  ) {
    clock.settle = () => this.settle()
  }

  static async start(options: WorldOptions = {}): Promise<K8sWorld> {
    const clock = new SteppedClock(options.start_ms ?? START_MS)
    const namespace = options.namespace ?? "ecolink"
    const regions = options.regions ?? DEFAULT_REGIONS
    const server = await KubeApiServer.start({ now: () => clock.now(), history_events_max: options.history_events_max })
    const kubelet = new ScriptedKubelet(server, clock, regions, { namespace })
    const kubeconfig = writeKubeconfig(server, { namespace })
    return new K8sWorld(clock, server, kubelet, kubeconfig, namespace, regions, options)
  }

  kubeConfig(token?: string): KubeConfig {
    const kc = new KubeConfig()
    kc.loadFromFile(token === undefined ? this.kubeconfig : writeKubeconfig(this.server, { namespace: this.namespace, token }))
    return kc
  }

  /** A driver on this world (started: its first list done, its watch opening). */
  async driver(): Promise<KubernetesCluster> {
    const config = kubernetesConfig({
      namespace: this.namespace,
      regions: this.regions.map((r) => ({ name: r.name, nodes: r.nodes, gpus_per_node: r.gpus_per_node })),
      ...(this.options.config ?? {}),
      limits: { ...TEST_LIMITS, ...(this.options.limits ?? {}) }
    })
    const d = new KubernetesCluster(this.kubeConfig(), this.clock, config, (r) => this.reports.push(r))
    this.drivers.push(d)
    await d.start()
    await this.settle()
    return d
  }

  settle(): Promise<void> {
    return settleWorld(this.server, () => this.drivers.filter((d) => d.watchState !== "stopped"), () => this.participants)
  }

  advance(delta_ms: number): Promise<void> {
    return this.clock.advance(delta_ms)
  }

  advanceTo(at_ms: number): Promise<void> {
    return this.clock.advanceTo(at_ms)
  }

  /**
   * A control-plane outage: `stop` takes the engine and its driver down now; `during` happens
   * at its offsets (ms since START_MS); at `until_ms` `restart` brings them back and the world
   * settles.
   */
  async outage(until_ms: number, during: ReadonlyArray<readonly [number, () => void]>, stop: () => void, restart: () => Promise<void>): Promise<void> {
    stop()
    for (const [at_ms, act] of during) {
      await this.advanceTo(START_MS + at_ms)
      act()
    }
    await this.advanceTo(START_MS + until_ms)
    await restart()
    await this.settle()
  }

  pods(): ReturnType<KubeApiServer["objects"]> {
    return this.server.objects("pods", this.namespace)
  }

  async close(): Promise<void> {
    for (const d of this.drivers) d.stop()
    this.kubelet.stop()
    await this.server.close()
  }
}
