/**
 * `buildApp(options)`: the HTTP API over the engine (issue 4). One Fastify plugin per area
 * (accounts/teams/keys, GPU instances and clusters, inference and models, storage, billing,
 * notifications, `/v1`, operator); around them, the edge rules every route shares:
 *
 * - `x-ecolink-request-id` on every answer (errors and 401s included), from a counter behind
 *   a random per-process prefix; pino logs carry it as `request_id`.
 * - Who is calling (auth.ts) is decided in `onRequest`; a route's `config.auth` says what it
 *   needs, enforced in `preParsing` (so an unauthenticated body is never parsed): 401
 *   `{"error":"unauthorized"}`, 403 `forbidden` for an owner-only route.
 * - Rate limits per account (@fastify/rate-limit, counted on the engine clock), by client
 *   address for requests without a valid key and on public routes: 429 `rate_limited` with
 *   `retry-after`.
 * - Every body is JSON, at most `BODY_LIMIT_BYTES` and `BODY_DEPTH_MAX` levels deep (checked
 *   on the text before parsing), validated by the route's schema with no coercion and no
 *   silent stripping: an unknown field is a 400 naming it, also on a route that takes no body.
 * - One error handler: engine refusals through `errorStatus`, Fastify's errors by code, 404
 *   JSON for unknown routes; a defect is a logged 500 and calls `onDefect`.
 * - OpenAPI 3.1 at `GET /openapi.json`, Swagger UI at `/docs`.
 *
 * The API holds no business rule: the routes decode, call the supervisor, and encode.
 */
import { STATUS_CODES } from "node:http"
import type { Socket } from "node:net"
import fastifyRateLimit from "@fastify/rate-limit"
import fastifySwagger from "@fastify/swagger"
import fastifySwaggerUi from "@fastify/swagger-ui"
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from "fastify"
import { assert, NotLeader } from "../errors.js"
import * as policy from "../policy.js"
import { Authenticator } from "./auth.js"
import type { Engine } from "./engine.js"
import { engineHttp, fastifyHttp, HttpError, INTERNAL_ERROR, isEngineError, UNAUTHORIZED_MESSAGE as UNAUTHORIZED, type ErrorBody } from "./errors.js"
import type { ApiContext } from "./http.js"
import { base32, cryptoSecrets, type SecretsPort } from "./secrets.js"
import { ApiStore } from "./store.js"
import { addressKey, clockRateLimitStore } from "./rateLimit.js"
import { ErrorSchema } from "./views.js"
import { accountRoutes } from "./routes/accounts.js"
import { billingRoutes } from "./routes/billing.js"
import { gpuRoutes } from "./routes/gpu.js"
import { inferenceRoutes } from "./routes/inference.js"
import { notificationRoutes } from "./routes/notifications.js"
import { operatorRoutes } from "./routes/operator.js"
import { paymentRoutes } from "./routes/payments.js"
import { storageRoutes } from "./routes/storage.js"
import { v1Routes } from "./routes/v1.js"

export interface RateLimitOptions {
  /** Requests per window per API key (or per client address without one). */
  readonly max: number
  readonly window_ms: number
}

export interface AppOptions {
  readonly engine: Engine
  /** Randomness for key secrets, invite secrets, ids and the request-id prefix. Default: the OS CSPRNG. */
  readonly secrets?: SecretsPort
  /** The operator's key (any string of at least 32 characters); null: no operator routes answer. */
  readonly operatorKey?: string | null
  /** Fastify's logger: false (tests), true, or pino options. */
  readonly logger?: FastifyServerOptions["logger"]
  /** A pino logger to log requests to instead (`npm start`: the process's one logger); wins over `logger`. */
  readonly loggerInstance?: FastifyBaseLogger
  /** false turns rate limiting off (benchmarks). Default: 600 requests a minute per account. */
  readonly rateLimit?: RateLimitOptions | false
  /** Bytes of `/v1` answers an account may leave unread (default `UNDELIVERED_ANSWER_BYTES_MAX`; tests use less). */
  readonly undeliveredAnswerBytesMax?: number
  /** Bytes of `/v1` answers all accounts together may leave unread (default `UNDELIVERED_ANSWER_BYTES_TOTAL_MAX`; tests use less). */
  readonly undeliveredAnswerBytesTotalMax?: number
  /**
   * Whose `X-Forwarded-For` names the client (Fastify's `trustProxy`): proxy hops, or the
   * proxies' addresses and CIDR ranges. Default: nobody's, the connection's address counts.
   */
  readonly trustProxy?: number | ReadonlyArray<string>
  /** Base of invite links, or a function answering it (known only once listening). Default `http://localhost`. */
  readonly publicUrl?: string | (() => string)
  /** Swagger UI at /docs (OpenAPI JSON is always served). Default true. */
  readonly docs?: boolean
  /**
   * The Stripe webhook signing secret (`whsec_…`). With it, and an engine that has a payment
   * provider, the payment routes are served (top-ups, auto-recharge, /webhooks/stripe).
   */
  readonly stripeWebhookSecret?: string
  /** Called with a defect (a bug, a broken invariant) after its 500 is sent. */
  readonly onDefect?: (error: unknown) => void
  /**
   * Why this replica should get no traffic now, beyond what the app sees itself (a fenced
   * supervisor, a closed database): the Kubernetes world answers `not_leading` once its lease
   * is lost. null: ready. `GET /readyz` asks it.
   */
  readonly notReady?: () => string | null
}

/** Fastify's logger option with the redacting request serializer (`REQUEST_LOG_SERIALIZERS`). */
const loggerOptions = (logger: NonNullable<FastifyServerOptions["logger"]>): FastifyServerOptions["logger"] => {
  if (logger === false) return false
  const given = logger === true ? {} : logger
  return { ...given, serializers: { ...(given.serializers ?? {}), ...REQUEST_LOG_SERIALIZERS } }
}

/**
 * Fastify's `trustProxy` for a number of hops (proxy-addr's trust function: the first `hops`
 * addresses from the socket back are proxies; what a runtime integer does, which Fastify's
 * types do not list) or a list of proxy addresses and CIDR ranges.
 */
const trustProxyOption = (trust: number | ReadonlyArray<string>): string[] | ((address: string, hop: number) => boolean) =>
  typeof trust === "number" ? (_address, hop) => hop < trust : [...trust]

/** The route config of a health probe: public, answered when fenced, not rate limited. */
export const PROBE_CONFIG = { auth: "public", probe: true, rateLimit: false } as const
const HEALTH_SCHEMA = { type: "object", additionalProperties: false, required: ["status"], properties: { status: { type: "string", enum: ["ok"] } } }
const READY_SCHEMA = { type: "object", additionalProperties: false, required: ["status"], properties: { status: { type: "string", enum: ["ready"] } } }
const NOT_READY_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["error", "reason", "message"],
  properties: { error: { type: "string", enum: ["not_ready"] }, reason: { type: "string" }, message: { type: "string" } }
}
/** Why a replica is not ready, for `GET /readyz`'s 503. */
const NOT_READY_MESSAGES: Readonly<Record<string, string>> = {
  standby: "this replica is on standby: another replica holds the leader lease",
  not_leading: "this replica lost the leader lease",
  fenced: "this replica was fenced: another replica leads",
  database_closed: "this replica's database is closed"
}
export const notReadyBody = (reason: string) => ({ error: "not_ready", reason, message: NOT_READY_MESSAGES[reason] ?? reason })

/** The charset parameter of a Content-Type header. */
const CHARSET_RE = /;\s*charset\s*=\s*"?([^";\s]+)/i

export const RATE_LIMIT_DEFAULT: RateLimitOptions = { max: 600, window_ms: 60_000 }
/** Largest request body: 1 MiB. */
export const BODY_LIMIT_BYTES = 1_048_576
/**
 * Deepest nesting of objects and arrays a JSON body may have (`{}` is 1, `{"a":[1]}` is 2).
 * The API's deepest schema needs 5 (a chat message's content parts); 64 leaves room for what
 * OpenAI clients send in fields we ignore. A body of 1 MiB could nest half a million deep,
 * and everything that walks a body by recursion (the Idempotency-Key fingerprint, schema
 * validation) would overflow the stack on it: a 500, and a process that stops on a defect.
 */
export const BODY_DEPTH_MAX = 64
export const OPERATOR_KEY_LENGTH_MIN = 32
/**
 * The longest a client may take to send one whole request, headers and body (Node's
 * `server.requestTimeout`; Fastify's default is none): a client that trickles bytes is
 * answered 408 and its connection closed, instead of holding it open for ever. A request is
 * at most `BODY_LIMIT_BYTES`; 30 s is a slow link's time for it many times over. Node checks
 * it every 30 s (`connectionsCheckingInterval`), so a trickle is cut within a minute.
 */
export const REQUEST_TIMEOUT_MS = 30_000
/**
 * A connection silent this long is closed, even while its request runs (Node's socket
 * timeout, Fastify's `connectionTimeout`; its default is none). Receiving a request is bound
 * by `REQUEST_TIMEOUT_MS` and an idle keep-alive connection by `KEEP_ALIVE_TIMEOUT_MS`; this
 * bounds the wait for an answer. Above the longest a route awaits: a top-up awaits Stripe,
 * whose client gives up on a call at 80 s and tries 3 times (`max_network_retries` 2).
 */
export const CONNECTION_TIMEOUT_MS = 300_000
/**
 * An idle keep-alive connection is closed after this (Fastify's default, named). Above the
 * 60 s idle timeout of common load balancers, so the balancer closes an idle connection first,
 * never the server under a request the balancer just sent on it.
 */
export const KEEP_ALIVE_TIMEOUT_MS = 72_000
/**
 * Bytes of `/v1` answers an account's clients may leave unread (written, not taken off the
 * connection) before its next `/v1` request is refused 429 `answers_undelivered`. A client
 * that never reads kept each answer in the server's memory until the connection timed out:
 * 2,048 embeddings answer about 11 MB for a micro-dollar, and ten unread took the process to
 * 575 MB (abuse review). One account holds at most this plus one answer.
 */
export const UNDELIVERED_ANSWER_BYTES_MAX = 64 * 1_048_576
/**
 * Bytes of `/v1` answers all accounts' clients together may leave unread before any `/v1`
 * request is refused 503 `server_busy`: the bound per account alone let a hundred accounts hold
 * 6 GiB. The process holds at most this plus one answer per `/v1` request in flight.
 */
export const UNDELIVERED_ANSWER_BYTES_TOTAL_MAX = 512 * 1_048_576

/** The body sent to a route that takes none: nothing for `{}`, else the 400 a schema would give. */
const refuseBody = (body: unknown): void => {
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new HttpError(400, "invalid_request", "body must be object", "body")
  const field = Object.keys(body)[0]
  if (field !== undefined) throw new HttpError(400, "invalid_request", `unknown field ${field}`, field)
}

const QUOTE = 0x22
const BACKSLASH = 0x5c
const OPEN_BRACE = 0x7b
const CLOSE_BRACE = 0x7d
const OPEN_BRACKET = 0x5b
const CLOSE_BRACKET = 0x5d

/**
 * True when the JSON text nests objects and arrays more than `max` deep (`{}` and `[]` are 1),
 * read on the text before it is parsed: one loop, no recursion, so a hostile body reaches
 * neither `JSON.parse` (whose own limit would answer it as invalid JSON) nor anything that
 * walks the parsed value by recursion. Brackets inside strings do not count.
 */
export const nestedDeeperThan = (json: string, max: number): boolean => {
  let depth = 0
  let inString = false
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i)
    if (inString) {
      if (c === BACKSLASH) i++
      else if (c === QUOTE) inString = false
    } else if (c === QUOTE) inString = true
    else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > max) return true
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) depth--
  }
  return false
}

/** What stands in a logged URL for a secret. */
export const REDACTED = "[redacted]"
/** A query parameter whose name says it carries a secret (`?api-key=`, `?token=`, …). */
const SECRET_PARAM_RE = /key|secret|token|passw|auth|signature|credential/i
/**
 * Secrets recognisable by their shape wherever they appear: our API and operator keys, Stripe's.
 * No word boundary before them: a percent-encoded space (`Bearer%20eco_…`) ends in a digit.
 */
const SECRET_SHAPES: ReadonlyArray<[RegExp, string]> = [
  [/(eco_[a-z2-7]{12}_)[A-Za-z0-9_-]+/g, `$1${REDACTED}`],
  [/ecoop_[A-Za-z0-9_-]+/g, `ecoop_${REDACTED}`],
  [/((?:sk|rk)_(?:test|live)_|whsec_)[A-Za-z0-9]+/g, `$1${REDACTED}`]
]

/**
 * A request URL as it may be logged: an invite token's secret (`/invites/<id>.<secret>/accept`,
 * the one route with a secret in its path), the value of a query parameter named like a
 * secret, and anything shaped like a key are replaced by `[redacted]`. The invite id stays, so
 * a log still says which invite was used.
 */
export const redactUrl = (url: string): string => {
  const q = url.indexOf("?")
  let path = q === -1 ? url : url.slice(0, q)
  // Only a literal dot splits the id from the secret; anything else is redacted whole.
  path = path.replace(/^(\/invites\/)([^/]*)/, (_, head: string, token: string) => {
    const dot = token.indexOf(".")
    return `${head}${dot > 0 ? `${token.slice(0, dot)}.` : ""}${REDACTED}`
  })
  let query = q === -1 ? "" : url.slice(q)
  if (query.length > 1) {
    query = `?${query
      .slice(1)
      .split("&")
      .map((pair) => {
        const eq = pair.indexOf("=")
        if (eq === -1) return pair
        let name = pair.slice(0, eq)
        try {
          name = decodeURIComponent(name)
        } catch {
          // A malformed escape: matched as it is.
        }
        return SECRET_PARAM_RE.test(name) ? `${pair.slice(0, eq)}=${REDACTED}` : pair
      })
      .join("&")}`
  }
  let redacted = path + query
  for (const [re, replacement] of SECRET_SHAPES) redacted = redacted.replace(re, replacement)
  return redacted
}

/** Status, code and message of a request Node's HTTP parser refused (`clientErrorHandler`). */
const clientErrorAnswer = (code: string | undefined): readonly [number, string, string] =>
  code === "ERR_HTTP_REQUEST_TIMEOUT"
    ? [408, "request_timeout", `the request took longer than ${REQUEST_TIMEOUT_MS / 1000} s to arrive`]
    : code === "HPE_HEADER_OVERFLOW"
    ? [431, "headers_too_large", "the request's headers are larger than the API accepts"]
    : [400, "malformed_request", "the request is not valid HTTP"]

/**
 * pino serializers for the request log: Fastify's own `req` fields, with the URL redacted
 * (`redactUrl`). `npm start`'s logger carries them (serverLogger), and `buildApp` adds them to
 * whatever logger it is given, so no request log line holds a secret from a path or a query.
 */
export const REQUEST_LOG_SERIALIZERS = {
  req: (request: FastifyRequest) => ({
    method: request.method,
    url: redactUrl(request.url),
    host: request.host,
    remoteAddress: request.ip,
    remotePort: request.socket?.remotePort
  })
}

export const buildApp = async (options: AppOptions): Promise<FastifyInstance> => {
  const secrets = options.secrets ?? cryptoSecrets
  const operatorKey = options.operatorKey ?? null
  if (operatorKey !== null && operatorKey.length < OPERATOR_KEY_LENGTH_MIN) {
    throw new Error(`the operator key must be at least ${OPERATOR_KEY_LENGTH_MIN} characters`)
  }
  const api = new ApiStore(options.engine.ledger.db)
  const ctx: ApiContext = {
    engine: options.engine,
    api,
    secrets,
    auth: new Authenticator(api, operatorKey),
    public_url: () => {
      const base = options.publicUrl ?? "http://localhost"
      return (typeof base === "string" ? base : base()).replace(/\/+$/, "")
    }
  }
  const requestPrefix = `req_${base32(secrets, 8)}_`
  let requests = 0

  const app = Fastify({
    ...(options.loggerInstance !== undefined
      ? { loggerInstance: options.loggerInstance.child({}, { serializers: REQUEST_LOG_SERIALIZERS }) }
      : { logger: loggerOptions(options.logger ?? false) }),
    ...(options.trustProxy === undefined ? {} : { trustProxy: trustProxyOption(options.trustProxy) }),
    genReqId: () => `${requestPrefix}${++requests}`,
    requestIdHeader: false,
    logController: new LogController({ requestIdLogLabel: "request_id" }),
    bodyLimit: BODY_LIMIT_BYTES,
    requestTimeout: REQUEST_TIMEOUT_MS,
    connectionTimeout: CONNECTION_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false, allowUnionTypes: true } },
    // Requests Node's HTTP parser refuses before Fastify sees them (a header block over Node's
    // limit, a malformed request line, a request slower than requestTimeout) get the API's one
    // error shape and a request id too, written on the socket, which then closes.
    clientErrorHandler: (error, socket) => {
      if ((error as NodeJS.ErrnoException).code === "ECONNRESET" || socket.destroyed) return
      const [status, code, message] = clientErrorAnswer((error as NodeJS.ErrnoException).code)
      const body = JSON.stringify({ error: code, message })
      if (socket.writable) {
        socket.write(
          `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json; charset=utf-8\r\n` +
            `x-ecolink-request-id: ${requestPrefix}${++requests}\r\nConnection: close\r\n\r\n${body}`
        )
      }
      socket.destroy(error)
    },
    frameworkErrors: (error, request, reply) => {
      reply.header("x-ecolink-request-id", request.id)
      const mapped = fastifyHttp(error) ?? { status: 400, body: { error: "invalid_url", message: "the URL is not valid" } }
      void (reply as FastifyReply).code(mapped.status).send(mapped.body)
    }
  })
  // Fastify sets requestTimeout after making the server, so Node's default for the headers
  // (the smaller of 60 s and requestTimeout) did not see it: the headers get the same bound.
  app.server.headersTimeout = REQUEST_TIMEOUT_MS
  app.decorateRequest("auth", null)
  // Bodies are JSON only; a text/plain body is 415, not a string handed to a route.
  app.removeContentTypeParser("text/plain")
  // The depth bound, then Fastify's own JSON parser (prototype poisoning refused), before any
  // hook, schema or route sees the body.
  const parseJson = app.getDefaultJsonParser("error", "error")
  app.removeContentTypeParser("application/json")
  app.addContentTypeParser("application/json", { parseAs: "string" }, (request, text, done) => {
    if (nestedDeeperThan(text as string, BODY_DEPTH_MAX)) {
      done(new HttpError(400, "invalid_request", `the body nests objects and arrays more than ${BODY_DEPTH_MAX} deep`, "body"), undefined)
      return
    }
    parseJson(request, text as string, done)
  })
  app.addSchema(ErrorSchema)

  app.addHook("onRequest", async (request, reply) => {
    reply.header("x-ecolink-request-id", request.id)
    // A probe answers for the replica whatever its state: that is its purpose.
    if (request.routeOptions.config.probe === true) return
    // A replica that lost its lease answers as a standby does until its app has closed
    // (`retry-after` comes with the 503, from `engineHttp`).
    if (ctx.engine.sup.fenced) throw new NotLeader()
    // A request that may write while the engine's own units wait for the database (another
    // connection held its write lock): once the lock is free they run first, before anything
    // of the request reads what they change (SupervisorApi.catchUp). Reads answer from memory
    // as it stands, and never write.
    if (request.method !== "GET" && request.method !== "HEAD") ctx.engine.sup.catchUp()
    request.auth = ctx.auth.identify(request.headers.authorization)
  })
  app.addHook("preParsing", async (request) => {
    const config = request.routeOptions.config
    if (config.auth === "account" && request.auth?.kind !== "key") throw new HttpError(401, "unauthorized", UNAUTHORIZED)
    if (config.auth === "operator" && request.auth?.kind !== "operator") throw new HttpError(401, "unauthorized", UNAUTHORIZED)
    if (config.role === "owner" && (request.auth?.kind !== "key" || request.auth.role !== "owner")) {
      throw new HttpError(403, "forbidden", "only the account's owner may do this")
    }
    // Bodies are read as UTF-8 (JSON's encoding, RFC 8259); another charset would be misread.
    const charset = CHARSET_RE.exec(request.headers["content-type"] ?? "")?.[1]?.toLowerCase()
    if (charset !== undefined && charset !== "utf-8" && charset !== "utf8") throw new HttpError(415, "unsupported_media_type", "send the body as application/json in UTF-8")
  })

  // A route without a body schema takes no body, and refuses one as the others refuse an
  // unknown field: `{}` is no body, a field is a 400 naming it, anything but an object is a
  // 400 too. (Fastify parses a body on every POST and DELETE; without a schema nothing
  // looked at it, so `{"x": 1}` on POST /notifications/read-all was a 200.) Unknown routes
  // stay 404.
  // Attached to those routes only (not a global hook): a GET has no body, and an async hook on
  // every request cost the read route some 5% of its throughput (BENCHMARKS.md).
  const noBody = async (request: FastifyRequest): Promise<void> => {
    if (request.body !== undefined) refuseBody(request.body)
  }
  app.addHook("onRoute", (route) => {
    const methods = [route.method].flat()
    if (route.schema?.body !== undefined || methods.every((m) => m === "GET" || m === "HEAD")) return
    route.preValidation = [...[route.preValidation ?? []].flat(), noBody]
  })

  // `/v1` answers written and not yet read, per account (`UNDELIVERED_ANSWER_BYTES_MAX`):
  // attached to the `/v1` POST routes only, whose answers can be megabytes (2,048 embeddings).
  // Read just before the handler, once the body is in: from there to the answer's count in
  // onSend nothing waits (the handlers are synchronous), so no other request reads it between.
  // Read when the headers came (onRequest), it let every request whose body was still on the
  // way pass: five connections that sent their headers first left five answers unread.
  // The process's total too (`UNDELIVERED_ANSWER_BYTES_TOTAL_MAX`): the account's own bound
  // is checked first, so an account over its own is told so (429), and the others are told the
  // server is busy (503), which is not theirs to fix.
  const undelivered = new Map<string, number>()
  let undeliveredTotal = 0
  const accountBytesMax = options.undeliveredAnswerBytesMax ?? UNDELIVERED_ANSWER_BYTES_MAX
  const totalBytesMax = options.undeliveredAnswerBytesTotalMax ?? UNDELIVERED_ANSWER_BYTES_TOTAL_MAX
  /** Whether the present spell over the process's bound was logged (set back once under it). */
  let overTotalLogged = false
  const refuseIfUndelivered = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (request.auth?.kind !== "key") return
    const bytes = undelivered.get(request.auth.account) ?? 0
    if (bytes > accountBytesMax) {
      // SPEC §6: a 429 says when to ask again.
      reply.header("retry-after", String(policy.ANSWERS_UNDELIVERED_RETRY_AFTER_S))
      throw new HttpError(429, "answers_undelivered", `this account's clients have not read ${bytes} bytes of /v1 answers yet; read them, or close those connections, before asking for more`)
    }
    if (undeliveredTotal > totalBytesMax) {
      // The operator's concern, not the caller's: how much, and whose, is not the caller's to know.
      // Logged once per spell over the bound, not once per refused request.
      if (!overTotalLogged) request.log.warn({ undelivered_bytes: undeliveredTotal, accounts: undelivered.size }, "unread /v1 answers over the process's bound: /v1 refused 503 server_busy until they are read")
      overTotalLogged = true
      reply.header("retry-after", String(policy.SERVER_BUSY_RETRY_AFTER_S))
      throw new HttpError(503, "server_busy", `the server holds too many /v1 answers its clients have not read yet; retry after ${policy.SERVER_BUSY_RETRY_AFTER_S} s`)
    }
  }
  // The counted answers of each connection not yet out, taken off when the connection closes:
  // Node queues the answers of requests pipelined behind one not yet written, and never closes
  // them when the connection goes (their bytes stayed counted for good). One listener per
  // connection, however many answers wait on it.
  const waitingOn = new WeakMap<Socket, Set<() => void>>()
  const countUndelivered = async (request: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown> => {
    const bytes = typeof payload === "string" ? Buffer.byteLength(payload) : Buffer.isBuffer(payload) ? payload.length : 0
    const socket: Socket | undefined = request.raw.socket ?? undefined
    // A connection already gone has emitted its close: the bytes would never come off. (The
    // refusal of a body cut short is sent after the hang-up; 43 bytes stayed per hang-up.)
    if (request.auth?.kind !== "key" || bytes === 0 || reply.raw.destroyed || socket?.destroyed === true) return payload
    const account = request.auth.account
    undelivered.set(account, (undelivered.get(account) ?? 0) + bytes)
    undeliveredTotal += bytes
    let waiting = socket === undefined ? undefined : waitingOn.get(socket)
    if (socket !== undefined && waiting === undefined) {
      const answers = new Set<() => void>()
      waitingOn.set(socket, answers)
      socket.once("close", () => {
        for (const out of answers) out()
      })
      waiting = answers
    }
    // Once: when the answer is out (written whole to the connection) or the connection is gone.
    const out = (): void => {
      if (waiting?.delete(out) === false) return
      const left = (undelivered.get(account) ?? 0) - bytes
      assert(left >= 0 && undeliveredTotal >= bytes, () => `unread /v1 answers: ${bytes} bytes taken off ${account}'s ${left + bytes} and the process's ${undeliveredTotal}`)
      if (left > 0) undelivered.set(account, left)
      else undelivered.delete(account)
      undeliveredTotal -= bytes
      if (undeliveredTotal <= totalBytesMax) overTotalLogged = false
    }
    waiting?.add(out)
    reply.raw.once("close", out)
    return payload
  }
  app.addHook("onRoute", (route) => {
    if (!route.url.startsWith("/v1/") || ![route.method].flat().includes("POST")) return
    route.preHandler = [...[route.preHandler ?? []].flat(), refuseIfUndelivered]
    route.onSend = [...[route.onSend ?? []].flat(), countUndelivered]
  })

  app.setErrorHandler((error, request, reply) => {
    let status: number
    let body: ErrorBody
    let headers: Readonly<Record<string, string>> | undefined
    if (error instanceof HttpError) ({ status, body } = { status: error.status, body: error.body() })
    else if (isEngineError(error)) ({ status, body, headers } = engineHttp(error))
    else {
      const mapped = fastifyHttp(error as FastifyError)
      if (mapped !== null) ({ status, body } = mapped)
      else {
        request.log.error({ err: error }, "defect")
        void reply.code(500).send(INTERNAL_ERROR)
        options.onDefect?.(error)
        return
      }
    }
    for (const [name, value] of Object.entries(headers ?? {})) reply.header(name, value)
    void reply.code(status).send(body)
  })
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ error: "route_not_found", message: `no route ${request.method} ${request.url.split("?")[0]}` })
  })

  await app.register(fastifySwagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "EcoLink control plane",
        version: "1.0.0",
        description: "GPU instances and clusters, inference, storage, billing, notifications, teams and the OpenAI-compatible /v1 API. Errors: {\"error\": code, \"message\": text}."
      },
      components: {
        securitySchemes: {
          apiKey: { type: "http", scheme: "bearer", description: "an account API key, eco_…" },
          operatorKey: { type: "http", scheme: "bearer", description: "the operator's key" }
        }
      }
    }
  })
  if (options.docs !== false) await app.register(fastifySwaggerUi, { routePrefix: "/docs" })

  const rateLimit = options.rateLimit ?? RATE_LIMIT_DEFAULT
  if (rateLimit !== false) {
    await app.register(fastifyRateLimit, {
      global: true,
      max: rateLimit.max,
      timeWindow: rateLimit.window_ms,
      hook: "onRequest",
      store: clockRateLimitStore(options.engine.clock),
      // Per account, not per key: an account may hold up to KEYS_PER_ACCOUNT_MAX keys, and
      // each one its own budget would multiply the limit by a thousand. A public route uses no
      // key and is counted by address whatever it carries: counted against the key's account,
      // each sign-up's new key paid for more sign-ups, and one address made accounts unbounded.
      // The owner taking access away (a key, a member) has a budget of its own: a member who
      // used up the account's could otherwise keep the owner from removing them.
      keyGenerator: (request) =>
        request.routeOptions.config.auth === "public" ? addressKey(request.ip)
        : request.auth?.kind === "key" && request.auth.role === "owner" && request.routeOptions.config.lockout === true ? `owner:${request.auth.account}`
        : request.auth?.kind === "key" ? `account:${request.auth.account}`
        : request.auth?.kind === "operator" ? "operator"
        : addressKey(request.ip),
      errorResponseBuilder: (_request, context) =>
        new HttpError(429, "rate_limited", `more than ${context.max} requests in ${rateLimit.window_ms / 1000} s; retry after ${Math.ceil(context.ttl / 1000)} s`)
    })
  }

  // Health probes, after the rate limiter so their `rateLimit: false` counts: a kubelet or a
  // load balancer probing every few seconds must never be refused 429, nor use a client's
  // budget. Unauthenticated, and logged only at warn (a probe every 10 s is noise at info).
  // Operations' routes, not the customer API: left out of the OpenAPI document (docs/API.md has them).
  const notReady = (): string | null => {
    if (ctx.engine.sup.fenced) return "fenced"
    if (!ctx.engine.ledger.db.open) return "database_closed"
    return options.notReady?.() ?? null
  }
  app.get(
    "/healthz",
    { schema: { hide: true, response: { 200: HEALTH_SCHEMA } }, config: PROBE_CONFIG, logLevel: "warn" },
    async () => ({ status: "ok" })
  )
  app.get(
    "/readyz",
    {
      schema: { hide: true, response: { 200: READY_SCHEMA, 503: NOT_READY_SCHEMA } },
      config: PROBE_CONFIG,
      logLevel: "warn"
    },
    async (_request, reply) => {
      const reason = notReady()
      if (reason === null) return { status: "ready" }
      return reply.code(503).send(notReadyBody(reason))
    }
  )

  app.get(
    "/openapi.json",
    { schema: { hide: true, response: { 200: { type: "object", additionalProperties: true } } }, config: { auth: "public" } },
    async () => app.swagger()
  )

  await app.register(async (scope) => accountRoutes(scope, ctx))
  await app.register(async (scope) => gpuRoutes(scope, ctx))
  await app.register(async (scope) => inferenceRoutes(scope, ctx))
  await app.register(async (scope) => storageRoutes(scope, ctx))
  await app.register(async (scope) => billingRoutes(scope, ctx))
  await app.register(async (scope) => notificationRoutes(scope, ctx))
  await app.register(async (scope) => v1Routes(scope, ctx))
  await app.register(async (scope) => operatorRoutes(scope, ctx))
  const book = options.engine.sup.payments
  if (book !== null && options.stripeWebhookSecret !== undefined) {
    const secret = options.stripeWebhookSecret
    await app.register(async (scope) => paymentRoutes(scope, ctx, book, secret))
  }
  await app.ready()
  return app
}
