/**
 * A whole control plane for API tests: the engine on a virtual clock and the simulated
 * cluster (two regions), an in-memory ledger, deterministic secrets, and `buildApp` driven
 * with `inject()`. Time moves only when a test advances it.
 */
import type { FastifyInstance, LightMyRequestResponse } from "fastify"
import { buildApp, type AppOptions } from "../../src/api/app.js"
import { openEngine, type OpenedEngine } from "../../src/api/engine.js"
import { seededSecrets } from "../../src/api/secrets.js"
import { VirtualClock } from "../../src/clock.js"
import { dollars } from "../../src/money.js"
import { SimCluster, type SimRegion } from "../../sim/cluster.js"
import type { PaymentsPort } from "../../src/payments.js"

export const START = "2026-03-01T00:00:00.000Z"
export const START_MS = Date.parse(START)
export const MIN = 60_000
export const HOUR = 3_600_000
export const OPERATOR_KEY = "op_test_0123456789abcdefghijklmnopqrstuvwxyz"

const region = (name: string, extra: Partial<SimRegion> = {}): SimRegion => ({
  name,
  nodes: 2,
  gpus_per_node: 8,
  image_pull_ms: 60_000,
  image_pull_jitter_ms: 0,
  container_start_ms: 30_000,
  pod_stop_ms: 0,
  pull_failure_probability: 0,
  preemption_mean_interval_ms: 0,
  preemption_duration_ms: 0,
  ...extra
})

export interface Reply {
  readonly status: number
  readonly body: any
  readonly text: string
  readonly headers: LightMyRequestResponse["headers"]
}

export interface World {
  readonly app: FastifyInstance
  readonly opened: OpenedEngine
  readonly clock: VirtualClock
  readonly cluster: SimCluster
  /** Moves the virtual clock by `ms`, one unit of work per clock step (as the simulator does). */
  advance(ms: number): void
  req(method: string, url: string, options?: { key?: string | null; body?: unknown; headers?: Record<string, string>; raw?: string }): Promise<Reply>
  /** Signs up `email`; its account credited `balance` dollars by the operator (none for "0"). */
  signup(email: string, balance?: string): Promise<{ account: string; key: string; user: string }>
  close(): Promise<void>
}

/** The engine's side of a test world: a payment provider, a database file, a clock that outlives a restart. */
export interface EngineOptions {
  readonly payments?: PaymentsPort
  readonly db?: string
  readonly clock?: VirtualClock
}

export const world = async (options: Partial<Omit<AppOptions, "engine">> = {}, engineOptions: EngineOptions = {}): Promise<World> => {
  const clock = engineOptions.clock ?? new VirtualClock(START_MS)
  const cluster = new SimCluster(clock, [region("us-east"), region("us-west")], 7)
  const opened = openEngine({
    db: engineOptions.db ?? ":memory:",
    ...(engineOptions.payments === undefined ? {} : { payments: engineOptions.payments }),
    clock,
    cluster,
    gpu_rates: new Map([["H100", dollars("1.60")]]),
    model_prices: new Map([
      ["llama-3-8b", { input_per_1m_tokens: dollars("0.15"), output_per_1m_tokens: dollars("0.60") }],
      ["embed-small", { input_per_1m_tokens: dollars("0.02") }],
      ["unpriced-model", null]
    ]),
    storage_rates: new Map([
      ["cloud_drive", dollars("0.004")],
      ["shared_fs", dollars("0.006")]
    ]),
    ledger_options: { synchronous: "OFF" }
  })
  const app = await buildApp({
    engine: opened.engine,
    secrets: seededSecrets("api-tests"),
    operatorKey: OPERATOR_KEY,
    logger: false,
    rateLimit: { max: 10_000, window_ms: 60_000 },
    docs: false,
    publicUrl: "https://console.ecohash.test",
    ...options
  })
  const req: World["req"] = async (method, url, o = {}) => {
    const headers: Record<string, string> = { ...(o.headers ?? {}) }
    if (o.key !== undefined && o.key !== null) headers["authorization"] = `Bearer ${o.key}`
    const res = await app.inject({
      method: method as "GET",
      url,
      headers,
      ...(o.raw !== undefined ? { payload: o.raw } : o.body !== undefined ? { payload: o.body as Record<string, unknown> } : {})
    })
    let body: unknown = undefined
    try {
      body = res.body.length > 0 ? JSON.parse(res.body) : undefined
    } catch {
      body = undefined
    }
    return { status: res.statusCode, body, text: res.body, headers: res.headers }
  }
  return {
    app,
    opened,
    clock,
    cluster,
    advance: (ms) => clock.advanceTo(clock.now() + ms, (_, fire) => opened.engine.sup.unitOfWork(fire)),
    req,
    signup: async (email, balance = "100.00") => {
      const r = await req("POST", "/accounts", { body: { email } })
      if (r.status !== 201) throw new Error(`sign-up failed: ${r.status} ${r.text}`)
      const account = r.body.account.id as string
      if (balance !== "0") {
        const c = await req("POST", `/operator/accounts/${account}/adjustments`, { key: OPERATOR_KEY, body: { amount: balance, description: "Test credit" } })
        if (c.status !== 201) throw new Error(`credit failed: ${c.status} ${c.text}`)
      }
      return { account, key: r.body.api_key.secret as string, user: r.body.user.id as string }
    },
    close: async () => {
      await app.close()
      opened.close()
    }
  }
}

/** The account's ledger rows as [kind, amount dollars, resource], oldest first. */
export const ledgerOf = (w: World, account: string): Array<[string, string, string | null]> =>
  w.opened.engine.ledger
    .ledgerRows()
    .filter((r) => r.account === account)
    .map((r) => [r.kind, (Number(r.amount_micros) / 1e6).toFixed(6).replace(/0{1,4}$/, ""), r.resource])

/** Everything a request could change: money, resources, notifications, the API's tables. */
export const stateOf = (w: World): string => {
  const db = w.opened.engine.ledger.db
  const tables = ["accounts", "ledger", "holds", "resources", "notifications", "models", "api_users", "api_memberships", "api_keys", "api_invites", "api_idempotency"]
  return JSON.stringify(
    tables.map((t) => db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).safeIntegers(true).all()),
    (_, v) => (typeof v === "bigint" ? v.toString() : Buffer.isBuffer(v) ? v.toString("hex") : v)
  )
}

/** Every route of the API (beside /openapi.json and /docs). */
export const ALL_ROUTES = [
  "post /accounts",
  "get /account",
  "get /team/members",
  "delete /team/members/{user_id}",
  "post /team/invites",
  "get /team/invites",
  "post /invites/{token}/accept",
  "post /api-keys",
  "get /api-keys",
  "delete /api-keys/{id}",
  "post /gpu-instances",
  "get /gpu-instances",
  "get /gpu-instances/{id}",
  "delete /gpu-instances/{id}",
  "post /gpu-instances/{id}/extend",
  "post /gpu-clusters",
  "get /gpu-clusters",
  "get /gpu-clusters/{id}",
  "delete /gpu-clusters/{id}",
  "post /gpu-clusters/{id}/extend",
  "post /inference-instances",
  "get /inference-instances",
  "get /inference-instances/{id}",
  "delete /inference-instances/{id}",
  "post /models",
  "get /models",
  "get /models/{*}",
  "delete /models/{*}",
  "get /platform/models",
  "post /cloud-drives",
  "get /cloud-drives",
  "get /cloud-drives/{id}",
  "delete /cloud-drives/{id}",
  "post /shared-filesystems",
  "get /shared-filesystems",
  "get /shared-filesystems/{id}",
  "delete /shared-filesystems/{id}",
  "get /billing/balance",
  "get /billing/transactions",
  "get /billing/usage",
  "get /notifications",
  "get /notifications/unread-count",
  "post /notifications/{id}/read",
  "post /notifications/read-all",
  "post /v1/chat/completions",
  "post /v1/completions",
  "post /v1/embeddings",
  "get /v1/models",
  "get /operator/accounts/{account}",
  "post /operator/accounts/{account}/adjustments"
]
