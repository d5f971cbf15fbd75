/**
 * Leader election on a coordination.k8s.io/v1 Lease (issue 5: several control-plane
 * replicas, one supervisor). The algorithm is client-go's `leaderelection`, on the engine
 * clock:
 *
 * - Every `retry_period_ms` a candidate reads the Lease. Absent: it creates it, holding it.
 *   Held by another whose record has not changed for `leaseDurationSeconds` (measured on
 *   our clock from when *we* saw it change, never from the timestamps in it, so clock skew
 *   between replicas does not matter): expired, and the candidate takes it over with a
 *   replace that carries the resourceVersion it read, so of two candidates racing only one
 *   wins (the other gets 409 Conflict). Held by us: renewed the same way.
 * - A leader that has not renewed for `renew_deadline_ms` stops leading
 *   (`onStoppedLeading`), by a timer of its own, whatever its requests are doing. Because
 *   `renew_deadline_ms < lease_duration_ms`, it has stopped before any standby can take over:
 *   two supervisors never run at once (the margin is the difference, minus one request's
 *   latency).
 * - Every request is bounded by `request_timeout_ms` on the clock: then its HTTP request is
 *   cancelled (its connection closed), so a late answer never comes.
 * - `stop()` releases the lease (holder emptied), so a standby takes over at its next try
 *   instead of waiting out the lease.
 * - A leader whose writes were fenced (`LeaderCallbacks.fenced`: another replica claimed a
 *   newer term on the database, which happens when two replicas share one identity) steps
 *   down and competes again, taking a lease that names itself only once it is released or
 *   expired; it leads again with a fresh term. Before, it renewed a lease it could not serve
 *   under, and answered 503 for ever.
 *
 * The callbacks are where the wiring starts and stops the supervisor: on
 * `onStartedLeading` rehydrate from SQLite and reconcile (the supervisor's `start`); on
 * `onStoppedLeading` drop it at once (`stop`, which writes nothing).
 */
import { CoordinationV1Api, KubeConfig, V1MicroTime, type ConfigurationOptions, type V1Lease } from "@kubernetes/client-node"
import { Lane, type EngineClock, type TimerHandle } from "../clock.js"
import { abortable } from "./abortable.js"

export interface LeaderElectionConfig {
  readonly namespace: string
  readonly lease_name: string
  /** This replica's identity in the lease (pod name, host name): unique per replica. */
  readonly identity: string
  /** How long a lease not renewed stays another's (the lease's `leaseDurationSeconds`). */
  readonly lease_duration_ms: number
  /** A leader that could not renew for this long stops leading. */
  readonly renew_deadline_ms: number
  /** How often a candidate tries, and a leader renews. */
  readonly retry_period_ms: number
  /** Bound on one request to the API server. */
  readonly request_timeout_ms: number
}

/** client-go's defaults (15 s, 10 s, 2 s). */
export const DEFAULT_LEADER_ELECTION: Omit<LeaderElectionConfig, "namespace" | "identity"> = {
  lease_name: "ecolink-engine",
  lease_duration_ms: 15_000,
  renew_deadline_ms: 10_000,
  retry_period_ms: 2_000,
  request_timeout_ms: 2_000
}

export interface LeaderCallbacks {
  onStartedLeading(): void
  onStoppedLeading(): void
  /**
   * Asked before each renewal while leading: true when this replica's writes were fenced by a
   * newer leader term (another replica claimed the database while this one held the lease).
   * It then steps down (`lost`, reason `fenced`) and stays a candidate that takes a lease
   * naming its own identity for another's until it is released or expires: see `yielded`.
   */
  fenced?(): boolean
  /** Whoever holds the lease now, when that changes as we see it ("" when released). */
  onNewLeader?(identity: string): void
}

export type LeaderReport =
  | { readonly kind: "acquired"; readonly at: number; readonly transitions: number }
  | { readonly kind: "lost"; readonly at: number; readonly reason: LostReason }
  | { readonly kind: "request_failed"; readonly at: number; readonly status: number | null }

export type LostReason = "renew_deadline" | "taken" | "stopped" | "fenced"

const statusOf = (e: unknown): number | null => {
  const o = e as { code?: unknown } | null
  return typeof o?.code === "number" ? o.code : null
}

class Timeout extends Error {}

export class LeaderElector {
  private readonly api: CoordinationV1Api
  private leading_ = false
  private running = false
  private busy = false
  private tickTimer: TimerHandle | null = null
  private deadlineTimer: TimerHandle | null = null
  /** The lease as last read, and when (our clock) it last changed. */
  private observedRv: string | null = null
  private observedAt = 0
  private observedHolder: string | null = null
  private lastRenewAt = 0
  /**
   * Set when this replica stepped down because it was fenced (`LeaderCallbacks.fenced`),
   * cleared when it next acquires. Meanwhile a lease held under its own identity is not its
   * own: another replica was started with the same identity (a misconfiguration) and holds
   * it. Taking it back at once, as client-go does with a lease naming itself (a restart),
   * would fence that one in turn, and the two would take turns every retry period.
   */
  private yielded = false
  private readonly idleWaiters: Array<() => void> = []
  requests_started = 0

  constructor(
    kubeconfig: KubeConfig,
    private readonly clock: EngineClock,
    private readonly config: LeaderElectionConfig,
    private readonly callbacks: LeaderCallbacks,
    private readonly report: (r: LeaderReport) => void = () => {}
  ) {
    if (!(config.retry_period_ms > 0 && config.retry_period_ms < config.renew_deadline_ms && config.renew_deadline_ms < config.lease_duration_ms)) {
      throw new Error("leader election needs 0 < retry_period_ms < renew_deadline_ms < lease_duration_ms")
    }
    if (config.lease_duration_ms % 1000 !== 0) throw new Error("lease_duration_ms must be whole seconds (the lease counts seconds)")
    this.api = kubeconfig.makeApiClient(CoordinationV1Api)
  }

  get leading(): boolean {
    return this.leading_
  }

  /** Starts trying at once, then every `retry_period_ms`. */
  start(): void {
    if (this.running) return
    this.running = true
    this.schedule(this.clock.now())
  }

  /**
   * Stops trying. A leader releases the lease (unless `release: false`) and stops leading.
   * Resolves once the release was answered (or timed out).
   */
  async stop(options: { readonly release?: boolean } = {}): Promise<void> {
    if (!this.running) return
    this.running = false
    if (this.tickTimer !== null) this.clock.clearTimeout(this.tickTimer)
    this.tickTimer = null
    if (!this.leading_) return
    this.lose("stopped")
    if (options.release === false) return
    await this.idle()
    this.busy = true
    try {
      const lease = await this.bounded((options) => this.api.readNamespacedLease({ name: this.config.lease_name, namespace: this.config.namespace }, options))
      if (lease.spec?.holderIdentity !== this.config.identity) return
      const spec = { ...lease.spec, holderIdentity: "", leaseDurationSeconds: 1, renewTime: new V1MicroTime(this.clock.now()) }
      await this.bounded((options) => this.api.replaceNamespacedLease({ name: this.config.lease_name, namespace: this.config.namespace, body: { ...lease, spec } }, options))
    } catch (e) {
      this.report({ kind: "request_failed", at: this.clock.now(), status: statusOf(e) })
    } finally {
      this.settled()
    }
  }

  /** A crash: stops at once, without releasing the lease or calling back (tests, drills). */
  halt(): void {
    this.running = false
    this.leading_ = false
    if (this.tickTimer !== null) this.clock.clearTimeout(this.tickTimer)
    if (this.deadlineTimer !== null) this.clock.clearTimeout(this.deadlineTimer)
    this.tickTimer = null
    this.deadlineTimer = null
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (!this.busy) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  private schedule(at_ms: number): void {
    if (!this.running) return
    this.tickTimer = this.clock.schedule(
      at_ms,
      () => {
        this.tickTimer = null
        void this.tick()
      },
      { lane: Lane.engine, key: `lease:${this.config.identity}` }
    )
  }

  private async tick(): Promise<void> {
    if (!this.running || this.busy) return
    // Outside the request's try: a defect in the callback is no failed request, it stops the
    // process. Renewing would keep a lease this replica cannot serve under: it would answer
    // 503 for ever (the lease still its own), and nobody else could take over.
    if (this.leading_ && this.callbacks.fenced?.() === true) {
      this.yielded = true
      this.lose("fenced")
    }
    this.busy = true
    const began = this.clock.now()
    try {
      await this.tryAcquireOrRenew()
    } catch (e) {
      this.report({ kind: "request_failed", at: this.clock.now(), status: e instanceof Timeout ? null : statusOf(e) })
    } finally {
      this.settled()
      this.schedule(Math.max(began + this.config.retry_period_ms, this.clock.now()))
    }
  }

  private async tryAcquireOrRenew(): Promise<void> {
    const { namespace, lease_name: name, identity } = this.config
    let lease: V1Lease | null
    try {
      lease = await this.bounded((options) => this.api.readNamespacedLease({ name, namespace }, options))
    } catch (e) {
      if (statusOf(e) !== 404) throw e
      lease = null
    }
    if (!this.running) return
    const now = this.clock.now()
    if (lease === null) {
      try {
        await this.bounded((options) => this.api.createNamespacedLease({ namespace, body: { apiVersion: "coordination.k8s.io/v1", kind: "Lease", metadata: { name, namespace }, spec: this.record(now, now, 0) } }, options))
      } catch (e) {
        if (statusOf(e) === 409) return // another candidate created it first
        throw e
      }
      return this.renewed(now, 0)
    }
    const holder = lease.spec?.holderIdentity ?? ""
    if (lease.metadata?.resourceVersion !== this.observedRv) {
      this.observedRv = lease.metadata?.resourceVersion ?? null
      this.observedAt = now
    }
    if (holder !== this.observedHolder) {
      this.observedHolder = holder
      this.callbacks.onNewLeader?.(holder)
    }
    const duration_ms = (lease.spec?.leaseDurationSeconds ?? this.config.lease_duration_ms / 1000) * 1000
    const own = holder === identity && !this.yielded
    const heldByOther = holder !== "" && !own
    if (heldByOther && now < this.observedAt + duration_ms) {
      if (this.leading_) this.lose("taken")
      return
    }
    const transitions = (lease.spec?.leaseTransitions ?? 0) + (own ? 0 : 1)
    const acquired = own && lease.spec?.acquireTime != null ? new V1MicroTime(lease.spec.acquireTime) : new V1MicroTime(now)
    try {
      await this.bounded(
        (options) =>
          this.api.replaceNamespacedLease(
            { name, namespace, body: { ...lease, metadata: { ...lease.metadata, resourceVersion: lease.metadata?.resourceVersion }, spec: { ...this.record(acquired.getTime(), now, transitions) } } },
            options
          )
      )
    } catch (e) {
      if (statusOf(e) === 409) return // someone wrote it since we read it: try again next period
      throw e
    }
    this.renewed(now, transitions)
  }

  private record(acquire_ms: number, renew_ms: number, transitions: number): V1Lease["spec"] {
    return {
      holderIdentity: this.config.identity,
      leaseDurationSeconds: this.config.lease_duration_ms / 1000,
      acquireTime: new V1MicroTime(acquire_ms),
      renewTime: new V1MicroTime(renew_ms),
      leaseTransitions: transitions
    }
  }

  private renewed(at: number, transitions: number): void {
    this.lastRenewAt = at
    this.yielded = false
    if (this.deadlineTimer !== null) this.clock.clearTimeout(this.deadlineTimer)
    this.deadlineTimer = this.clock.schedule(at + this.config.renew_deadline_ms, () => this.onRenewDeadline(), { lane: Lane.engine, key: `lease-deadline:${this.config.identity}` })
    if (this.observedHolder !== this.config.identity) {
      this.observedHolder = this.config.identity
      this.callbacks.onNewLeader?.(this.config.identity)
    }
    if (this.leading_) return
    this.leading_ = true
    this.report({ kind: "acquired", at, transitions })
    this.callbacks.onStartedLeading()
  }

  private onRenewDeadline(): void {
    this.deadlineTimer = null
    if (this.leading_ && this.clock.now() - this.lastRenewAt >= this.config.renew_deadline_ms) this.lose("renew_deadline")
  }

  private lose(reason: LostReason): void {
    if (!this.leading_) return
    this.leading_ = false
    if (this.deadlineTimer !== null) this.clock.clearTimeout(this.deadlineTimer)
    this.deadlineTimer = null
    this.report({ kind: "lost", at: this.clock.now(), reason })
    this.callbacks.onStoppedLeading()
  }

  /**
   * The request, or a Timeout after `request_timeout_ms` on the engine clock. Then its HTTP
   * request is cancelled: abandoned, its connection would stay open while a hung API server
   * collects one more every retry period.
   */
  private bounded<T>(call: (options: ConfigurationOptions) => Promise<T>): Promise<T> {
    this.requests_started++
    const controller = new AbortController()
    return new Promise<T>((resolve, reject) => {
      const timer = this.clock.schedule(
        this.clock.now() + this.config.request_timeout_ms,
        () => {
          controller.abort()
          reject(new Timeout("lease request timed out"))
        },
        { lane: Lane.engine, key: `lease-timeout:${this.config.identity}` }
      )
      call(abortable(controller.signal)).then(
        (v) => {
          this.clock.clearTimeout(timer)
          resolve(v)
        },
        (e: unknown) => {
          this.clock.clearTimeout(timer)
          reject(e)
        }
      )
    })
  }

  private settled(): void {
    this.busy = false
    for (const resolve of this.idleWaiters.splice(0)) resolve()
  }
}
