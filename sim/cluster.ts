/**
 * The simulated world's cluster: regions of nodes with GPUs, capacity-aware placement (a
 * workload waits pending while no set of nodes has room), image-pull and container-start
 * durations, preemption and resumption, pod failure and region outages, all on the virtual
 * clock and, where random, from the seeded PRNG.
 *
 * Its events are delivered on the clock's `world` lane. While nobody is subscribed (the
 * supervisor is down) events are lost, as a controller's watch would lose them; the
 * supervisor's reconciliation heals that on start.
 */
import { Lane, type EngineClock, type TimerHandle } from "../src/clock.js"
import type { ClusterEvent, ClusterPort, PlacedWorkload, VolumeSpec, WorkloadPhase, WorkloadSpec, WorkloadStatus } from "../src/cluster.js"
import { Prng } from "./prng.js"

export interface SimRegion {
  readonly name: string
  readonly nodes: number
  readonly gpus_per_node: number
  readonly image_pull_ms: number
  /** Extra pull time, uniform in [0, jitter], drawn per pod from the PRNG. */
  readonly image_pull_jitter_ms: number
  readonly container_start_ms: number
  readonly pod_stop_ms: number
  /** Probability that a pod fails while its image is pulled. */
  readonly pull_failure_probability: number
  /** Random preemptions of running pods: mean time between them, or 0 for none. */
  readonly preemption_mean_interval_ms: number
  /** How long a random preemption holds the GPUs before the pod resumes. */
  readonly preemption_duration_ms: number
}

/** Phases in which a workload holds its GPUs (and is billed). */
const HELD: ReadonlySet<WorkloadPhase> = new Set(["loading", "running"])

interface Workload {
  readonly spec: WorkloadSpec
  phase: WorkloadPhase
  /** Node indexes holding this workload's GPUs, or null while unplaced. */
  nodes: number[] | null
  started_at: number | null
  /** Every instant it left `loading`/`running` (stopped holding its GPUs), in order. */
  readonly stops: number[]
  timer: TimerHandle | null
  deleting: boolean
  /** A restored pending one's: when its pull began (the engine asked for it), so it is not started over. */
  pull_from: number | null
}

interface RegionState {
  readonly spec: SimRegion
  readonly free: number[]
  down: boolean
  /** Unplaced workloads in arrival order. */
  readonly queue: string[]
}

export type WorldOutcome = { readonly ok: true } | { readonly ok: false; readonly status: number; readonly error: string; readonly message: string }

const ok: WorldOutcome = { ok: true }
const refuse = (error: string, message: string): WorldOutcome => ({ ok: false, status: 409, error, message })

/** Bound on the steps of `packRegion`'s search: past it, the restore places what is left by most free GPUs. */
const PACK_STEPS_MAX = 1_000_000

/**
 * A packing of `workloads` (largest first) on nodes with `free` GPUs each: for each, `node_count`
 * distinct nodes with `gpu_count` free, none going below zero; found by depth-first search, the
 * lowest-numbered nodes first. Empty if none was found within PACK_STEPS_MAX steps.
 */
export const packRegion = (free: ReadonlyArray<number>, workloads: ReadonlyArray<WorkloadSpec>): Map<string, number[]> => {
  const left = [...free]
  const chosen: number[][] = []
  let steps = 0
  const place = (i: number): boolean => {
    if (i === workloads.length) return true
    const w = workloads[i]!
    const nodes: number[] = []
    const pick = (from: number): boolean => {
      if (++steps > PACK_STEPS_MAX) return false
      if (nodes.length === w.node_count) {
        for (const n of nodes) left[n]! -= w.gpu_count
        chosen[i] = [...nodes]
        if (place(i + 1)) return true
        for (const n of nodes) left[n]! += w.gpu_count
        return false
      }
      for (let n = from; n <= left.length - (w.node_count - nodes.length); n++) {
        if (left[n]! < w.gpu_count) continue
        nodes.push(n)
        if (pick(n + 1)) return true
        nodes.pop()
        if (steps > PACK_STEPS_MAX) return false
      }
      return false
    }
    return pick(0)
  }
  const packed = new Map<string, number[]>()
  if (place(0)) workloads.forEach((w, i) => packed.set(w.name, chosen[i]!))
  return packed
}

export class SimCluster implements ClusterPort {
  private readonly regions = new Map<string, RegionState>()
  private readonly workloads = new Map<string, Workload>()
  private readonly byResource = new Map<string, string>()
  /** Resources whose next N events the watcher will miss. */
  private readonly missing = new Map<string, number>()
  private handler: ((event: ClusterEvent) => void) | null = null
  private readonly prng: Prng
  /** Workloads created, deleted or whose phase changed since the last `drainChanges`: name → resource. */
  private readonly changes = new Map<string, string>()

  constructor(
    private readonly clock: EngineClock,
    regions: ReadonlyArray<SimRegion>,
    seed: number
  ) {
    this.prng = new Prng(seed)
    for (const spec of [...regions].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      this.regions.set(spec.name, { spec, free: Array.from({ length: spec.nodes }, () => spec.gpus_per_node), down: false, queue: [] })
    }
  }

  // ── ClusterPort ───────────────────────────────────────────────────────────────────────
  region(name: string) {
    const r = this.regions.get(name)
    return r === undefined ? undefined : { nodes: r.spec.nodes, gpus_per_node: r.spec.gpus_per_node }
  }

  regionNames(): ReadonlyArray<string> {
    return [...this.regions.keys()]
  }

  createWorkload(spec: WorkloadSpec): void {
    if (this.workloads.has(spec.name)) return // the name is taken: "already exists", not a second pod
    const region = this.regions.get(spec.region)
    if (region === undefined) throw new Error(`workload ${spec.name} in unknown region ${spec.region}`)
    this.add({ spec, phase: "pending", nodes: null, started_at: null, stops: [], timer: null, deleting: false, pull_from: null })
    region.queue.push(spec.name)
    this.placeQueued(region)
  }

  /** A workload the cluster takes in, in its phase: known by name and resource, its phase logged. */
  private add(w: Workload): void {
    this.workloads.set(w.spec.name, w)
    this.byResource.set(w.spec.resource, w.spec.name)
    this.record(w.spec.resource, w.phase)
    this.changes.set(w.spec.name, w.spec.resource)
  }

  deleteWorkload(name: string): void {
    const w = this.workloads.get(name)
    if (w === undefined || w.deleting) return
    w.deleting = true
    this.cancel(w)
    const region = this.regions.get(w.spec.region)!
    const queued = region.queue.indexOf(name)
    if (queued >= 0) region.queue.splice(queued, 1)
    w.timer = this.at(region.spec.pod_stop_ms, name, () => {
      w.timer = null
      this.release(w)
      this.workloads.delete(name)
      this.byResource.delete(w.spec.resource)
      this.record(w.spec.resource, "deleted")
      this.changes.set(name, w.spec.resource)
      this.emit({ type: "pod.deleted", resource: w.spec.resource, at: this.clock.now() })
      this.placeQueued(region)
    })
  }

  get(name: string): WorkloadStatus | undefined {
    const w = this.workloads.get(name)
    return w === undefined ? undefined : { name, resource: w.spec.resource, phase: w.phase, started_at: w.started_at }
  }

  /** The simulated world keeps no volumes: storage lives in the engine's machines alone. */
  ensureVolume(_volume: VolumeSpec): void {}

  deleteVolume(_id: string): void {}

  forEachVolume(_visit: (id: string) => void): void {}

  firstStopAt(name: string, from: number): number | null {
    for (const stop of this.workloads.get(name)?.stops ?? []) if (stop >= from) return stop
    return null
  }

  phaseOf(name: string): WorkloadPhase | undefined {
    return this.workloads.get(name)?.phase
  }

  forEachWorkload(visit: (name: string, resource: string) => void): void {
    for (const [name, w] of this.workloads) visit(name, w.spec.resource)
  }

  list(): ReadonlyArray<WorkloadStatus> {
    return [...this.workloads.keys()].sort().map((name) => this.get(name)!)
  }

  subscribe(handler: (event: ClusterEvent) => void): () => void {
    if (this.handler !== null) throw new Error("SimCluster has one subscriber at a time")
    this.handler = handler
    return () => {
      if (this.handler === handler) this.handler = null
    }
  }

  // ── a new process's cluster (npm start restarted on the same database) ──────────────
  /**
   * Takes up the workloads the last process's cluster ran, from the engine's record of them
   * (`RestoreWorkloads`, given at start before the reconciliation): each in the phase the engine
   * last saw, holding its GPUs as before. This cluster lives in the control plane's memory, but
   * it stands for one that does not: it kept running while the control plane was down. So a
   * `running` pod runs on; a `loading` one runs from when its container start was due (at once,
   * if that is past); a `pending` one goes back in its region's queue, in the order it was asked
   * for, its pull counted from then (`pull_from`); a `preempted` one keeps its GPUs until the
   * world resumes it (with random
   * preemptions on, `preemption_duration_ms` from now: when the preemption began is not in the
   * record). The record does not say which nodes held a workload: they are chosen again by a
   * search for a packing of each region's workloads on its nodes (`packRegion`): one exists,
   * since they ran together. (Before, they were placed largest first by first fit, which can miss
   * a tight packing first fit made in arrival order: a node went below zero and another showed a
   * GPU free that was taken, and a new pod ran on it, over the region's capacity.) Only if the
   * search gives up (`PACK_STEPS_MAX`) is a workload placed on the nodes with the most free
   * GPUs, below zero. Only an empty cluster restores; events go to the subscriber from then on,
   * as before.
   */
  restore(placed: ReadonlyArray<PlacedWorkload>): void {
    if (this.workloads.size > 0 || this.history.size > 0) throw new Error("SimCluster.restore: only a cluster that has run nothing takes up another's workloads")
    // A pod still pending (pulling, or waiting for room) goes back in its region's queue, in the
    // order it was asked for, once the started ones hold their GPUs again; its pull counts from
    // when it was asked for. (Found by review: created again from scratch, a pod stopped while
    // pulling could be failed by the watchdog's stuck-pending rule, which counts from creation.)
    const pending = placed.filter((p) => p.phase === "pending").sort((a, b) => (a.created_at ?? 0) - (b.created_at ?? 0) || (a.spec.name < b.spec.name ? -1 : 1))
    const largestFirst = placed.filter((p) => p.phase !== "pending").sort((a, b) => b.spec.gpu_count - a.spec.gpu_count || b.spec.node_count - a.spec.node_count || (a.spec.name < b.spec.name ? -1 : 1))
    // Where each goes: a packing of each region's workloads on its nodes, searched for whole.
    const packed = new Map<string, number[]>()
    for (const [name, region] of [...this.regions].sort(([a], [b]) => (a < b ? -1 : 1))) {
      for (const [workload, nodes] of packRegion(region.free, largestFirst.filter((p) => p.spec.region === name).map((p) => p.spec))) packed.set(workload, nodes)
    }
    for (const { spec, phase, loading_at } of largestFirst) {
      const region = this.regions.get(spec.region)
      // A region this cluster no longer has: its workloads are lost, as the reconciliation finds.
      if (region === undefined) continue
      if (this.workloads.has(spec.name)) throw new Error(`SimCluster.restore: workload ${spec.name} given twice`)
      const nodes = packed.get(spec.name) ?? this.fit(region, spec) ?? this.roomiest(region, spec.node_count)
      for (const n of nodes) region.free[n]! -= spec.gpu_count
      const w: Workload = { spec, phase, nodes, started_at: loading_at, stops: [], timer: null, deleting: false, pull_from: null }
      this.add(w)
      if (phase === "loading") this.containerStarts(w, (loading_at ?? this.clock.now()) + region.spec.container_start_ms)
      else if (phase === "running") this.armRandomPreemption(w)
      else if (region.spec.preemption_mean_interval_ms > 0) this.resumesAfter(w, region.spec.preemption_duration_ms)
    }
    for (const { spec, created_at } of pending) {
      const region = this.regions.get(spec.region)
      if (region === undefined) continue
      if (this.workloads.has(spec.name)) throw new Error(`SimCluster.restore: workload ${spec.name} given twice`)
      this.add({ spec, phase: "pending", nodes: null, started_at: null, stops: [], timer: null, deleting: false, pull_from: created_at ?? null })
      region.queue.push(spec.name)
    }
    for (const [, region] of [...this.regions].sort(([a], [b]) => (a < b ? -1 : 1))) this.placeQueued(region)
  }

  // ── the world's own events (timeline: preempt, resume, pod_fail, region_down/up) ────
  preempt(resource: string): WorldOutcome {
    const w = this.workloadOf(resource)
    if (w === undefined || w.deleting) return refuse("no_pod", `no pod runs for ${resource}`)
    if (w.phase !== "running" && w.phase !== "loading") return refuse("not_running", `the pod of ${resource} is ${w.phase}, not running`)
    this.cancel(w)
    // A higher-priority workload takes the GPUs: they stay occupied until it leaves.
    this.setPhase(w, "preempted")
    this.emit({ type: "pod.preempted", resource, at: this.clock.now() })
    return ok
  }

  resume(resource: string): WorldOutcome {
    const w = this.workloadOf(resource)
    if (w === undefined || w.deleting || w.phase !== "preempted") return refuse("not_preempted", `the pod of ${resource} is not preempted`)
    const region = this.regions.get(w.spec.region)!
    this.cancel(w)
    // The image is on the node already: only the container starts again.
    this.containerStarts(w, this.clock.now() + region.spec.container_start_ms)
    return ok
  }

  failPod(resource: string): WorldOutcome {
    const w = this.workloadOf(resource)
    if (w === undefined || w.deleting) return refuse("no_pod", `no pod runs for ${resource}`)
    if (w.phase === "failed") return refuse("already_failed", `the pod of ${resource} already failed`)
    this.fail(w)
    return ok
  }

  regionDown(name: string): WorldOutcome {
    const region = this.regions.get(name)
    if (region === undefined) return { ok: false, status: 404, error: "unknown_region", message: `no region ${name}` }
    if (region.down) return refuse("already_down", `region ${name} is already down`)
    region.down = true
    for (const name of [...this.workloads.keys()].sort()) {
      const w = this.workloads.get(name)!
      if (w.spec.region === region.spec.name && !w.deleting && w.phase !== "failed") this.fail(w)
    }
    return ok
  }

  regionUp(name: string): WorldOutcome {
    const region = this.regions.get(name)
    if (region === undefined) return { ok: false, status: 404, error: "unknown_region", message: `no region ${name}` }
    if (!region.down) return refuse("not_down", `region ${name} is not down`)
    region.down = false
    this.placeQueued(region)
    return ok
  }

  /** The watcher will miss the next `count` events of this resource (to exercise the heal). */
  drainChanges(visit: (name: string, resource: string) => void): void {
    for (const [name, resource] of this.changes) visit(name, resource)
    this.changes.clear()
  }

  missEvents(resource: string, count: number): WorldOutcome {
    this.missing.set(resource, (this.missing.get(resource) ?? 0) + count)
    return ok
  }

  // ── internals ─────────────────────────────────────────────────────────────────────────
  private workloadOf(resource: string): Workload | undefined {
    const name = this.byResource.get(resource)
    return name === undefined ? undefined : this.workloads.get(name)
  }

  private at(delay_ms: number, key: string, fn: () => void): TimerHandle {
    return this.clock.schedule(this.clock.now() + delay_ms, fn, { lane: Lane.world, key })
  }

  private cancel(w: Workload): void {
    if (w.timer !== null) this.clock.clearTimeout(w.timer)
    w.timer = null
  }

  private emit(event: ClusterEvent): void {
    const missed = this.missing.get(event.resource) ?? 0
    if (missed > 0) {
      this.missing.set(event.resource, missed - 1)
      return
    }
    this.handler?.(event)
  }

  /** A workload's new phase, when it began, and the change for `drainChanges`. */
  private setPhase(w: Workload, phase: WorkloadPhase): void {
    if (HELD.has(w.phase) && !HELD.has(phase)) w.stops.push(this.clock.now())
    w.phase = phase
    this.record(w.spec.resource, phase)
    this.changes.set(w.spec.name, w.spec.resource)
  }

  /** The world's own log of each resource's pod: every phase it entered, and when. */
  private readonly history = new Map<string, Array<{ readonly at: number; readonly phase: WorkloadPhase | "deleted" }>>()

  private record(resource: string, phase: WorkloadPhase | "deleted"): void {
    let log = this.history.get(resource)
    if (log === undefined) this.history.set(resource, (log = []))
    log.push({ at: this.clock.now(), phase })
  }

  /**
   * What the world did, for the invariant checker (RunFacts.world_phases): by resource (a GPU
   * resource's id, an inference replica's `id@region`), its pods' phases in order. The engine's
   * own transitions say what it billed; this says what it could bill.
   */
  phaseHistory(): ReadonlyMap<string, ReadonlyArray<{ readonly at: number; readonly phase: WorkloadPhase | "deleted" }>> {
    return this.history
  }

  private fail(w: Workload): void {
    this.cancel(w)
    this.setPhase(w, "failed")
    this.release(w)
    const region = this.regions.get(w.spec.region)!
    const queued = region.queue.indexOf(w.spec.name)
    if (queued >= 0) region.queue.splice(queued, 1)
    this.emit({ type: "pod.failed", resource: w.spec.resource, at: this.clock.now() })
    this.placeQueued(region)
  }

  private release(w: Workload): void {
    if (w.nodes === null) return
    const region = this.regions.get(w.spec.region)!
    for (const n of w.nodes) region.free[n]! += w.spec.gpu_count
    w.nodes = null
  }

  /** Places every queued workload that fits now, in arrival order (no head-of-line blocking). */
  private placeQueued(region: RegionState): void {
    if (region.down) return
    for (let i = 0; i < region.queue.length; ) {
      const w = this.workloads.get(region.queue[i]!)!
      const nodes = this.fit(region, w.spec)
      if (nodes === null) {
        i++
        continue
      }
      region.queue.splice(i, 1)
      for (const n of nodes) region.free[n]! -= w.spec.gpu_count
      w.nodes = nodes
      this.startPull(region, w)
    }
  }

  /** First fit: the lowest-numbered `node_count` nodes that each have `gpu_count` free GPUs. */
  private fit(region: RegionState, spec: WorkloadSpec): number[] | null {
    const chosen: number[] = []
    for (let n = 0; n < region.free.length && chosen.length < spec.node_count; n++) {
      if (region.free[n]! >= spec.gpu_count) chosen.push(n)
    }
    return chosen.length === spec.node_count ? chosen : null
  }

  private startPull(region: RegionState, w: Workload): void {
    const s = region.spec
    const pull_ms = s.image_pull_ms + (s.image_pull_jitter_ms > 0 ? this.prng.int(0, s.image_pull_jitter_ms) : 0)
    const pullFails = this.prng.chance(s.pull_failure_probability)
    // A restored pending pod's pull began before the restart (`pull_from`): it ends when it would have.
    const pulled_at = Math.max(this.clock.now(), (w.pull_from ?? this.clock.now()) + pull_ms)
    w.pull_from = null
    w.timer = this.clock.schedule(
      pulled_at,
      () => {
        w.timer = null
        if (pullFails) return this.fail(w)
        this.setPhase(w, "loading")
        w.started_at = this.clock.now()
        this.emit({ type: "pod.loading", resource: w.spec.resource, at: this.clock.now() })
        this.containerStarts(w, this.clock.now() + s.container_start_ms)
      },
      { lane: Lane.world, key: w.spec.name }
    )
  }

  /** The workload's container has started at `at_ms`: it runs from then. */
  private containerStarts(w: Workload, at_ms: number): void {
    const runs = (): void => {
      w.timer = null
      this.setPhase(w, "running")
      this.emit({ type: "pod.running", resource: w.spec.resource, at: this.clock.now(), started_at: w.started_at })
      this.armRandomPreemption(w)
    }
    w.timer = this.clock.schedule(at_ms, runs, { lane: Lane.world, key: w.spec.name })
  }

  private armRandomPreemption(w: Workload): void {
    const s = this.regions.get(w.spec.region)!.spec
    if (s.preemption_mean_interval_ms <= 0) return
    // Uniform in [0, 2 × mean]: the mean the catalog asks for, from integer draws only.
    const after_ms = this.prng.int(0, 2 * s.preemption_mean_interval_ms)
    w.timer = this.at(after_ms, w.spec.name, () => {
      w.timer = null
      if (this.preempt(w.spec.resource).ok) this.resumesAfter(w, s.preemption_duration_ms)
    })
  }

  /** A random preemption ends: the workload resumes `duration_ms` from now. */
  private resumesAfter(w: Workload, duration_ms: number): void {
    w.timer = this.at(duration_ms, w.spec.name, () => {
      w.timer = null
      this.resume(w.spec.resource)
    })
  }

  /** The `count` nodes with the most free GPUs (the lowest-numbered among equals), in node order. */
  private roomiest(region: RegionState, count: number): number[] {
    const nodes = region.free.map((_, n) => n).sort((a, b) => region.free[b]! - region.free[a]! || a - b).slice(0, count)
    if (nodes.length < count) throw new Error(`a workload of ${count} nodes in a region of ${region.free.length}`)
    return nodes.sort((a, b) => a - b)
  }
}
