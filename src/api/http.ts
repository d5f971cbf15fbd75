/**
 * What every route plugin shares: the context (engine, API store, secrets, authenticator,
 * options), the route-spec helper that puts a schema and an auth rule on every route, the
 * `Idempotency-Key` wrapper, and small decoders for ids and cursors.
 */
import type { FastifyReply, FastifyRequest } from "fastify"
import type { Effect } from "effect"
import { assert, type EngineError } from "../errors.js"
import type { Auth, Authenticator } from "./auth.js"
import type { Engine } from "./engine.js"
import { engineHttp, HttpError, isEngineError, type ErrorBody } from "./errors.js"
import type { SecretsPort } from "./secrets.js"
import { sha256 } from "./secrets.js"
import type { ApiStore, IdempotencyRow } from "./store.js"

export type AuthRule = "account" | "operator" | "public"

declare module "fastify" {
  interface FastifyRequest {
    auth: Auth | null
  }
  interface FastifyContextConfig {
    auth?: AuthRule
    role?: "owner"
    /** A health probe (`/healthz`, `/readyz`): answered even by a fenced replica, never rate limited. */
    probe?: true
    /**
     * A route that takes access away (revoking a key, removing a member), or lists what to take
     * (the keys, the members: their ids come from there): the owner's requests to it are counted
     * in a budget of their own, so a member who uses up the account's cannot keep the owner from
     * removing them.
     */
    lockout?: true
  }
}

export interface ApiContext {
  readonly engine: Engine
  readonly api: ApiStore
  readonly secrets: SecretsPort
  readonly auth: Authenticator
  /** Where invite links point: `${public_url()}/invites/<token>`. */
  readonly public_url: () => string
}

export type KeyAuth = Extract<Auth, { kind: "key" }>

/** The caller's key; routes with `auth: "account"` only run with one (the preParsing hook refused the rest). */
export const keyOf = (request: FastifyRequest): KeyAuth => {
  const auth = request.auth
  if (auth === null || auth.kind !== "key") throw new HttpError(401, "unauthorized", "an account API key is required")
  return auth
}

/** Runs an engine command: its value, or its typed refusal thrown for the error handler. */
export const call = <A, E extends EngineError>(ctx: ApiContext, effect: Effect.Effect<A, E>): A => {
  const result = ctx.engine.run(effect)
  if (result.ok) return result.value
  throw result.error
}

// ── route specs ─────────────────────────────────────────────────────────────────────────
const ERROR_REF = { $ref: "Error#" }

export interface Spec {
  readonly tags: ReadonlyArray<string>
  readonly summary: string
  readonly description?: string
  readonly auth: AuthRule
  readonly role?: "owner"
  readonly params?: Record<string, unknown>
  readonly querystring?: Record<string, unknown>
  readonly body?: Record<string, unknown>
  readonly headers?: Record<string, unknown>
  readonly response: Record<number, unknown>
  /** Accepts `Idempotency-Key` (documented in the schema). */
  readonly idempotent?: boolean
  /** Takes access away, or lists what to take (members, keys): the owner's requests have a rate-limit budget of their own (`FastifyContextConfig.lockout`). */
  readonly lockout?: true
}

/** A route's `schema` and `config`: request and response schemas, error responses, auth rule. */
const NO_QUERY = { type: "object", additionalProperties: false, properties: {} }

export const spec = (s: Spec) => ({
  schema: {
    tags: s.tags,
    summary: s.summary,
    ...(s.description === undefined ? {} : { description: s.description }),
    ...(s.auth === "public" ? { security: [] } : { security: [{ [s.auth === "operator" ? "operatorKey" : "apiKey"]: [] }] }),
    ...(s.params === undefined ? {} : { params: s.params }),
    // A route without query parameters refuses any (400 naming it), as a body refuses an unknown field.
    querystring: s.querystring ?? NO_QUERY,
    ...(s.body === undefined ? {} : { body: s.body }),
    ...(s.idempotent === true
      ? {
          headers: {
            type: "object",
            properties: {
              "idempotency-key": { type: "string", description: "repeat the request safely: a repeat with the same key answers the first answer and does nothing" }
            }
          }
        }
      : {}),
    response: { ...s.response, "4xx": ERROR_REF, "5xx": ERROR_REF }
  },
  config: { auth: s.auth, ...(s.role === undefined ? {} : { role: s.role }), ...(s.lockout === undefined ? {} : { lockout: s.lockout }) }
})

export const idParams = (name = "id") => ({
  type: "object",
  required: [name],
  additionalProperties: false,
  properties: { [name]: { type: "string", minLength: 1, maxLength: 100 } }
})

export const LIST_LIMIT_DEFAULT = 20
export const LIST_LIMIT_MAX = 100

export const limitOf = (raw: string | undefined): number => {
  if (raw === undefined) return LIST_LIMIT_DEFAULT
  const n = Number(raw)
  if (n < 1 || n > LIST_LIMIT_MAX) throw new HttpError(400, "invalid_request", `limit must be from 1 to ${LIST_LIMIT_MAX}`, "limit")
  return n
}

// ── Idempotency-Key ─────────────────────────────────────────────────────────────────────
/** Keys are 1 to 255 visible ASCII characters (Stripe's rule). */
const IDEMPOTENCY_KEY_RE = /^[\x21-\x7e]{1,255}$/
/** A record is kept a day; a repeat after that runs again. */
export const IDEMPOTENCY_RETENTION_MS = 24 * 3_600_000
/** The largest answer kept for a repeat (as much as the largest body a request may send). */
export const IDEMPOTENT_ANSWER_MAX_BYTES = 1_048_576

export interface Outcome {
  readonly status: number
  /** A JSON value, or the text of a server-sent-events stream when `content_type` says so. */
  readonly body: unknown
  readonly content_type?: string
  /** Replaced by null in the stored record: secrets are shown once, never stored. */
  readonly secret_path?: ReadonlyArray<string>
  /** Headers of the answer: a 503's `retry-after`, or on a replay the `REPLAYED_HEADERS` the first answer carried. */
  readonly headers?: Readonly<Record<string, string>>
}

/**
 * JSON with keys sorted, so `{"a":1,"b":2}` and `{"b":2,"a":1}` are the same request. It
 * recurses: a body reaches it at most `BODY_DEPTH_MAX` levels deep (the JSON parser in app.ts
 * refuses deeper ones), and the other parts (method, route, path parameters) are flat.
 */
const canonical = (v: unknown): string => {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`
  if (v !== null && typeof v === "object") {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(",")}}`
  }
  return JSON.stringify(v) ?? "null"
}

const withoutSecret = (body: unknown, path: ReadonlyArray<string> | undefined): unknown => {
  if (path === undefined || path.length === 0 || body === null || typeof body !== "object") return body
  const [head, ...rest] = path
  const copy = { ...(body as Record<string, unknown>) }
  if (!(head! in copy)) return body
  copy[head!] = rest.length === 0 ? null : withoutSecret(copy[head!], rest)
  return copy
}

/** An answer from whatever `run` threw: an API refusal or an engine refusal. Defects rethrow. */
export const outcomeOfError = (e: unknown): Outcome => {
  if (e instanceof HttpError) return { status: e.status, body: e.body() }
  if (isEngineError(e)) return engineHttp(e)
  throw e
}

const send = (reply: FastifyReply, o: Outcome): FastifyReply => {
  reply.code(o.status)
  for (const [name, value] of Object.entries(o.headers ?? {})) reply.header(name, value)
  if (o.content_type !== undefined) reply.type(o.content_type)
  return reply.send(o.body)
}

/**
 * Runs a POST that moves money or creates something. Without `Idempotency-Key` it simply
 * runs. With one, scoped to the caller's account: a first request runs and its answer (status
 * and body, refusals included) is stored in the same SQLite transaction as the engine's
 * writes; a repeat with the same request answers the stored answer (header
 * `idempotent-replayed: true`) and does nothing; the same key with another request is 422
 * `idempotency_key_reused`. Requests refused before the handler (401, 400 schema, 429) are
 * not recorded, nor is a 5xx answer (503 `no_healthy_pod`: a repeat runs again).
 */
export const idempotent = (ctx: ApiContext, request: FastifyRequest, reply: FastifyReply, account: string, run: () => Outcome): FastifyReply => {
  const key = idempotencyKeyOf(request)
  // One unit of work either way: its writes commit together, and a replica that lost its
  // leader term writes nothing (src/ledger/store.ts).
  if (key === null) return send(reply, ctx.engine.sup.unitOfWork(() => runOrRefusal(run)))
  const outcome = ctx.engine.sup.unitOfWork((): Outcome & { replayed: boolean } => {
    const replay = storedAnswer(ctx, account, key)
    if (replay !== null) return replay
    const fresh = runOrRefusal(run)
    // A 5xx is an answer of this moment (no healthy pod yet, a fenced replica), not of the
    // request: the client retries with the same key and it runs again.
    if (fresh.status < 500) remember(ctx, account, key, fresh, reply)
    return { ...fresh, replayed: false }
  })
  return answer(reply, outcome)
}

/**
 * What `idempotentAsync` tells the work it runs: the payment an earlier request with the key
 * began and never answered (a crash came between), or null; and `began`, which records with
 * the key the payment this request begins. Call it in the unit of work that writes the
 * payment, so the two commit together.
 */
export interface AsyncAttempt {
  readonly resume: string | null
  readonly began: (payment: string) => void
}

const UNKEYED: AsyncAttempt = { resume: null, began: () => {} }

/**
 * The same rule for a POST whose work awaits the outside world (a payment provider): the
 * stored answer is looked up first, the work runs outside any transaction, and its answer is
 * stored when it comes. A repeat that arrives while the first is still running waits for it
 * and then answers what it stored, so two requests with one key never both run. An answer of
 * 5xx (the provider could not be reached) is not stored: the client retries with the same key.
 * The payment the work begins is recorded with the key before the provider is called (status
 * 0, no answer yet): a retry after a crash that lost the answer is handed that payment to
 * answer (`AsyncAttempt.resume`), so the key never pays twice.
 */
export const idempotentAsync = async (
  ctx: ApiContext,
  request: FastifyRequest,
  reply: FastifyReply,
  account: string,
  run: (attempt: AsyncAttempt) => Promise<Outcome>
): Promise<FastifyReply> => {
  const key = idempotencyKeyOf(request)
  if (key === null) return send(reply, await runOrRefusalAsync(() => run(UNKEYED)))
  const flights = inFlight(ctx)
  const flight = `${account}\u0000${key.raw}`
  // Wait until no request with this key runs. A failure that is not stored (5xx) wakes every
  // waiter; the first to get here runs again and the others wait for it, so two requests with
  // one key still never both run. (No await between this loop and `flights.set` below.)
  for (let running = flights.get(flight); running !== undefined; running = flights.get(flight)) await running
  const stored = ctx.engine.sup.unitOfWork(() => storedRecord(ctx, account, key))
  if (stored !== null && stored.status !== UNANSWERED) return answer(reply, replayOf(stored))
  const attempt: AsyncAttempt = {
    resume: stored?.payment ?? null,
    began: (payment) =>
      ctx.api.saveIdempotency({ account, key: key.raw, request_sha256: key.fingerprint, status: UNANSWERED, content_type: "application/json", body: "", created_at: ctx.engine.clock.now(), headers: null, payment })
  }
  const running = (async (): Promise<Outcome> => {
    const fresh = await runOrRefusalAsync(() => run(attempt))
    if (fresh.status < 500) ctx.engine.sup.unitOfWork(() => remember(ctx, account, key, fresh, reply))
    return fresh
  })()
  flights.set(flight, running.then(() => undefined, () => undefined))
  try {
    return answer(reply, { ...(await running), replayed: false })
  } finally {
    flights.delete(flight)
  }
}

interface IdempotencyKey {
  readonly raw: string
  /** SHA-256 of the request (method, route, params, body): the same key must mean the same request. */
  readonly fingerprint: string
}

const idempotencyKeyOf = (request: FastifyRequest): IdempotencyKey | null => {
  const raw = request.headers["idempotency-key"]
  if (raw === undefined) return null
  if (typeof raw !== "string" || !IDEMPOTENCY_KEY_RE.test(raw)) {
    throw new HttpError(400, "invalid_request", "Idempotency-Key must be 1 to 255 visible ASCII characters", "Idempotency-Key")
  }
  const fingerprint = sha256(canonical({ method: request.method, route: request.routeOptions.url, params: request.params ?? null, body: request.body ?? null })).toString("hex")
  return { raw, fingerprint }
}

/** The status of a record whose request began its work but has no answer yet (`idempotentAsync`). */
const UNANSWERED = 0

/** The stored answer to replay, or null to run; 422 when the key was used for another request. */
const storedAnswer = (ctx: ApiContext, account: string, key: IdempotencyKey): (Outcome & { replayed: boolean }) | null => {
  const stored = storedRecord(ctx, account, key)
  // Only a payment route leaves a record without an answer, and its key cannot match another route.
  assert(stored === null || stored.status !== UNANSWERED, () => `unanswered idempotency record ${key.raw} on a synchronous route`)
  return stored === null ? null : replayOf(stored)
}

/** The key's record within retention, or null; 422 when the key was used for another request. */
const storedRecord = (ctx: ApiContext, account: string, key: IdempotencyKey): IdempotencyRow | null => {
  const now = ctx.engine.clock.now()
  const stored = ctx.api.idempotency(account, key.raw)
  if (stored === undefined || stored.created_at + IDEMPOTENCY_RETENTION_MS <= now) return null
  if (stored.request_sha256 !== key.fingerprint) {
    throw new HttpError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request; use a new key")
  }
  return stored
}

const replayOf = (stored: IdempotencyRow): Outcome & { replayed: boolean } => {
  const body = stored.content_type === "application/json" ? (JSON.parse(stored.body) as unknown) : stored.body
  const headers = stored.headers === null ? {} : { headers: JSON.parse(stored.headers) as Record<string, string> }
  return { status: stored.status, body, content_type: stored.content_type, ...headers, replayed: true }
}

/** Headers a handler sets that belong to the answer, so a replay carries them too. */
const REPLAYED_HEADERS = ["x-ecolink-region"] as const

const remember = (ctx: ApiContext, account: string, key: IdempotencyKey, fresh: Outcome, reply: FastifyReply): void => {
  const now = ctx.engine.clock.now()
  ctx.api.purgeIdempotency(now - IDEMPOTENCY_RETENTION_MS)
  const content_type = fresh.content_type ?? "application/json"
  const text = content_type === "application/json" ? JSON.stringify(withoutSecret(fresh.body, fresh.secret_path)) : String(fresh.body)
  const set = REPLAYED_HEADERS.flatMap((h) => {
    const value = reply.getHeader(h)
    return value === undefined ? [] : [[h, String(value)] as const]
  })
  const headers = set.length === 0 ? null : JSON.stringify(Object.fromEntries(set))
  const bytes = Buffer.byteLength(text)
  if (bytes > IDEMPOTENT_ANSWER_MAX_BYTES) {
    // Kept whole, an answer this large (2,048 embeddings: megabytes) let one account fill the
    // disk at the rate limit for 24 hours (security review). The repeat is still never run
    // again; it is told what happened instead.
    const body = JSON.stringify({
      error: "idempotent_answer_too_large",
      message: `the first request with this Idempotency-Key was answered ${fresh.status} (and billed if it was a /v1 request), but its answer of ${bytes} bytes is too large to keep for a repeat; it was not run again: use a new key to ask again`
    })
    ctx.api.saveIdempotency({ account, key: key.raw, request_sha256: key.fingerprint, status: 409, content_type: "application/json", body, created_at: now, headers: null, payment: null })
    return
  }
  ctx.api.saveIdempotency({ account, key: key.raw, request_sha256: key.fingerprint, status: fresh.status, content_type, body: text, created_at: now, headers, payment: null })
}

const answer = (reply: FastifyReply, outcome: Outcome & { replayed: boolean }): FastifyReply => {
  if (outcome.replayed) reply.header("idempotent-replayed", "true")
  return send(reply, outcome)
}

/** Requests with an Idempotency-Key still running, by account and key, per app. */
const flightsByContext = new WeakMap<ApiContext, Map<string, Promise<void>>>()
const inFlight = (ctx: ApiContext): Map<string, Promise<void>> => {
  let m = flightsByContext.get(ctx)
  if (m === undefined) flightsByContext.set(ctx, (m = new Map()))
  return m
}

const runOrRefusalAsync = async (run: () => Promise<Outcome>): Promise<Outcome> => {
  try {
    return await run()
  } catch (e) {
    return outcomeOfError(e)
  }
}

const runOrRefusal = (run: () => Outcome): Outcome => {
  try {
    return run()
  } catch (e) {
    return outcomeOfError(e)
  }
}

export type { ErrorBody }
