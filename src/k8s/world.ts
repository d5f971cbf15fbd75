/**
 * What `scripts/start.ts` needs to select the Kubernetes world (`--kubeconfig FILE` or
 * `KUBECONFIG`): the cluster description decoded once at the boundary with Effect Schema,
 * the driver started (its first list done, so the supervisor's reconciliation at start sees
 * the real cluster), and a supervisor run under leader election (started when this replica
 * leads, dropped the moment it stops leading). docs/KUBERNETES.md shows the wiring.
 */
import { Effect, Either, Layer, ParseResult, Schema } from "effect"
import type { KubeConfig } from "@kubernetes/client-node"
import type { EngineClock } from "../clock.js"
import * as policy from "../policy.js"
import { Cluster } from "../services.js"
import { KubernetesCluster, loadKubeconfig, type DriverReport } from "./cluster.js"
import { kubernetesConfig, type KubernetesClusterConfig } from "./config.js"
import { DEFAULT_LEADER_ELECTION, LeaderElector, type LeaderElectionConfig, type LeaderReport } from "./leader.js"

const Count = (max: number) => Schema.Int.pipe(Schema.between(1, max))
const Name = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/, { message: () => "a Kubernetes name or label value (at most 63)" }))
/** A StorageClass name is a DNS-1123 subdomain (at most 253). */
const StorageClass = Schema.String.pipe(Schema.pattern(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, { message: () => "a StorageClass name (a DNS-1123 subdomain)" }), Schema.maxLength(253))
const Ms = Schema.Int.pipe(Schema.between(1, 24 * policy.MS_PER_HOUR))

/** The cluster description file (JSON): regions are static facts the engine's admission needs. */
const ClusterFile = Schema.Struct({
  namespace: Schema.optional(Name),
  // At least one: without a region every launch is refused, and the replica would serve that.
  regions: Schema.Record({ key: Name, value: Schema.Struct({ nodes: Count(100_000), gpus_per_node: Count(policy.GPU_COUNT_MAX) }) }).pipe(
    Schema.filter((regions) => Object.keys(regions).length > 0, { message: () => "at least one region" })
  ),
  region_label: Schema.optional(Schema.String),
  gpu_label: Schema.optional(Schema.NullOr(Schema.String)),
  gpu_resource: Schema.optional(Schema.String),
  preemptible_priority_class: Schema.optional(Name),
  inference_priority_class: Schema.optional(Schema.NullOr(Name)),
  default_image: Schema.optional(Schema.String),
  inference_port: Schema.optional(Schema.Int.pipe(Schema.between(1, 65_535))),
  inference_readiness_path: Schema.optional(Schema.NullOr(Schema.String)),
  termination_grace_s: Schema.optional(Schema.Int.pipe(Schema.between(0, 3_600))),
  cloud_drive_storage_class: Schema.optional(Schema.NullOr(StorageClass)),
  shared_fs_storage_class: Schema.optional(Schema.NullOr(StorageClass)),
  leader_election: Schema.optional(
    Schema.Struct({
      lease_name: Schema.optional(Name),
      lease_duration_ms: Schema.optional(Ms),
      renew_deadline_ms: Schema.optional(Ms),
      retry_period_ms: Schema.optional(Ms),
      request_timeout_ms: Schema.optional(Ms)
    })
  )
})

export interface KubernetesWorldConfig {
  readonly cluster: KubernetesClusterConfig
  readonly leader_election: Omit<LeaderElectionConfig, "namespace" | "identity">
}

/** Decodes the cluster description (parsed JSON), or says what is wrong, path by path, on one line. */
export const decodeKubernetesWorld = (input: unknown): Either.Either<KubernetesWorldConfig, string> => {
  const decoded = Schema.decodeUnknownEither(ClusterFile, { errors: "all" })(input)
  // One line, the first issue of each path as `path: message` (an optional field also fails
  // its `undefined` branch: noise), so an operator reads it in a start's one-line refusal.
  if (Either.isLeft(decoded)) {
    const issues = new Map<string, string>()
    for (const issue of ParseResult.ArrayFormatter.formatErrorSync(decoded.left)) {
      const path = issue.path.length === 0 ? "the file" : issue.path.join(".")
      if (!issues.has(path)) issues.set(path, issue.message)
    }
    return Either.left([...issues].map(([path, message]) => `${path}: ${message}`).join("; "))
  }
  const f = decoded.right
  try {
    const { regions, leader_election, ...rest } = f
    const cluster = kubernetesConfig({ ...rest, regions: Object.entries(regions).map(([name, r]) => ({ name, ...r })) })
    const le = { ...DEFAULT_LEADER_ELECTION, ...(leader_election ?? {}) }
    if (!(le.retry_period_ms < le.renew_deadline_ms && le.renew_deadline_ms < le.lease_duration_ms && le.lease_duration_ms % 1000 === 0)) {
      return Either.left("leader_election: need retry_period_ms < renew_deadline_ms < lease_duration_ms, the last in whole seconds")
    }
    return Either.right({ cluster, leader_election: le })
  } catch (e) {
    return Either.left((e as Error).message)
  }
}

/** The driver on the cluster the kubeconfig names, started: its cache is filled when this resolves. */
export const startKubernetesCluster = async (
  kubeconfig: string | KubeConfig | undefined,
  clock: EngineClock,
  config: KubernetesClusterConfig,
  report?: (r: DriverReport) => void
): Promise<KubernetesCluster> => {
  const kc = typeof kubeconfig === "object" ? kubeconfig : loadKubeconfig(kubeconfig)
  const cluster = new KubernetesCluster(kc, clock, config, report)
  await cluster.start()
  return cluster
}

/**
 * The Kubernetes world's Cluster service: started (first list) when the layer is built,
 * stopped with its scope. The layer is asynchronous: build it with `Effect.runPromise` /
 * `Layer.toRuntime` under `runPromise`, not `runSync`.
 */
export const kubernetesClusterLayer = (
  kubeconfig: string | KubeConfig | undefined,
  clock: EngineClock,
  config: KubernetesClusterConfig,
  report?: (r: DriverReport) => void
): Layer.Layer<Cluster> =>
  Layer.scoped(
    Cluster,
    Effect.acquireRelease(
      Effect.promise(() => startKubernetesCluster(kubeconfig, clock, config, report)),
      (cluster) => Effect.sync(() => cluster.stop())
    )
  )

/** A running supervisor (an engine scope): dropped without writing anything. */
export interface Running {
  stop(): void
  /** True once its writes were fenced by a newer leader term: the replica steps down (`LeaderCallbacks.fenced`). */
  fenced?(): boolean
}

/**
 * Runs `start` (build the engine on the shared SQLite file: rehydrate, reconcile, serve)
 * whenever this replica leads, and stops what it returned the moment it does not. Two
 * supervisors never run at once as long as every replica runs this with the same lease.
 * Returns the elector (`stop()` it to release the lease at shutdown).
 */
export const superviseUnderLease = (
  kubeconfig: KubeConfig,
  clock: EngineClock,
  config: LeaderElectionConfig,
  start: () => Running,
  report?: (r: LeaderReport) => void
): LeaderElector => {
  let running: Running | null = null
  const elector = new LeaderElector(
    kubeconfig,
    clock,
    config,
    {
      onStartedLeading: () => {
        if (running !== null) throw new Error("started leading while a supervisor runs")
        running = start()
      },
      onStoppedLeading: () => {
        const r = running
        running = null
        r?.stop()
      },
      fenced: () => running?.fenced?.() ?? false
    },
    report
  )
  elector.start()
  return elector
}
