/**
 * The API's one error shape, `{"error": code, "message": text}` (plus `field` on a 400 that
 * names one), and the one mapping from everything that can go wrong to it: the engine's tagged
 * errors through `errorStatus`, Fastify's own errors (validation, content type, body size, bad
 * URLs), and the API's refusals (401, 403, 404, 409, 422, 429). A defect is a 500
 * `internal_error` and is logged; no input may cause one.
 */
import type { FastifyError } from "fastify"
import { errorStatus, isEngineError, Refusal, type EngineError } from "../errors.js"
import * as policy from "../policy.js"

export interface ErrorBody {
  readonly error: string
  readonly message: string
  readonly field?: string
}

/** A refusal the API itself decides: it carries its status, code and message. */
export class HttpError extends Refusal {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string
  ) {
    super(message)
    this.name = "HttpError"
  }

  body(): ErrorBody {
    return this.field === undefined ? { error: this.code, message: this.message } : { error: this.code, message: this.message, field: this.field }
  }
}

export const UNAUTHORIZED_MESSAGE = "missing, malformed, revoked or unknown API key: send Authorization: Bearer eco_…"


export { isEngineError }

/**
 * An engine refusal as an answer: `errorStatus` decides status and code, once. A 503 says
 * when to retry (`retry-after`, seconds, from policy): the refusal is of this moment.
 */
export const engineHttp = (e: EngineError): { readonly status: number; readonly body: ErrorBody; readonly headers?: Readonly<Record<string, string>> } => {
  const mapped = errorStatus(e)
  const body: ErrorBody = e._tag === "ValidationError" ? { error: mapped.error, message: mapped.message, field: e.field } : { error: mapped.error, message: mapped.message }
  const retryAfter =
    e._tag === "NotLeader" ? policy.NOT_LEADER_RETRY_AFTER_S
    : e._tag === "NoHealthyPod" ? policy.NO_HEALTHY_POD_RETRY_AFTER_S
    : e._tag === "DatabaseBusy" ? policy.DATABASE_BUSY_RETRY_AFTER_S
    : null
  return retryAfter === null ? { status: mapped.status, body } : { status: mapped.status, body, headers: { "retry-after": String(retryAfter) } }
}

interface AjvError {
  readonly instancePath?: string
  readonly keyword?: string
  readonly message?: string
  readonly params?: Record<string, unknown>
}

/** `/messages/0/content` → `messages.0.content`; the missing or unknown property when ajv names one. */
const fieldOf = (context: string | undefined, e: AjvError): string => {
  const path = (e.instancePath ?? "").split("/").filter((p) => p.length > 0).map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"))
  const named = e.params?.["missingProperty"] ?? e.params?.["additionalProperty"]
  if (typeof named === "string") path.push(named)
  if (path.length > 0) return path.join(".")
  return context === "querystring" ? "query" : context ?? "body"
}

const messageOf = (field: string, e: AjvError): string => {
  if (e.keyword === "additionalProperties") return `unknown field ${field}`
  if (e.keyword === "required") return `${field} is required`
  return `${field} ${e.message ?? "is invalid"}`
}

/** Fastify's errors, by code, as answers. Anything unknown with a 4xx status is a plain 400-class refusal. */
export const fastifyHttp = (error: FastifyError & { validation?: ReadonlyArray<AjvError>; validationContext?: string }): { status: number; body: ErrorBody } | null => {
  if (error.validation !== undefined && error.validation.length > 0) {
    const first = error.validation[0]!
    const field = fieldOf(error.validationContext, first)
    return { status: 400, body: { error: "invalid_request", message: messageOf(field, first), field } }
  }
  switch (error.code) {
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return { status: 400, body: { error: "invalid_json", message: "the body is not valid JSON", field: "body" } }
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return { status: 415, body: { error: "unsupported_media_type", message: "send the body as application/json" } }
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return { status: 413, body: { error: "payload_too_large", message: "the body is larger than the API accepts" } }
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return { status: 400, body: { error: "invalid_content_length", message: "content-length does not match the body" } }
    case "FST_ERR_BAD_URL":
    case "FST_ERR_MAX_PARAM_LENGTH":
      return { status: 400, body: { error: "invalid_url", message: "the URL is not valid" } }
  }
  // secure-json-parse refuses `__proto__` and `constructor.prototype` keys with a SyntaxError.
  if (error instanceof SyntaxError || error.name === "SyntaxError") {
    return { status: 400, body: { error: "invalid_json", message: "the body is not valid JSON", field: "body" } }
  }
  const status = error.statusCode
  if (typeof status === "number" && status >= 400 && status < 500) {
    return { status, body: { error: "bad_request", message: error.message } }
  }
  return null
}

export const INTERNAL_ERROR: ErrorBody = { error: "internal_error", message: "an internal error occurred; it was logged with this request's id" }
