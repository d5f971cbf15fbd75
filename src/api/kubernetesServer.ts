/**
 * `npm start -- --kubeconfig FILE --cluster FILE`: the control plane in the Kubernetes world
 * (issue 5). The driver (src/k8s) replaces the simulated cluster; everything else is the same
 * engine and the same API.
 *
 * Several replicas may run against one cluster and one SQLite file (docs/KUBERNETES.md):
 * each competes for a coordination.k8s.io Lease, and only the holder runs a supervisor and
 * serves the API. A replica that does not lead listens on its port all the same and answers
 * every request 503 `not_leader` with `retry-after`, so a load balancer or a client retries
 * elsewhere; but `GET /healthz` 200 (alive) and `GET /readyz` 503 `standby` (not ready), so a
 * kubelet keeps it running and a Service sends it nothing. Leadership changes are
 * serialised: a new leader rehydrates from SQLite and reconciles with the cluster before it
 * serves (SupervisorApi start); a replica that stops leading fences its supervisor at once,
 * in the elector's callback (it writes nothing more, and every request gets 503
 * `not_leader`), then stops serving and drops it.
 */
import { existsSync, readFileSync } from "node:fs"
import Database from "better-sqlite3"
import { Either } from "effect"
import Fastify, { type FastifyInstance } from "fastify"
import type { Logger } from "pino"
import { LiveClock } from "../clock.js"
import type { KubeConfig } from "@kubernetes/client-node"
import { loadKubeconfig, type DriverReport } from "../k8s/cluster.js"
import type { LeaderReport } from "../k8s/leader.js"
import { decodeKubernetesWorld, startKubernetesCluster, superviseUnderLease, type KubernetesWorldConfig } from "../k8s/world.js"
import * as policy from "../policy.js"
import { buildApp, notReadyBody, RATE_LIMIT_DEFAULT } from "./app.js"
import { openEngine, type OpenedEngine } from "./engine.js"
import { cryptoSecrets } from "./secrets.js"
import { applyDemo, ConfigError, DEMO_CATALOG, engineLog, paymentsOf, type RunningServer, type ServerConfig, type StartOptions } from "./server.js"

/** How long `startServer` waits for this replica to lead before it returns as a standby. */
export const FIRST_LEADERSHIP_WAIT_MS = 5_000

const standbyApp = async (identity: string, logger: Logger): Promise<FastifyInstance> => {
  let seq = 0
  const app = Fastify({ loggerInstance: logger }) as unknown as FastifyInstance
  // Alive, not ready: a kubelet keeps the standby running and a Service sends it nothing.
  app.get("/healthz", { logLevel: "warn" }, async () => ({ status: "ok" }))
  app.get("/readyz", { logLevel: "warn" }, async (_request, reply) => reply.code(503).send(notReadyBody("standby")))
  app.all("/*", async (_request, reply) =>
    reply
      .code(503)
      .header("retry-after", String(policy.NOT_LEADER_RETRY_AFTER_S))
      .header("x-ecolink-request-id", `standby-${identity}-${++seq}`)
      .send({ error: "not_leader", message: "this control-plane replica is on standby: another replica holds the leader lease; retry" })
  )
  return app
}

/** The Kubernetes world's files, read and checked before anything opens. */
export interface KubernetesFiles {
  readonly world: KubernetesWorldConfig
  readonly kubeconfig: KubeConfig
}

/**
 * Reads the cluster file and the kubeconfig, or throws `ConfigError` with one line saying
 * what is wrong: called before the database's directory is made, the driver started or the
 * lease tried, so a bad file exits 2 with nothing created (it used to exit 1 with a stack).
 */
export const readKubernetesFiles = (config: ServerConfig): KubernetesFiles => {
  const k8s = config.kubernetes!
  // parseConfig refuses the Kubernetes world without one: every replica shares it.
  if (config.operator_key === null) throw new ConfigError("the Kubernetes world needs ECOLINK_OPERATOR_KEY (or --operator-key)")
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(k8s.cluster_file, "utf8"))
  } catch (e) {
    throw new ConfigError(`--cluster ${k8s.cluster_file}: ${(e as Error).message}`)
  }
  const world = decodeKubernetesWorld(parsed)
  if (Either.isLeft(world)) throw new ConfigError(`--cluster ${k8s.cluster_file}: ${world.left}`)
  let kubeconfig: KubeConfig
  try {
    kubeconfig = loadKubeconfig(k8s.kubeconfig)
  } catch (e) {
    throw new ConfigError(`--kubeconfig ${k8s.kubeconfig}: ${(e as Error).message.split("\n")[0]}`)
  }
  // client-node refuses a kubeconfig without a current cluster only at its first request.
  if (kubeconfig.getCurrentCluster() === null) throw new ConfigError(`--kubeconfig ${k8s.kubeconfig}: no current context with a cluster`)
  const stranded = liveOutside(config.db, new Set(world.right.cluster.regions.map((r) => r.name)))
  if (stranded.size > 0) {
    // Every missing region at once: named one a start, the operator met the next at the next start.
    const missing = [...stranded].sort(([a], [b]) => (a < b ? -1 : 1)).map(([region, ids]) => {
      const shown = ids.slice(0, STRANDED_SHOWN_MAX).join(", ") + (ids.length > STRANDED_SHOWN_MAX ? `, and ${ids.length - STRANDED_SHOWN_MAX} more` : "")
      return `no region ${region}, where ${ids.length} live resource${ids.length === 1 ? "" : "s"} of the database run${ids.length === 1 ? "s" : ""} (${shown})`
    })
    throw new ConfigError(
      `--cluster ${k8s.cluster_file}: ${missing.join("; ")}: ` +
        `put the region${missing.length === 1 ? "" : "s"} back until they are stopped or deleted; the engine cannot reach their pods or volumes without ${missing.length === 1 ? "it" : "them"}`
    )
  }
  return { world: world.right, kubeconfig }
}

/** Ids named in a start's refusal over a missing region; the rest are counted. */
const STRANDED_SHOWN_MAX = 5

/**
 * The database's live resources in regions the cluster file does not name, by region, each
 * list in id order (an inference instance counts in each of its regions). Read-only, before
 * anything opens: a region removed from the file under running resources made the start's
 * reconciliation throw on the first of them, and every replica crash in a loop with a stack.
 * A database not created yet has none.
 */
const liveOutside = (db: string, regions: ReadonlySet<string>): Map<string, string[]> => {
  const stranded = new Map<string, string[]>()
  if (!existsSync(db)) return stranded
  const conn = new Database(db, { readonly: true, fileMustExist: true })
  try {
    const hasTable = conn.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'resources'`).get() !== undefined
    if (!hasTable) return stranded
    for (const row of conn.prepare(`SELECT id, snapshot FROM resources WHERE live = 1 ORDER BY id`).iterate() as IterableIterator<{ id: string; snapshot: string }>) {
      const context = (JSON.parse(row.snapshot) as { context?: { region?: unknown; regions?: unknown } }).context
      const named = Array.isArray(context?.regions) ? context.regions : [context?.region]
      for (const region of named) {
        if (typeof region !== "string" || regions.has(region)) continue
        const ids = stranded.get(region) ?? []
        ids.push(row.id)
        stranded.set(region, ids)
      }
    }
  } finally {
    conn.close()
  }
  return stranded
}

/** The lease's reports, at the level an operator should see them: a failing request is a warning. */
const logLeaderReport = (logger: Logger, r: LeaderReport): void => {
  if (r.kind === "acquired") logger.info(r, "lease acquired")
  else if (r.kind === "lost" && r.reason === "fenced") {
    logger.error(
      r,
      "lease given up: another replica claimed a newer leader term on the database while this one held the lease, so this one was fenced; " +
        "it stands by until the lease is released or expires, then leads with a fresh term. Two replicas with the same identity (--identity, POD_NAME) do this: give each its own"
    )
  } else if (r.kind === "lost") logger.warn(r, `lease lost (${r.reason})`)
  else logger.warn(r, "lease request failed")
}

/** The driver's reports: retries, lost pods and contested labels are warnings, a request given up an error. */
const logDriverReport = (logger: Logger, r: DriverReport): void => {
  if (r.kind === "request_failed") logger[r.final ? "error" : "warn"](r, `kubernetes request failed: ${r.what}`)
  else if (r.kind === "pod_lost") logger.warn(r, `pod lost: ${r.pod}`)
  else if (r.kind === "watch_restarted") logger.info(r, `pod watch restarted (${r.reason})`)
  else if (r.kind === "relisted") logger.info(r, "pods relisted")
  else if (r.kind === "events_cut") {
    logger.warn(r, `pod stop Events cut at events_listed_max (${r.read} read; ${r.unread_from} and the reasons after it not all read): a pod gone unseen among them is billed until found`)
  }
  else if (r.kind === "pod_relabeled") logger.info(r, `labels put back on pod ${r.pod} (removed or changed by hand): ${r.labels.join(", ")}`)
  else if (r.kind === "labels_contested") {
    logger.warn(
      r,
      `labels of pod ${r.pod} put back ${r.times} times in a row, each undone soon after (${r.labels.join(", ")}): something (another controller, a script) keeps removing or changing them; ` +
        "the engine goes on putting them back, at most once every own_retry_ms_max (1 min by default), until that is stopped"
    )
  } else logger.info(r, `pod replaced: ${r.pod}`)
}

export const startKubernetesServer = async (
  config: ServerConfig,
  files: KubernetesFiles,
  options: StartOptions & { readonly logger: Logger }
): Promise<RunningServer> => {
  const k8s = config.kubernetes!
  const operator_key = config.operator_key!
  const secrets = options.secrets ?? cryptoSecrets
  const logger = options.logger.child({ identity: k8s.identity })
  const world = files.world
  // The clock's one warning (the wall clock behind the database) goes to the process's log.
  const clock = new LiveClock({ speed: config.clock_speed, log: (line) => logger.warn(line) })
  const kc = files.kubeconfig
  const driverLog = logger.child({ component: "driver" })
  const leaseLog = logger.child({ component: "lease" })
  const cluster = await startKubernetesCluster(kc, clock, world.cluster, (r) => logDriverReport(driverLog, r))

  // What this replica serves now, and the port it keeps across leadership changes.
  let serving: { readonly app: FastifyInstance; readonly opened: OpenedEngine | null } | null = null
  let port = config.port
  let demo: RunningServer["demo"] = null
  let live_resources = 0
  let closed = false
  const listen = async (app: FastifyInstance): Promise<string> => {
    const url = await app.listen({ port, host: config.host })
    port = app.server.address() !== null && typeof app.server.address() === "object" ? (app.server.address() as { port: number }).port : port
    return url
  }
  const stopServing = async (): Promise<void> => {
    const s = serving
    serving = null
    if (s === null) return
    await s.app.close()
    // A replica that lost the lease writes nothing more: another one may be writing already.
    s.opened?.close()
  }
  // The term this replica leads in (null: none), and the engine it opened for it. A lost
  // lease fences that engine at once, in the elector's callback: its timers, alarms and
  // requests still in flight write nothing more, though closing its app may take a while and
  // another replica may be writing the database already.
  let term: number | null = null
  let terms = 0
  let leader: OpenedEngine | null = null
  const lead = async (mine: number): Promise<void> => {
    // A lease lost before this transition's turn came: the standby that follows stays.
    if (closed || term !== mine) return
    // The engine and its routes are ready before the standby stops listening: the port is
    // refused only for the moment between the standby's close and the leader's listen.
    // A newer leader term fences this engine's writes even if its lease timer never fired.
    const opened = openEngine({ db: config.db, clock, cluster, ...DEMO_CATALOG, ...paymentsOf(config), ledger_options: { claim_leader_term: true, synchronous: config.sqlite_synchronous }, log: engineLog(logger) })
    leader = opened
    try {
      demo = applyDemo(config, opened.engine, secrets, logger)
      live_resources = opened.engine.ledger.liveResources().length
      const app = await buildApp({
        engine: opened.engine,
        secrets,
        operatorKey: operator_key,
        loggerInstance: logger,
        rateLimit: config.rate_limit === 0 ? false : { max: config.rate_limit, window_ms: RATE_LIMIT_DEFAULT.window_ms },
        ...(config.trust_proxy === null ? {} : { trustProxy: config.trust_proxy }),
        publicUrl: config.public_url ?? `http://${config.host}:${port}`,
        ...(config.stripe === null ? {} : { stripeWebhookSecret: config.stripe.webhook_secret }),
        ...(options.onDefect === undefined ? {} : { onDefect: options.onDefect }),
        notReady: () => (term === mine ? null : "not_leading")
      })
      await stopServing()
      serving = { app, opened }
      await listen(app)
      logger.info({ term: mine }, "leading: supervisor started, API serving")
    } catch (e) {
      if (leader === opened) leader = null
      opened.close()
      throw e
    }
  }
  const standBy = async (): Promise<void> => {
    await stopServing()
    if (closed) return
    const app = await standbyApp(k8s.identity, logger)
    serving = { app, opened: null }
    await listen(app)
    logger.info("standby: another replica leads")
  }

  // Leadership callbacks are synchronous; the transitions they start run one after another.
  let transitions: Promise<void> = standBy()
  const next = (step: () => Promise<void>): void => {
    transitions = transitions.then(step).catch((e: unknown) => {
      logger.error({ err: e }, "leadership transition failed")
      options.onDefect?.(e)
    })
  }
  let ledOnce: () => void = () => {}
  const firstLead = new Promise<void>((resolve) => (ledOnce = resolve))
  const elector = superviseUnderLease(
    kc,
    clock,
    { namespace: world.cluster.namespace, identity: k8s.identity, ...world.leader_election },
    () => {
      const mine = ++terms
      term = mine
      next(() => lead(mine))
      next(async () => ledOnce())
      return {
        // Asked before each renewal: is this term's engine fenced by a newer term? `fenced`
        // reads the database's term (when another connection committed since it last looked)
        // without a transaction: it takes no lock, so a writer outside holding the database
        // cannot make this check fail (an empty unit of work did: BUSY after the busy timeout
        // broke the supervisor and escaped the lease's tick).
        fenced: () => {
          const l = leader
          if (closed || l === null || term !== mine) return false
          return l.engine.sup.fenced
        },
        stop: () => {
          if (term === mine) term = null
          leader?.engine.sup.fence()
          logger.warn({ term: mine }, "fenced: the lease is lost, this replica's supervisor writes nothing more; standing by")
          leader = null
          next(standBy)
        }
      }
    },
    (r) => logLeaderReport(leaseLog, r)
  )
  await transitions
  // Wait a little for the lease, so a lone replica prints its demo key; a standby returns.
  await Promise.race([firstLead, new Promise<void>((r) => setTimeout(r, FIRST_LEADERSHIP_WAIT_MS).unref())])
  await transitions
  const url = `http://${config.host}:${port}`
  let closing: Promise<void> | null = null
  return {
    get app() {
      return serving!.app
    },
    get opened() {
      return serving?.opened ?? null
    },
    url,
    operator_key,
    operator_key_generated: false,
    get demo() {
      return demo
    },
    get live_resources() {
      return live_resources
    },
    world: `Kubernetes (${k8s.kubeconfig}, namespace ${world.cluster.namespace}), replica ${k8s.identity}, ${elector.leading ? "leading" : "standby"}`,
    close: () =>
      (closing ??= (async () => {
        closed = true
        // Stop serving and drop the supervisor before the lease goes, so no two ever write.
        await transitions
        const opened = serving?.opened ?? null
        await serving?.app.close()
        serving = null
        try {
          opened?.engine.sup.settleApiUsage()
        } finally {
          // Whatever the posting met (the database busy past its timeout), the database closes
          // and the lease is given up, so a standby takes over at once, not when it expires.
          opened?.close()
          await elector.stop({ release: true })
          cluster.stop()
        }
      })())
  }
}
