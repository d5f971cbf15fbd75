/**
 * The production control plane as `npm start` runs it: the engine on an embedded SQLite
 * file with the built-in simulated cluster on the live clock (optionally a fast one), the
 * HTTP API listening, a demo account with credit and a demo API key that stays the same
 * across restarts, and an orderly close.
 *
 * Configuration has one place, `parseConfig`: a flag wins over its environment variable,
 * which wins over the default.
 *
 * | flag | env | default |
 * | --- | --- | --- |
 * | --db FILE | ECOLINK_DB | data/ecolink.sqlite |
 * | --port N | PORT | 8080 (0: any free port) |
 * | --host H | HOST | 127.0.0.1 |
 * | --operator-key K | ECOLINK_OPERATOR_KEY | generated for this run, printed (required with a kubeconfig) |
 * | --clock-speed X | ECOLINK_CLOCK_SPEED | 1 (engine ms per wall ms) |
 * | --public-url U | ECOLINK_PUBLIC_URL | http://HOST:PORT (invite links; an absolute http(s) URL) |
 * | --rate-limit N | ECOLINK_RATE_LIMIT | 600 requests a minute per account (0: off) |
 * | --trust-proxy P | ECOLINK_TRUST_PROXY | none: the client address is the connection's (P: hops 1–10, or proxy addresses/CIDRs, comma-separated) |
 * | --log-level L | ECOLINK_LOG_LEVEL | info (silent: none) |
 * | --demo, --no-demo | ECOLINK_DEMO (true/false/1/0) | seeded in the simulated world, not in the Kubernetes world |
 * | --kubeconfig FILE | KUBECONFIG (read only with a cluster file) | none: the built-in simulated cluster |
 * | --cluster FILE | ECOLINK_CLUSTER | required with a kubeconfig: regions, namespace, lease (docs/KUBERNETES.md) |
 * | --identity NAME | POD_NAME | host name and process id (this replica in the leader lease) |
 * | (none) | ECOLINK_SQLITE_SYNCHRONOUS | FULL (every commit durable); NORMAL (docs/ENGINE.md "Durability") |
 * | --stripe-key K | STRIPE_SECRET_KEY | none: no payment routes (top-ups, auto-recharge, webhook) |
 * | --stripe-webhook-secret S | STRIPE_WEBHOOK_SECRET | required with a Stripe key |
 * | --stripe-api URL | STRIPE_API_URL | https://api.stripe.com (a Stripe-compatible server, for tests) |
 *
 * An empty or blank value is refused, never read as unset; so is a secret with spaces around it.
 *
 * With a kubeconfig the Kubernetes world replaces the simulated cluster, and the replica runs
 * the supervisor only while it holds the leader lease (`startKubernetesServer`).
 */
import { mkdirSync } from "node:fs"
import { isIP } from "node:net"
import { hostname } from "node:os"
import { dirname, resolve } from "node:path"
import { parseArgs } from "node:util"
import type { FastifyInstance } from "fastify"
import { pino, type DestinationStream, type Logger } from "pino"
import { SimCluster, type SimRegion } from "../../sim/cluster.js"
import { LiveClock, LIVE_CLOCK_SPEED_MAX, type EngineClock } from "../clock.js"
import { dollars, formatDollars } from "../money.js"
import { buildApp, OPERATOR_KEY_LENGTH_MIN, RATE_LIMIT_DEFAULT, REQUEST_LOG_SERIALIZERS } from "./app.js"
import { openEngine, type Engine, type OpenedEngine } from "./engine.js"
import { cryptoSecrets, formatApiKey, KEY_ID_CHARS, base32, newSecret, parseApiKey, sha256, type SecretsPort } from "./secrets.js"
import { ApiStore } from "./store.js"
import { readKubernetesFiles, startKubernetesServer } from "./kubernetesServer.js"
import { StripePayments } from "../stripePayments.js"
import type { EngineLogPort } from "../services.js"

export interface ServerConfig {
  readonly db: string
  readonly port: number
  readonly host: string
  /** null: one is generated for this run. */
  readonly operator_key: string | null
  readonly clock_speed: number
  readonly public_url: string | null
  /** Requests a minute per account; 0 turns rate limiting off. */
  readonly rate_limit: number
  /** Whose `X-Forwarded-For` names the client (`trustProxyOf`); null: nobody's. */
  readonly trust_proxy: number | ReadonlyArray<string> | null
  readonly log_level: string
  /** Seed the demo account and key (`seedDemo`); false revokes the demo account's keys (`revokeDemo`). */
  readonly demo: boolean
  /** Stripe: the secret key, the webhook signing secret and the API's address; null: no payments. */
  readonly stripe: { readonly api_key: string; readonly webhook_secret: string; readonly api_url: string } | null
  /** The Kubernetes world: a kubeconfig file and the cluster description file, or null. */
  readonly kubernetes: { readonly kubeconfig: string; readonly cluster_file: string; readonly identity: string } | null
  /** SQLite `synchronous` of the ledger (src/ledger/store.ts `Synchronous`). */
  readonly sqlite_synchronous: "FULL" | "NORMAL"
}

export class ConfigError extends Error {}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"]

/** A boolean environment variable: true, false, 1 or 0 (any case); anything else is refused. */
const parseBoolean = (name: string, raw: string): boolean => {
  const value = raw.trim().toLowerCase()
  if (value === "true" || value === "1") return true
  if (value === "false" || value === "0") return false
  throw new ConfigError(`${name} must be true, false, 1 or 0, got ${JSON.stringify(raw)}`)
}

/** An absolute http(s) URL an invite link can be built on: `<base>/invites/<token>`. */
const isBaseUrl = (raw: string): boolean => {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return false
  }
  return (url.protocol === "http:" || url.protocol === "https:") && url.hostname !== "" && url.search === "" && url.hash === "" && !/\s/.test(raw)
}

/**
 * Which proxies' `X-Forwarded-For` names the client (Fastify's `trustProxy`), for the rate
 * limits counted by client address (sign-ups, the Stripe webhook, requests without a key):
 * behind an ingress every client otherwise shares the ingress's one budget. A number of hops
 * (1 to 10), or the proxies' addresses and CIDR ranges, comma-separated. Believing any sender
 * (`true`) is refused: every client could then name a new address and a new budget per request.
 */
const trustProxyOf = (raw: string | undefined): number | ReadonlyArray<string> | null => {
  if (raw === undefined) return null
  const refused = () =>
    new ConfigError(`--trust-proxy (ECOLINK_TRUST_PROXY) must be a number of proxy hops from 1 to 10, or the proxies' addresses or CIDR ranges, comma-separated, got ${JSON.stringify(raw)}`)
  if (/^\d+$/.test(raw)) {
    const hops = Number(raw)
    if (hops < 1 || hops > 10) throw refused()
    return hops
  }
  const items = raw.split(",").map((item) => item.trim())
  for (const item of items) {
    const [address = "", prefix, extra] = item.split("/")
    const family = isIP(address)
    if (family === 0 || extra !== undefined) throw refused()
    if (prefix !== undefined && (!/^\d{1,3}$/.test(prefix) || Number(prefix) > (family === 4 ? 32 : 128))) throw refused()
  }
  return items
}

/** Flags, then environment variables, then defaults. Throws `ConfigError` on a bad value. */
export const parseConfig = (argv: ReadonlyArray<string>, env: Readonly<Record<string, string | undefined>>): ServerConfig => {
  let values: Record<string, string | boolean | undefined>
  try {
    values = parseArgs({
      args: [...argv],
      options: {
        db: { type: "string" },
        port: { type: "string" },
        host: { type: "string" },
        "operator-key": { type: "string" },
        "clock-speed": { type: "string" },
        "public-url": { type: "string" },
        "rate-limit": { type: "string" },
        "trust-proxy": { type: "string" },
        "log-level": { type: "string" },
        demo: { type: "boolean" },
        "no-demo": { type: "boolean" },
        kubeconfig: { type: "string" },
        "stripe-key": { type: "string" },
        "stripe-webhook-secret": { type: "string" },
        "stripe-api": { type: "string" },
        cluster: { type: "string" },
        identity: { type: "string" }
      },
      strict: true
    }).values
  } catch (e) {
    throw new ConfigError((e as Error).message)
  }
  // A value given empty or blank is refused, never read as "unset" nor used: `HOST=` bound
  // every interface, `ECOLINK_DB=` opened the working directory, an empty Stripe secret
  // failed every webhook.
  const given = (name: string, raw: string | undefined): string | undefined => {
    if (raw !== undefined && raw.trim() === "") throw new ConfigError(`${name} is empty`)
    return raw
  }
  const pick = (flag: string, variable: string): string | undefined => {
    const fromFlag = values[flag] as string | undefined
    return given(fromFlag === undefined ? variable : `--${flag}`, fromFlag ?? env[variable])
  }
  /** A secret pasted with a space or a newline around it would match nothing: refused. */
  const secret = (flag: string, variable: string): string | undefined => {
    const raw = pick(flag, variable)
    if (raw !== undefined && raw !== raw.trim()) throw new ConfigError(`--${flag} (${variable}) has spaces or a line break around it`)
    return raw
  }
  const whole = (name: string, raw: string | undefined, fallback: number, max: number): number => {
    if (raw === undefined) return fallback
    if (!/^\d{1,9}$/.test(raw) || Number(raw) > max) throw new ConfigError(`${name} must be a whole number from 0 to ${max}, got ${JSON.stringify(raw)}`)
    return Number(raw)
  }
  const speedRaw = pick("clock-speed", "ECOLINK_CLOCK_SPEED")
  const clock_speed = speedRaw === undefined ? 1 : Number(speedRaw)
  if (!/^\d+(\.\d+)?$/.test(speedRaw ?? "1") || !(clock_speed >= 1 && clock_speed <= LIVE_CLOCK_SPEED_MAX)) {
    throw new ConfigError(`--clock-speed must be a number from 1 to ${LIVE_CLOCK_SPEED_MAX}, got ${JSON.stringify(speedRaw)}`)
  }
  const operator_key = secret("operator-key", "ECOLINK_OPERATOR_KEY") ?? null
  if (operator_key !== null && operator_key.length < OPERATOR_KEY_LENGTH_MIN) throw new ConfigError(`the operator key must be at least ${OPERATOR_KEY_LENGTH_MIN} characters`)
  const log_level = pick("log-level", "ECOLINK_LOG_LEVEL") ?? "info"
  if (!LOG_LEVELS.includes(log_level)) throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`)
  // KUBECONFIG alone (set on many a developer's machine) does not leave the simulated world:
  // it counts only with a cluster file. The --kubeconfig flag without one is an error.
  const cluster_file = pick("cluster", "ECOLINK_CLUSTER")
  const kubeconfig = given("--kubeconfig", values["kubeconfig"] as string | undefined) ?? (cluster_file === undefined ? undefined : given("KUBECONFIG", env["KUBECONFIG"]))
  if (kubeconfig !== undefined && cluster_file === undefined) {
    throw new ConfigError("--kubeconfig needs --cluster FILE (or ECOLINK_CLUSTER): the regions, namespace and lease of the Kubernetes world")
  }
  if (kubeconfig === undefined && cluster_file !== undefined) throw new ConfigError("--cluster needs --kubeconfig FILE (or KUBECONFIG)")
  // Every replica must answer the same operator key: one generated per replica would change
  // with every failover, and no operator could know the standby's.
  if (kubeconfig !== undefined && operator_key === null) {
    throw new ConfigError("the Kubernetes world needs ECOLINK_OPERATOR_KEY (or --operator-key): every replica must share one operator key (a generated one would change at each failover)")
  }
  const stripe_key = secret("stripe-key", "STRIPE_SECRET_KEY")
  const stripe_webhook_secret = secret("stripe-webhook-secret", "STRIPE_WEBHOOK_SECRET")
  if ((stripe_key === undefined) !== (stripe_webhook_secret === undefined)) {
    throw new ConfigError("Stripe needs both --stripe-key (STRIPE_SECRET_KEY) and --stripe-webhook-secret (STRIPE_WEBHOOK_SECRET)")
  }
  const stripe_api = pick("stripe-api", "STRIPE_API_URL") ?? "https://api.stripe.com"
  if (!/^https?:[/][/][^/\s]+[/]?$/.test(stripe_api)) throw new ConfigError(`--stripe-api must be http(s)://host[:port], got ${JSON.stringify(stripe_api)}`)
  const sqlite_synchronous = env["ECOLINK_SQLITE_SYNCHRONOUS"] ?? "FULL"
  if (sqlite_synchronous !== "FULL" && sqlite_synchronous !== "NORMAL") {
    throw new ConfigError(`ECOLINK_SQLITE_SYNCHRONOUS must be FULL or NORMAL, got ${JSON.stringify(sqlite_synchronous)}`)
  }
  // The demo account (free credit, a key printed on every start) is for `npm start` on a
  // laptop: the Kubernetes world never seeds it unless asked. The variable is read strictly:
  // `ECOLINK_DEMO=false` used to seed it (only "0" turned it off).
  if (values["demo"] === true && values["no-demo"] === true) throw new ConfigError("--demo and --no-demo contradict each other")
  const demoEnv = given("ECOLINK_DEMO", env["ECOLINK_DEMO"])
  const demo = values["demo"] === true ? true : values["no-demo"] === true ? false : demoEnv === undefined ? kubeconfig === undefined : parseBoolean("ECOLINK_DEMO", demoEnv)
  const public_url = pick("public-url", "ECOLINK_PUBLIC_URL") ?? null
  if (public_url !== null && !isBaseUrl(public_url)) {
    throw new ConfigError(`--public-url (ECOLINK_PUBLIC_URL) must be an absolute http(s) URL without query or fragment (the base of invite links), got ${JSON.stringify(public_url)}`)
  }
  return {
    stripe: stripe_key === undefined ? null : { api_key: stripe_key, webhook_secret: stripe_webhook_secret!, api_url: stripe_api.replace(/[/]$/, "") },
    kubernetes:
      kubeconfig === undefined
        ? null
        : { kubeconfig: resolve(kubeconfig), cluster_file: resolve(cluster_file!), identity: pick("identity", "POD_NAME") ?? `${hostname()}-${process.pid}` },
    db: resolve(pick("db", "ECOLINK_DB") ?? "data/ecolink.sqlite"),
    port: whole("--port", pick("port", "PORT"), 8080, 65_535),
    host: pick("host", "HOST") ?? "127.0.0.1",
    operator_key,
    clock_speed,
    public_url,
    rate_limit: whole("--rate-limit", pick("rate-limit", "ECOLINK_RATE_LIMIT"), RATE_LIMIT_DEFAULT.max, 1_000_000),
    trust_proxy: trustProxyOf(pick("trust-proxy", "ECOLINK_TRUST_PROXY")),
    log_level,
    demo,
    sqlite_synchronous
  }
}

/** The payment provider `npm start` gives the engine: Stripe when configured, else none. */
export const paymentsOf = (config: ServerConfig): { payments?: StripePayments } => {
  if (config.stripe === null) return {}
  const url = new URL(config.stripe.api_url)
  return {
    payments: new StripePayments({
      api_key: config.stripe.api_key,
      host: url.hostname,
      port: url.port === "" ? (url.protocol === "https:" ? 443 : 80) : Number(url.port),
      protocol: url.protocol === "https:" ? "https" : "http"
    })
  }
}

/** The built-in simulated cluster: two regions of 4 nodes × 8 GPUs, no random failures. */
export const DEMO_REGIONS: ReadonlyArray<SimRegion> = ["us-east", "us-west"].map((name) => ({
  name,
  nodes: 4,
  gpus_per_node: 8,
  image_pull_ms: 60_000,
  image_pull_jitter_ms: 0,
  container_start_ms: 30_000,
  pod_stop_ms: 0,
  pull_failure_probability: 0,
  preemption_mean_interval_ms: 0,
  preemption_duration_ms: 0
}))

/** The demo catalog: GPU rates per GPU-hour, platform model prices, storage per GB-day. */
export const DEMO_CATALOG = {
  gpu_rates: new Map([
    ["H100", dollars("1.60")],
    ["A100", dollars("1.10")]
  ]),
  model_prices: new Map([
    ["llama-3-8b", { input_per_1m_tokens: dollars("0.15"), output_per_1m_tokens: dollars("0.60") }],
    ["llama-3-70b", { input_per_1m_tokens: dollars("0.59"), output_per_1m_tokens: dollars("0.79") }],
    ["embed-small", { input_per_1m_tokens: dollars("0.02") }]
  ]),
  storage_rates: new Map([
    ["cloud_drive", dollars("0.004")],
    ["shared_fs", dollars("0.006")]
  ])
}

export const DEMO_ACCOUNT = "demo"
export const DEMO_EMAIL = "demo@ecolink.local"
export const DEMO_CREDIT = "100.00"
/** The demo key's secret, kept so the same key is printed on every start (see docs/API.md). */
const DEMO_KEY_SETTING = "demo_api_key"

/**
 * The demo account, its owner and its key, made once: the account credited $100 when it is
 * first opened; the key created once and printed on every start (again if it was revoked).
 */
export const seedDemo = (engine: Engine, secrets: SecretsPort): { readonly key: string; readonly balance: string } =>
  engine.sup.unitOfWork(() => {
    const api = new ApiStore(engine.ledger.db)
    const now = engine.clock.now()
    if (!engine.ledger.hasAccount(DEMO_ACCOUNT)) {
      const opened = engine.run(engine.sup.openAccount(DEMO_ACCOUNT))
      if (!opened.ok) throw opened.error
      const credited = engine.run(engine.sup.credit(DEMO_ACCOUNT, "adjustment", dollars(DEMO_CREDIT), "Demo credit"))
      if (!credited.ok) throw credited.error
    }
    let user = api.userByEmail(DEMO_EMAIL)
    if (user === undefined) {
      user = { id: "usr-demo", email: DEMO_EMAIL, created_at: now }
      api.insertUser(user)
    }
    if (api.roleOf(DEMO_ACCOUNT, user.id) === undefined) api.addMember(DEMO_ACCOUNT, user.id, "owner", now)
    const stored = api.setting(DEMO_KEY_SETTING)
    const parsed = stored === undefined ? null : parseApiKey(stored)
    const row = parsed === null ? undefined : api.key(parsed.key_id)
    let key = stored
    if (parsed === null || row === undefined || row.revoked_at !== null) {
      const id = base32(secrets, KEY_ID_CHARS)
      const secret = newSecret(secrets)
      api.insertKey({ id, account: DEMO_ACCOUNT, user_id: user.id, name: "demo", secret_sha256: sha256(secret), created_at: now })
      key = formatApiKey(id, secret)
      api.setSetting(DEMO_KEY_SETTING, key)
    }
    return { key: key!, balance: formatDollars(engine.ledger.balance(DEMO_ACCOUNT)) }
  })

/**
 * With the demo off, the demo account keeps its credit but no key answers for it: every live
 * key of the `demo` account (the printed one, and any made with it) is revoked. Before, a
 * `--no-demo` start on a database seeded earlier left the printed key working. Answers the
 * ids revoked (none on a database that never had the demo).
 */
export const revokeDemo = (engine: Engine): ReadonlyArray<string> =>
  engine.sup.unitOfWork(() => {
    const api = new ApiStore(engine.ledger.db)
    const now = engine.clock.now()
    return api
      .keysOf(DEMO_ACCOUNT)
      .filter((k) => k.revoked_at === null)
      .map((k) => api.revokeKey(DEMO_ACCOUNT, k.id, now)?.id)
      .filter((id): id is string => id !== undefined)
  })

/** `seedDemo` or `revokeDemo` as configured, the revocation logged (it changes what answers). */
export const applyDemo = (config: Pick<ServerConfig, "demo">, engine: Engine, secrets: SecretsPort, logger: Logger): RunningServer["demo"] => {
  if (config.demo) return seedDemo(engine, secrets)
  const revoked = revokeDemo(engine)
  if (revoked.length > 0) logger.warn({ account: DEMO_ACCOUNT, key_ids: revoked }, `demo off: revoked the ${DEMO_ACCOUNT} account's API keys`)
  return null
}

export interface RunningServer {
  readonly app: FastifyInstance
  /** The engine this process runs now; null on a Kubernetes standby replica. */
  readonly opened: OpenedEngine | null
  /** Which world it drives, for the banner. */
  readonly world: string
  readonly url: string
  readonly operator_key: string
  readonly operator_key_generated: boolean
  readonly demo: { readonly key: string; readonly balance: string } | null
  readonly live_resources: number
  /** Stops taking requests, lets in-flight ones finish, posts pending API usage, closes SQLite. Idempotent. */
  close(): Promise<void>
}

export interface StartOptions {
  /** Randomness for keys and secrets; default the OS CSPRNG. */
  readonly secrets?: SecretsPort
  /** Called with a defect (a bug, a broken invariant): `npm start` stops the process. */
  readonly onDefect?: (e: unknown) => void
  /** The process's one logger; default `serverLogger(config)`, JSON lines on stdout. */
  readonly logger?: Logger
  /** The simulated world's clock; default the live clock at `config.clock_speed` (tests give a virtual one they move). */
  readonly clock?: EngineClock
}

/**
 * The process's one logger: pino, JSON lines on stdout, each with its numeric level and its
 * time. Fastify's request log (URLs redacted: `redactUrl`) and the Kubernetes world's reports
 * (lease, driver, fencing) go through it, so one collector reads them all (`--log-level silent`: none).
 */
export const serverLogger = (config: Pick<ServerConfig, "log_level">, destination?: DestinationStream): Logger =>
  pino({ level: config.log_level, serializers: REQUEST_LOG_SERIALIZERS }, destination)

/** The engine's lines (src/services.ts `EngineLogPort`) in the process's one logger. */
export const engineLog = (logger: Logger): EngineLogPort => ({
  warn: (fields, message) => logger.warn(fields, message),
  info: (fields, message) => logger.info(fields, message)
})

export const startServer = async (config: ServerConfig, options: StartOptions = {}): Promise<RunningServer> => {
  const secrets = options.secrets ?? cryptoSecrets
  // The Kubernetes world's files are read first: a bad one is a ConfigError with nothing made.
  const kubernetes = config.kubernetes === null ? null : readKubernetesFiles(config)
  // A directory it makes for the database is its owner's alone, as the file is (0600).
  if (config.db !== ":memory:") mkdirSync(dirname(config.db), { recursive: true, mode: 0o700 })
  const logger = options.logger ?? serverLogger(config)
  if (kubernetes !== null) return startKubernetesServer(config, kubernetes, { ...options, logger })
  // The clock's one warning (the wall clock behind the database) goes to the process's log.
  const clock = options.clock ?? new LiveClock({ speed: config.clock_speed, log: (line) => logger.warn(line) })
  // The simulated cluster lives in this process, and starts empty: it takes up the workloads the
  // database says were placed (`restoreWorkloads`), so that a restart leaves them running, as a
  // real cluster's pods outlive its control plane (docs/ENGINE.md, Recovery).
  const cluster = new SimCluster(clock, DEMO_REGIONS, 1)
  // Newest wins: this process takes the next leader term, and one started after it on the same
  // file supersedes it (src/ledger/store.ts): its next write is refused, and every request
  // answers 503 not_leader (SupervisorApi.fenced).
  const on_superseded = () => logger.error({ db: config.db }, `another process opened ${config.db}; this one stops serving (every request answers 503 not_leader)`)
  const ledger_options = { claim_leader_term: true, synchronous: config.sqlite_synchronous, on_superseded }
  const opened = openEngine({
    db: config.db,
    clock,
    cluster,
    ...DEMO_CATALOG,
    ...paymentsOf(config),
    ledger_options,
    log: engineLog(logger),
    restoreWorkloads: (placed) => cluster.restore(placed)
  })
  const operator_key_generated = config.operator_key === null
  const operator_key = config.operator_key ?? `ecoop_${newSecret(secrets)}`
  let app: FastifyInstance | null = null
  // Invite links need the address, known only once listening (with --port 0, say).
  let listening = `http://${config.host}:${config.port}`
  try {
    const demo = applyDemo(config, opened.engine, secrets, logger)
    const live_resources = opened.engine.ledger.liveResources().length
    app = await buildApp({
      engine: opened.engine,
      secrets,
      operatorKey: operator_key,
      // Silent, no request logger at all: pino at level silent still makes a child logger for
      // every request (the read route's throughput, BENCHMARKS.md).
      ...(config.log_level === "silent" ? { logger: false } : { loggerInstance: logger }),
      rateLimit: config.rate_limit === 0 ? false : { max: config.rate_limit, window_ms: RATE_LIMIT_DEFAULT.window_ms },
      ...(config.trust_proxy === null ? {} : { trustProxy: config.trust_proxy }),
      publicUrl: config.public_url ?? (() => listening),
      ...(config.stripe === null ? {} : { stripeWebhookSecret: config.stripe.webhook_secret }),
      ...(options.onDefect === undefined ? {} : { onDefect: options.onDefect })
    })
    const url = await app.listen({ port: config.port, host: config.host })
    listening = url
    let closing: Promise<void> | null = null
    const running: RunningServer = {
      app,
      opened,
      url,
      operator_key,
      operator_key_generated,
      demo,
      live_resources,
      world: `built-in simulated cluster (${DEMO_REGIONS.map((r) => r.name).join(", ")}: 4 nodes × 8 GPUs each)`,
      close: () =>
        (closing ??= (async () => {
          await app!.close()
          try {
            opened.engine.sup.settleApiUsage()
          } finally {
            // Closed whatever the posting met (another connection holding the write lock past
            // the busy timeout: the open minute is lost, as in a crash, and close rejects).
            opened.close()
          }
        })())
    }
    return running
  } catch (e) {
    if (app !== null) await app.close()
    opened.close()
    throw e
  }
}
