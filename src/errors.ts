/**
 * The engine's expected failures: typed, tagged, and mapped to an HTTP status and a
 * stable error code in exactly one place (`errorStatus`). Bugs are not here: a broken
 * invariant throws an `InvariantViolation` defect and stops the process loudly.
 */
import { Data } from "effect"
import { formatDollars } from "./money.js"

/** "$3.20", "-$19.20". */
const dollarsText = (micros: bigint): string => (micros < 0n ? `-$${formatDollars(-micros)}` : `$${formatDollars(micros)}`)

/** 402: the balance cannot cover the hold (or the charge) asked for. Nothing was written. */
export class InsufficientBalance extends Data.TaggedError("InsufficientBalance")<{
  readonly account: string
  readonly required_micros: bigint
  readonly balance_micros: bigint
}> {
  override get message(): string {
    return `balance ${dollarsText(this.balance_micros)} cannot cover ${dollarsText(this.required_micros)}`
  }
}

/**
 * 402: a `/v1` request to the caller's own user inference instance that the engine stopped
 * because the credit balance was depleted at a cycle end (`credit_depleted`). The manual's
 * "402 on my own user inference instance … Restore balance and launch again": the same stable
 * code as any other lack of credit, with a message that says which instance, why, and what to
 * do. Any other stopped instance is 404 `model_not_found`. Nothing was written.
 */
export class InstanceCreditDepleted extends Data.TaggedError("InstanceCreditDepleted")<{
  /** The model name the instance served (the part of `<name>:<instance_id>` before the last `:`). */
  readonly name: string
  readonly instance: string
}> {
  override get message(): string {
    return `instance ${this.instance} of model ${this.name} was stopped because the credit balance was depleted (credit_depleted): add credit, then launch a new instance of ${this.name}`
  }
}

/** 400: the input is malformed or out of bounds. `field` names the offending input. */
export class ValidationError extends Data.TaggedError("ValidationError")<{
  readonly code: string
  readonly field: string
  readonly message: string
}> {}

/** 404: no such resource or account (or it belongs to another account). */
export class NotFound extends Data.TaggedError("NotFound")<{
  readonly code: "resource_not_found" | "account_not_found" | "model_not_found"
  readonly id: string
}> {
  override get message(): string {
    const what = this.code === "account_not_found" ? "account" : this.code === "model_not_found" ? "model" : "resource"
    return `${what} ${this.id} not found`
  }
}

/** 409: the request conflicts with the resource's state (extend a terminated instance…). */
export class Conflict extends Data.TaggedError("Conflict")<{
  readonly code: "instance_not_active" | "already_exists" | "invalid_state" | "too_many_pending_top_ups"
  readonly id: string
  readonly status: string
  readonly message: string
}> {}

/** 402: the model is registered but has no price set yet. Nothing was written. */
export class ModelNotPriced extends Data.TaggedError("ModelNotPriced")<{
  readonly model: string
}> {
  override get message(): string {
    return `model ${this.model} is registered but has no price set yet`
  }
}

/** 503: no healthy pod serves the model at this moment; the caller may retry in a few seconds. */
export class NoHealthyPod extends Data.TaggedError("NoHealthyPod")<{
  readonly model: string
}> {
  override get message(): string {
    return `no healthy pod serves model ${this.model} at this moment`
  }
}

/**
 * 503: another control-plane process leads this database now: a Kubernetes replica lost its
 * leader lease (docs/KUBERNETES.md), or a process started later on the same file took a newer
 * leader term (docs/ENGINE.md). This one's supervisor was fenced and writes nothing more. A
 * request that was already in flight gets this; a standby replica answers the same code.
 */
export class NotLeader extends Data.TaggedError("NotLeader")<{}> {
  override get message(): string {
    return "another control-plane process leads this database now (this one lost its leader lease or term); retry"
  }
}

/**
 * 503: another connection held the database's write lock past the busy timeout (an operator's
 * tool, a backup, a replica that has not claimed its term yet), so this unit of work could not
 * begin. It wrote nothing and no actor moved: an answer of this moment, not a defect.
 */
export class DatabaseBusy extends Data.TaggedError("DatabaseBusy")<{}> {
  override get message(): string {
    return "the database is busy with another writer; retry"
  }
}

export type EngineError = InsufficientBalance | InstanceCreditDepleted | ValidationError | NotFound | Conflict | ModelNotPriced | NoHealthyPod | NotLeader | DatabaseBusy

/** Every tag of `EngineError`, checked by the compiler: a new engine error cannot fall through to a 500. */
const ENGINE_TAGS: ReadonlySet<string> = new Set(
  Object.keys({
    InsufficientBalance: true,
    InstanceCreditDepleted: true,
    ValidationError: true,
    NotFound: true,
    Conflict: true,
    ModelNotPriced: true,
    NoHealthyPod: true,
    NotLeader: true,
    DatabaseBusy: true
  } satisfies Record<EngineError["_tag"], true>)
)

export const isEngineError = (e: unknown): e is EngineError =>
  typeof e === "object" && e !== null && "_tag" in e && typeof (e as { _tag: unknown })._tag === "string" && ENGINE_TAGS.has((e as { _tag: string })._tag)

/**
 * A refusal a caller throws to end its unit of work (the API's `HttpError`): like the
 * engine's own errors, it is an answer, not a defect. Anything else thrown out of a unit of
 * work is a defect (src/supervisor.ts, `unitOfWork`).
 */
export class Refusal extends Error {}

/** True for what may end a unit of work without a defect: an engine error or a `Refusal`. */
export const isRefusal = (e: unknown): boolean => e instanceof Refusal || isEngineError(e)

export const errorStatus = (e: EngineError): { readonly status: number; readonly error: string; readonly message: string } => {
  switch (e._tag) {
    case "InsufficientBalance":
      return { status: 402, error: "insufficient_balance", message: e.message }
    case "InstanceCreditDepleted":
      return { status: 402, error: "insufficient_balance", message: e.message }
    case "ValidationError":
      return { status: 400, error: e.code, message: e.message }
    case "NotFound":
      return { status: 404, error: e.code, message: e.message }
    case "Conflict":
      return { status: 409, error: e.code, message: e.message }
    case "ModelNotPriced":
      return { status: 402, error: "model_not_priced", message: e.message }
    case "NoHealthyPod":
      return { status: 503, error: "no_healthy_pod", message: e.message }
    case "NotLeader":
      return { status: 503, error: "not_leader", message: e.message }
    case "DatabaseBusy":
      return { status: 503, error: "database_busy", message: e.message }
  }
}

/** A programmer error: an invariant the code asserts did not hold. Never caught. */
export class InvariantViolation extends Error {
  constructor(message: string) {
    super(`invariant violated: ${message}`)
    this.name = "InvariantViolation"
  }
}

export const assert: (condition: unknown, message: () => string) => asserts condition = (condition, message) => {
  if (!condition) throw new InvariantViolation(message())
}
