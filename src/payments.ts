/**
 * Payments (issue 6): card top-ups, auto-recharge from a saved card, and refunds and disputes
 * (chargebacks) at the provider, booked into the wallet exactly once.
 *
 * The rules this module keeps:
 * - A `payments` row is written (in its own unit of work, moving no money) before the provider
 *   is called; every call about it carries an idempotency key made from that row's id, so a
 *   retry after a crash returns the same PaymentIntent instead of charging twice.
 * - Money comes in only when the provider says so (`payment_intent.succeeded`, or a
 *   `charge.refunded` that proves the charge was paid): one `topup` row per payment, guarded by
 *   the payment's status (compare-and-swap), whatever the order or number of deliveries.
 * - Every delivered event id is recorded (`payment_events`), so a repeat books nothing.
 * - Refunds at the provider are booked per charge (`payment_refunds`) so that the charge's
 *   `refund` rows (their `resource` is the payment id, like the top-up row's) always add up to
 *   what the provider really refunded, as far as its events have told us:
 *     booked = made − failed, at least 0 and at most the payment's amount less what its other
 *              charges' rows took (a second charge is never Stripe's: `leftByOthers`), where
 *     made   = the largest of
 *              - Σ amounts of the refunds made, once per refund id, as the provider tells them
 *                by id: a Refund object in `refund.created`, `refund.updated` or
 *                `charge.refund.updated` (failed ones included: they were made first), the
 *                charge's `refunds` list in `charge.refunded` (API versions that include it),
 *                or the charge's refunds the provider lists when asked (below);
 *              - Σ sizes of the refunds made as `charge.refunded` tells them (each names one:
 *                its `amount_refunded` less `previous_attributes.amount_refunded`, once per
 *                event id; on a charge booked before migration 8, the lump booked then plus the
 *                part of each size above it: `refundSize`);
 *              - the largest cumulative `amount_refunded` reported.
 *              Each is at most what the provider made, and the first two reach it once all of
 *              their events are in: Stripe documents `previous_attributes` for `*.updated`
 *              events only, and since API version 2024-10-28.acacia sends `refund.created` for
 *              card refunds too, so either may be all there is (docs/POLICY.md);
 *     failed = Σ amounts of the charge's refunds that failed or were canceled, once per refund id
 *              (`charge.refund.updated`, `refund.updated` or `refund.failed`, whichever comes,
 *              or the provider's list).
 *   Each input only grows its own term (a sum over distinct ids, a maximum), so any order and
 *   any number of deliveries end at the same amount booked (the rows on the way there follow
 *   the order). A change of `booked` is one row: −x when a refund is made, +x (`Failed refund
 *   to card …`) when one fails. Why sizes and not the
 *   cumulative amount alone: after a failure, Stripe's cumulative `amount_refunded` can be
 *   lower than one reported before it (a new refund after a failed one), so a stale higher
 *   value and a fresh lower one cannot be told apart; a refund's size can (docs/POLICY.md).
 * - A `charge.refunded` that tells neither the charge's refunds nor `previous_attributes`
 *   (`needsListing`: an API version from 2022-11-15 to before 2024-10-28.acacia, an endpoint
 *   without `refund.created`, and Stripe leaving `previous_attributes` out) leaves only the
 *   cumulative amount, which would book a refund made after a failed one short. So the
 *   engine asks the provider for the authoritative state first (`receive`:
 *   `PaymentsPort.listRefunds`, every page, within REFUND_LIST_DEADLINE_MS) and books each
 *   listed refund by id, oldest first, as its own Refund event would (made; failed or
 *   canceled, with its notification), then the event. Every refund made is in some
 *   `charge.refunded` whose list names it, so once the events are in, the by-id term is what
 *   the provider made. Without an answer (a timeout, the network, a 5xx) the event is booked
 *   as far as it tells, not recorded, and answered 502: Stripe delivers it again, and that
 *   delivery (or a later such event of the charge) lists and completes it. A list the
 *   provider refuses for good (an invalid request) is booked as the event tells, as before.
 * - Auto-recharge: after every unit of work, an account below its threshold gets one
 *   off-session charge, never a second while one of the account's auto-recharges is in flight
 *   (even one made under settings since turned off), none while backing off after a decline
 *   (saving the same card again keeps the backoff, also after the settings were deleted: it is
 *   the account's, `auto_recharge_backoff`) or waiting after a failure of the
 *   provider's (not counted as a decline), at most AUTO_RECHARGE_BURST_MAX per window.
 * - A refund at the provider pauses auto-recharge: the card the money just went back to is
 *   not charged again at once for the dip the refund made (docs/POLICY.md). The pause is
 *   held by the payment whose refund set it and by every payment refunded while it lasts
 *   (`auto_recharge_paused_by`). It ends when the balance is back at the threshold (a manual
 *   top-up), the settings are saved again, or a refund fails and none of the payments holding
 *   it has a refund left standing (no money went back to any card).
 * - A refund that failed or was canceled notifies the account once (`card_refund_failed`).
 * - Disputes (chargebacks) are booked per charge like refunds, as card `refund` rows naming the
 *   payment: disputed = Σ over the charge's disputes of (withdrawn − reinstated), each the
 *   largest the provider told for the dispute id (`payment_disputes`), at most the payment less
 *   what its refunds (and any other charge of it) booked; booked in full even below $0, as a refund is. A dispute credits
 *   the top-up first if its success has not come yet. The first withdrawal of a dispute notifies
 *   (`payment_disputed`) and turns the account's auto-recharge off until the owner saves it
 *   again; a reinstatement notifies (`payment_dispute_reinstated`) (docs/POLICY.md).
 * - An event whose amounts are in another currency than the payment's (a dispute, a refund)
 *   books nothing: it is answered `currency_mismatch`, recorded, and journaled for an operator.
 *
 * The provider is a port: its calls are fire-and-forget and answer through `done`, later
 * (never synchronously), so nothing the provider does runs inside the caller's transaction.
 * A call a unit of work asks for leaves only once that unit has committed
 * (`PaymentHost.whenCommitted`): a rolled-back payment row never has a charge behind it.
 */
import { Either } from "effect"
import type { EngineClock, TimerHandle } from "./clock.js"
import { Lane } from "./clock.js"
import { assert, Conflict, NotFound, ValidationError } from "./errors.js"
import type { LedgerStore } from "./ledger/store.js"
import { formatDollars, type Micros } from "./money.js"
import * as policy from "./policy.js"
import type { JournalPort, NotifierPort } from "./services.js"

// ── the port ────────────────────────────────────────────────────────────────────────────
export interface IntentRequest {
  readonly payment_id: string
  readonly account: string
  readonly kind: PaymentKind
  readonly amount_cents: number
  readonly currency: string
  /** Derived from the payment id: the same payment always sends the same key. */
  readonly idempotency_key: string
  /** Off-session charges name the saved card; a top-up's is confirmed by the customer. */
  readonly customer: string | null
  readonly payment_method: string | null
}

export type IntentResult =
  | { readonly ok: true; readonly intent_id: string; readonly client_secret: string | null; readonly status: string }
  | { readonly ok: false; readonly intent_id: string | null; readonly code: string; readonly message: string; readonly declined: boolean }

export type CardResult = { readonly ok: true; readonly customer: string; readonly payment_method: string } | { readonly ok: false; readonly code: string; readonly message: string }

export interface PaymentsPort {
  /** A PaymentIntent the customer confirms (a manual top-up). */
  createIntent(req: IntentRequest, done: (r: IntentResult) => void): void
  /** A PaymentIntent created and confirmed off-session on the saved card (auto-recharge). */
  chargeOffSession(req: IntentRequest, done: (r: IntentResult) => void): void
  /** A customer for the account (idempotent per account) with `payment_method` attached as its default. */
  saveCard(req: { readonly account: string; readonly payment_method: string; readonly idempotency_key: string }, done: (r: CardResult) => void): void
  /**
   * The charge's refunds as the provider has them now, in every status, oldest first, at most
   * REFUND_LIST_MAX (Stripe: `GET /v1/refunds?charge=…`, every page): what a `charge.refunded`
   * that tells too little is completed from (`needsListing`).
   */
  listRefunds(charge_id: string, done: (r: RefundListing) => void): void
}

/** A refund the provider told by its Refund object: made (by id), or failed or canceled. */
export type RefundTold = Extract<PaymentEvent, { readonly type: "refund.made" | "refund.failed" }>

/**
 * The provider's answer to `listRefunds`: the refunds it could read, or why there is none.
 * `transient`: the failure may pass (no answer in time, the network, a 5xx, a rate limit, a
 * key being rotated), so the event is worth delivering again; not so when the provider refused
 * the request itself (Stripe's `invalid_request_error`: no such charge on this account or in
 * this mode), which no retry changes.
 */
export type RefundListing =
  | { readonly ok: true; readonly refunds: ReadonlyArray<RefundTold> }
  | { readonly ok: false; readonly code: string; readonly message: string; readonly transient: boolean }

/**
 * The ISO currency an event's amounts are in, as its object tells it (Stripe's `currency`, lower
 * case), or null when it does not say. Every payment of ours is in policy.PAYMENT_CURRENCY: an
 * amount in another one is not comparable with the payment's, and books nothing
 * (`currency_mismatch`, docs/POLICY.md). The simulator's events leave it out (they are ours).
 */
export type Currency = string | null

/** A provider event, decoded once at the boundary (the webhook route, the simulator). */
export type PaymentEvent =
  | { readonly id: string; readonly type: "payment_intent.succeeded"; readonly intent_id: string; readonly amount_cents: number; readonly payment_id: string | null; readonly currency?: Currency }
  | {
      readonly id: string
      readonly type: "payment_intent.payment_failed"
      readonly intent_id: string
      readonly payment_id: string | null
      readonly code: string
      /** The card's fault (`isCardDecline` of `last_payment_error`), or the provider's. */
      readonly declined: boolean
    }
  | {
      readonly id: string
      readonly type: "charge.refunded"
      readonly charge_id: string
      readonly intent_id: string
      readonly amount_cents: number
      readonly amount_refunded_cents: number
      /**
       * The charge's `amount_refunded` before this refund (the event's
       * `data.previous_attributes`), so the refund's size is the difference; null when the
       * event does not say (then only the cumulative amount counts).
       */
      readonly previous_refunded_cents: number | null
      /** When the provider made the event (Stripe's `created`, on its clock), or null if it does not say. */
      readonly created_ms: number | null
      /** The charge's refunds listed in it (API versions before 2022-11-15 include them), at most REFUNDS_LISTED_MAX. */
      readonly refunds: ReadonlyArray<{ readonly refund_id: string; readonly amount_cents: number }>
      readonly payment_id: string | null
      /** The currency its amounts are in (`Currency`), lower case; null when the object does not say. */
      readonly currency?: Currency
    }
  | {
      readonly id: string
      /**
       * A refund the provider made (pending, requiring action or succeeded), told by its Refund
       * object in `refund.created`, `refund.updated` or `charge.refund.updated` (`event_type`):
       * it counts once per `refund_id`.
       */
      readonly type: "refund.made"
      readonly event_type: string
      readonly refund_id: string
      readonly charge_id: string
      readonly intent_id: string
      readonly amount_cents: number
      readonly payment_id: string | null
      /** The currency its amounts are in (`Currency`), lower case; null when the object does not say. */
      readonly currency?: Currency
    }
  | {
      readonly id: string
      /**
       * A refund that failed or was canceled at the provider. Stripe tells it with a Refund
       * object in `charge.refund.updated`, `refund.updated` or `refund.failed` (`event_type`):
       * an endpoint may get all three for one failure, so it counts once per `refund_id`.
       */
      readonly type: "refund.failed"
      readonly event_type: string
      readonly refund_id: string
      readonly charge_id: string
      readonly intent_id: string
      readonly amount_cents: number
      readonly status: "failed" | "canceled"
      readonly failure_reason: string | null
      readonly payment_id: string | null
      /** The currency its amounts are in (`Currency`), lower case; null when the object does not say. */
      readonly currency?: Currency
    }
  | {
      readonly id: string
      /**
       * A dispute (chargeback) of the payment's charge, told by a Dispute object in any of
       * Stripe's `charge.dispute.*` events (`event_type`): what the event proves the provider
       * took from our balance for it (`withdrawn_cents`) and gave back (`reinstated_cents`),
       * 0 when it proves nothing yet (an inquiry, a dispute not yet funded). Each counts once
       * per `dispute_id`, as the largest told (`decodeDispute`).
       */
      readonly type: "dispute"
      readonly event_type: string
      readonly dispute_id: string
      readonly charge_id: string
      readonly intent_id: string
      readonly amount_cents: number
      readonly withdrawn_cents: number
      readonly reinstated_cents: number
      readonly status: string | null
      readonly reason: string | null
      readonly payment_id: string | null
      /** The currency its amounts are in (`Currency`), lower case; null when the object does not say. */
      readonly currency?: Currency
    }
  | { readonly id: string; readonly type: "ignored"; readonly event_type: string }

/**
 * Stripe events whose object is a Refund: one in status `failed` or `canceled` gives money back;
 * one in another status (`pending`, `requires_action`, `succeeded`) tells a refund made, by id.
 */
const REFUND_OBJECT_EVENTS: ReadonlySet<string> = new Set(["refund.created", "charge.refund.updated", "refund.updated", "refund.failed"])

/** The most refunds read from a charge's `refunds` list (Stripe embeds 10; the rest are told by their own events). */
export const REFUNDS_LISTED_MAX = 100

/**
 * The most refunds of one charge read from the provider's list (`listRefunds`; Stripe pages
 * 100 at a time, so at most 10 requests). A charge has far fewer: every refund is at least a
 * cent of at most $1,000. Beyond it the oldest are left out, each still counted by its own
 * events and the cumulative amount.
 */
export const REFUND_LIST_MAX = 1_000

/**
 * Whether a failed charge was the card's fault (a decline: the customer must act) or the
 * provider's, from Stripe's error `type` and `code` (a PaymentIntent's `last_payment_error`,
 * or an API error): a `card_error` is a decline (`card_declined` with its `decline_code`,
 * `expired_card`, `incorrect_cvc`, `authentication_required`…) except `processing_error`,
 * which Stripe raises when the card could not be processed and says to retry; `api_error`,
 * `idempotency_error`, `invalid_request_error` and an unreachable Stripe are the provider's
 * (or ours). No type at all (an event from before Stripe sent one) reads as a decline, as
 * every failure did before (docs/POLICY.md).
 */
export const isCardDecline = (type: string | null, code: string | null): boolean => (type === null || type === "card_error") && code !== "processing_error"

/** A count Stripe sends (cents, seconds), or null when it is not a non-negative integer. */
const int = (v: unknown): number | null => (typeof v === "number" && Number.isSafeInteger(v) && v >= 0 ? v : null)
/** A non-empty string Stripe sends (an id, a code), or null. */
const str = (v: unknown): string | null => (typeof v === "string" && v.length > 0 ? v : null)
/** The currency a Stripe object tells (`currency`), lower case, or null. */
const currencyOf = (o: Record<string, unknown>): Currency => str(o["currency"])?.toLowerCase() ?? null

/** Decodes a Stripe `Event` (already verified) into a `PaymentEvent`; null when malformed. */
export const decodeStripeEvent = (raw: unknown): PaymentEvent | null => {
  const e = raw as { id?: unknown; type?: unknown; data?: { object?: Record<string, unknown> } }
  if (typeof e?.id !== "string" || typeof e.type !== "string") return null
  const o = e.data?.object
  const meta = (typeof o === "object" && o !== null && typeof o["metadata"] === "object" && o["metadata"] !== null ? o["metadata"] : {}) as Record<string, unknown>
  const payment_id = typeof meta["payment_id"] === "string" ? (meta["payment_id"] as string) : null
  // An event without an object to read (Stripe's own have one) is not ours to act on.
  if (typeof o !== "object" || o === null) return { id: e.id, type: "ignored", event_type: e.type }
  if (e.type === "payment_intent.succeeded") {
    const intent_id = str(o["id"])
    const amount = int(o["amount_received"] ?? o["amount"])
    return intent_id === null || amount === null ? null : { id: e.id, type: e.type, intent_id, amount_cents: amount, payment_id, currency: currencyOf(o) }
  }
  if (e.type === "payment_intent.payment_failed") {
    const intent_id = str(o["id"])
    const err = (typeof o["last_payment_error"] === "object" && o["last_payment_error"] !== null ? o["last_payment_error"] : {}) as Record<string, unknown>
    const type = str(err["type"])
    const declined = isCardDecline(type, str(err["code"]))
    const code = str(err["decline_code"]) ?? str(err["code"]) ?? (declined ? "card_declined" : (type ?? "provider_error"))
    return intent_id === null ? null : { id: e.id, type: e.type, intent_id, payment_id, code, declined }
  }
  if (e.type === "charge.refunded") {
    // A charge without a PaymentIntent (Stripe's legacy Charges API, another integration on
    // the same Stripe account) is not ours, as its Refund is not: ignored, not refused. A 400
    // made Stripe retry it for days, and may disable the endpoint, top-up events with it.
    if (o["payment_intent"] === null || o["payment_intent"] === undefined) return { id: e.id, type: "ignored", event_type: e.type }
    const charge_id = str(o["id"])
    const intent_id = str(o["payment_intent"])
    const amount = int(o["amount"])
    const refunded = int(o["amount_refunded"])
    if (charge_id === null || intent_id === null || amount === null || refunded === null || refunded > amount) return null
    const before = (e.data as { previous_attributes?: unknown }).previous_attributes
    const previous = typeof before === "object" && before !== null ? int((before as Record<string, unknown>)["amount_refunded"]) : null
    const created = int((e as { created?: unknown }).created)
    // A listed refund we cannot read is left out: it is told again by its own events.
    const list = typeof o["refunds"] === "object" && o["refunds"] !== null ? (o["refunds"] as Record<string, unknown>)["data"] : undefined
    const refunds = (Array.isArray(list) ? list.slice(0, REFUNDS_LISTED_MAX) : []).flatMap((r: unknown) => {
      const refund = (typeof r === "object" && r !== null ? r : {}) as Record<string, unknown>
      const refund_id = str(refund["id"])
      const cents = int(refund["amount"])
      return refund_id === null || cents === null || cents === 0 || cents > amount ? [] : [{ refund_id, amount_cents: cents }]
    })
    return {
      id: e.id,
      type: e.type,
      charge_id,
      intent_id,
      amount_cents: amount,
      amount_refunded_cents: refunded,
      previous_refunded_cents: previous,
      created_ms: created === null ? null : created * 1000,
      refunds,
      payment_id,
      currency: currencyOf(o)
    }
  }
  if (REFUND_OBJECT_EVENTS.has(e.type)) return decodeRefund(e.id, e.type, o)
  if (DISPUTE_EVENTS.has(e.type)) return decodeDispute(e.id, e.type, o)
  return { id: e.id, type: "ignored", event_type: e.type }
}

/** Stripe events whose object is a Dispute (stripe-node 23's `Event.Type`). */
const DISPUTE_EVENTS: ReadonlySet<string> = new Set([
  "charge.dispute.created",
  "charge.dispute.updated",
  "charge.dispute.closed",
  "charge.dispute.funds_withdrawn",
  "charge.dispute.funds_reinstated"
])

/** The most balance transactions read from a Dispute (Stripe lists "zero, one, or two"). */
export const DISPUTE_BALANCE_TRANSACTIONS_MAX = 10

/**
 * The most a dispute is read to have withdrawn, or reinstated, in cents: Stripe's largest amount
 * (99,999,999 units of a currency, $999,999.99). A dispute never moves more than its charge, and
 * what is booked is capped at the payment anyway; the bound keeps an amount the provider could
 * not have sent (up to 2^53 cents, ×10,000 in micros) from overflowing the ledger's 64-bit
 * columns, which threw inside the webhook's unit of work and stopped every later one.
 */
export const DISPUTE_CENTS_MAX = 99_999_999

/** An id Stripe sends as a string, or inside an expanded object. */
const idOf = (v: unknown): string | null => str(v) ?? (typeof v === "object" && v !== null ? str((v as Record<string, unknown>)["id"]) : null)

/**
 * A Dispute object (stripe-node 23's `Dispute`: `id`, `charge`, `payment_intent`, `amount`,
 * `currency`, `balance_transactions`, `status`, `reason`) in the event `event_type`. What it
 * proves moved at the provider: its balance transactions in the dispute's currency, negative
 * ones withdrawn (their `amount`, gross: the dispute fee is Stripe's `fee`, not the
 * customer's), positive ones reinstated (after a dispute won; after one lost on a partially
 * refunded payment, only the refunded part: Stripe's "partially won"); and without a readable
 * one, the event type itself: `funds_withdrawn` withdrew the dispute's `amount`,
 * `funds_reinstated` withdrew it and gave all of it back. A dispute of a charge without a
 * PaymentIntent is not ours; one we cannot tie to a charge and an amount is ignored, not
 * refused (a 4xx makes Stripe retry it for days), like a Refund.
 */
const decodeDispute = (id: string, event_type: string, o: Record<string, unknown>): PaymentEvent => {
  const dispute_id = str(o["id"])
  const charge_id = idOf(o["charge"])
  const intent_id = idOf(o["payment_intent"])
  const amount = int(o["amount"])
  if (dispute_id === null || charge_id === null || intent_id === null || amount === null || amount === 0) return { id, type: "ignored", event_type }
  const currency = str(o["currency"])
  const listed = Array.isArray(o["balance_transactions"]) ? (o["balance_transactions"] as unknown[]).slice(0, DISPUTE_BALANCE_TRANSACTIONS_MAX) : []
  let out = 0
  let back = 0
  for (const raw of listed) {
    const bt = (typeof raw === "object" && raw !== null ? raw : {}) as Record<string, unknown>
    const cents = bt["amount"]
    // An amount in another currency (the merchant's settlement currency) is not comparable
    // with the payment's: the event type stands for it.
    if (typeof cents !== "number" || !Number.isSafeInteger(cents) || (currency !== null && str(bt["currency"]) !== null && str(bt["currency"]) !== currency)) continue
    if (cents < 0) out += -cents
    else back += cents
  }
  const typed = event_type === "charge.dispute.funds_withdrawn" || event_type === "charge.dispute.funds_reinstated" ? amount : 0
  const withdrawn = Math.min(DISPUTE_CENTS_MAX, Math.max(out, typed))
  const reinstated = Math.min(DISPUTE_CENTS_MAX, back > 0 ? back : event_type === "charge.dispute.funds_reinstated" ? withdrawn : 0)
  return {
    id,
    type: "dispute",
    event_type,
    dispute_id,
    charge_id,
    intent_id,
    amount_cents: amount,
    withdrawn_cents: withdrawn,
    reinstated_cents: reinstated,
    status: str(o["status"]),
    reason: str(o["reason"]),
    payment_id: null,
    currency: currencyOf(o)
  }
}

/**
 * A Refund object, in an event (`event_type`, its id `id`) or listed by the provider: a refund
 * made when its status is pending, requires_action or succeeded, failed when failed or
 * canceled; ignored otherwise, or when it cannot be tied to a PaymentIntent, a charge and an
 * amount.
 */
const decodeRefund = (id: string, event_type: string, o: Record<string, unknown>): PaymentEvent => {
  const meta = (typeof o["metadata"] === "object" && o["metadata"] !== null ? o["metadata"] : {}) as Record<string, unknown>
  const payment_id = typeof meta["payment_id"] === "string" ? (meta["payment_id"] as string) : null
  // A refund that ended unsuccessfully gives money back; one in any other status was made.
  // A refund of a charge without a PaymentIntent is not ours.
  const status = o["status"]
  const made = status === "pending" || status === "requires_action" || status === "succeeded"
  const ended = status === "failed" || status === "canceled" ? status : null
  if ((!made && ended === null) || o["payment_intent"] === null || o["payment_intent"] === undefined) return { id, type: "ignored", event_type }
  const refund_id = str(o["id"])
  const charge_id = str(o["charge"])
  const intent_id = str(o["payment_intent"])
  const amount = int(o["amount"])
  // A refund we cannot tie to a charge and an amount (Stripe's `charge` may be null) is
  // answered and journaled as ignored, not refused: a 4xx makes Stripe retry it for days and
  // may disable the endpoint, top-up events with it.
  if (refund_id === null || charge_id === null || intent_id === null || amount === null || amount === 0) return { id, type: "ignored", event_type }
  const currency = currencyOf(o)
  if (ended === null) return { id, type: "refund.made", event_type, refund_id, charge_id, intent_id, amount_cents: amount, payment_id, currency }
  const reason = o["failure_reason"]
  return { id, type: "refund.failed", event_type, refund_id, charge_id, intent_id, amount_cents: amount, status: ended, failure_reason: str(reason), payment_id, currency }
}

/** What a listed refund is told as (`event_type`, and its `id`: `<refund id>@list`). */
export const LISTED_REFUND = "refunds.list"

/**
 * The refunds of `charge_id` the provider listed (Stripe's Refund objects, in the order
 * given), decoded at the boundary like the Refund of an event: those of another charge, and
 * those that cannot be read, are left out. At most REFUND_LIST_MAX.
 */
export const decodeListedRefunds = (charge_id: string, raw: ReadonlyArray<unknown>): ReadonlyArray<RefundTold> =>
  raw.slice(0, REFUND_LIST_MAX).flatMap((r: unknown) => {
    if (typeof r !== "object" || r === null) return []
    const o = r as Record<string, unknown>
    const told = decodeRefund(`${String(o["id"])}@list`, LISTED_REFUND, o)
    return (told.type === "refund.made" || told.type === "refund.failed") && told.charge_id === charge_id ? [told] : []
  })

/**
 * Whether a `charge.refunded` tells too little to book its refund exactly: neither the
 * charge's refunds (API versions from 2022-11-15 do not list them) nor the amount refunded
 * before it (`previous_attributes`, which Stripe documents for `*.updated` events only). Its
 * cumulative `amount_refunded` alone cannot tell a refund made after a failed one from a stale
 * report (docs/POLICY.md), so the engine lists the charge's refunds at the provider first.
 */
export const needsListing = (e: PaymentEvent): e is Extract<PaymentEvent, { type: "charge.refunded" }> =>
  e.type === "charge.refunded" && e.refunds.length === 0 && e.previous_refunded_cents === null

// ── what the engine side offers ─────────────────────────────────────────────────────────
export type PaymentKind = "topup" | "auto_recharge"
export type PaymentStatus = "creating" | "pending" | "succeeded" | "failed"

/**
 * A manual top-up's attempt, as an Idempotency-Key sees it (src/api/http.ts `idempotentAsync`):
 * the payment an earlier attempt with the key began and never answered, or null; and what to
 * record, with the payment row, of the payment this attempt begins.
 */
export interface TopUpAttempt {
  readonly resume: string | null
  readonly began: (payment_id: string) => void
}

const FIRST_ATTEMPT: TopUpAttempt = { resume: null, began: () => {} }

export interface PaymentRecord {
  readonly id: string
  readonly account: string
  readonly kind: PaymentKind
  readonly amount_micros: Micros
  readonly status: PaymentStatus
  readonly intent_id: string | null
  readonly failure_code: string | null
  readonly created_at: number
  readonly updated_at: number
}

export interface AutoRechargeRecord {
  readonly account: string
  readonly threshold_micros: Micros
  readonly amount_micros: Micros
  readonly payment_method: string
  readonly customer: string | null
  readonly pending_payment: string | null
  readonly declines: number
  readonly last_decline_at: number | null
  readonly retry_at: number | null
  /**
   * The payment whose refund at the provider paused auto-recharge, or null. The payments
   * refunded while the pause lasts hold it too (`auto_recharge_paused_by`).
   */
  readonly paused_by: string | null
}

/** A charge's refunds as booked (`payment_refunds`; the rule at the top of this file). */
interface RefundRecord {
  readonly charge_id: string
  readonly payment_id: string
  /** What the charge's refund rows add up to, negated. */
  readonly refunded_micros: Micros
  /** Σ sizes of the refunds made (more than the charge when failed ones were refunded again). */
  readonly gross_micros: Micros
  /** The largest cumulative `amount_refunded` reported. */
  readonly reported_micros: Micros
  /**
   * What code older than migration 8 booked as refunded, by the charge's cumulative amount and
   * not refund by refund (counted in `gross_micros` since), or 0; `legacy_at`: when it last
   * booked it (src/ledger/migrations.ts, migration 12).
   */
  readonly legacy_micros: Micros
  readonly legacy_at: number | null
  /** What the charge's dispute rows add up to, negated (at most the payment less `refunded_micros`). */
  readonly disputed_micros: Micros
}

/** A dispute of a charge as booked (`payment_disputes`), by dispute id. */
interface DisputeRecord {
  readonly dispute_id: string
  readonly charge_id: string
  readonly payment_id: string
  /** The largest amount the provider told withdrawn for it. */
  readonly withdrawn_micros: Micros
  /** The largest amount the provider told reinstated (given back) for it. */
  readonly reinstated_micros: Micros
}

/** What handling one event did, for the journal and the webhook's answer. */
export type EventOutcome =
  | "duplicate"
  | "unmatched"
  | "credited"
  | "refunded"
  | "refund_reversed"
  | "disputed"
  | "dispute_reinstated"
  | "failed"
  | "nothing"
  | "ignored"
  | "amount_mismatch"
  | "currency_mismatch"

/**
 * What taking one delivered event did (`PaymentBook.receive`): booked, with its outcome and,
 * when the refunds it needed could not be listed for now (`listing_failed`, a transient
 * failure), booked only as far as the event tells and not recorded; or nothing at all, the
 * book having stopped before the provider answered.
 */
export type Received =
  | { readonly booked: true; readonly outcome: EventOutcome; readonly listing_failed: { readonly code: string; readonly message: string } | null }
  | { readonly booked: false }

/** The supervisor, as the payments module sees it: units of work and the two money rows. */
export interface PaymentHost {
  unitOfWork<T>(fn: () => T): T
  /** A unit of work for the provider's answers and the retry timer: one a newer leader fenced does nothing. */
  background(fn: () => void): void
  /**
   * A `topup` (+) or card `refund` row naming the payment (− a refund made, + the credit back
   * of one that failed); marks the account touched (and credited).
   */
  postPayment(row: { account: string; kind: "topup" | "refund"; amount_micros: Micros; resource: string; description: string }): Micros
  /** Marks the account touched in the current unit of work (its auto-recharge is looked at after it). */
  touch(account: string): void
  /** Runs a provider call once the current unit of work has committed (at once outside one). */
  whenCommitted(call: () => void): void
  /**
   * What the account can spend: its balance less API usage admitted but not yet posted (the
   * per-minute rows). Auto-recharge watches this, so both row modes recharge at the same moment.
   */
  spendable(account: string): Micros
}

export const centsOf = (micros: Micros): number => Number(micros / policy.MICROS_PER_CENT)
export const microsOfCents = (cents: number): Micros => BigInt(cents) * policy.MICROS_PER_CENT
export const idempotencyKeyOf = (payment_id: string, call: "intent" | "card"): string => `ecolink-${payment_id}-${call}`

const checkAmount = (amount_micros: Micros, field: string): ValidationError | null => {
  if (amount_micros < policy.TOP_UP_MIN_MICROS || amount_micros > policy.TOP_UP_MAX_MICROS) {
    return new ValidationError({ code: "invalid_amount", field, message: `${field} must be from $${formatDollars(policy.TOP_UP_MIN_MICROS)} to $${formatDollars(policy.TOP_UP_MAX_MICROS)}` })
  }
  if (amount_micros % policy.MICROS_PER_CENT !== 0n) return new ValidationError({ code: "invalid_amount", field, message: `${field} must be whole cents` })
  return null
}

/**
 * The size of the refund a `charge.refunded` reports: its `amount_refunded` less the one before
 * (`previous_attributes`; 0 when the event does not say, and its cumulative amount counts
 * instead). A charge whose refunds code older than migration 8 booked as one lump (the largest
 * cumulative amount it saw: `legacy_micros`, counted in `gross_micros`) already counts every
 * refund made before that booking: until a refund fails, the cumulative amount only grows, so
 * such a refund lies under the lump (or wholly above it), and only its part above counts. Its
 * event arriving after the upgrade then adds nothing. A refund made after the booking counts in
 * full even under the lump (a refund in it failed since, and the charge got its amount back).
 * Which came first compares the provider's clock (`created_ms`) with ours (`legacy_at`) within
 * the webhook tolerance they are trusted to agree within; an event that does not say when it
 * was made is taken as made before. (Migration 12 also marks a charge booked since migration 8
 * left in that migration's state, amounts equal and no failure: the refunds seen fill its lump,
 * so none lies under it unseen unless one failed unseen.)
 */
const refundSize = (charge: RefundRecord, e: Extract<PaymentEvent, { type: "charge.refunded" }>): Micros => {
  if (e.previous_refunded_cents === null) return 0n
  const after = microsOfCents(e.amount_refunded_cents)
  const previous = microsOfCents(e.previous_refunded_cents)
  const lumpClosed = charge.legacy_at === null ? null : charge.legacy_at + policy.WEBHOOK_TOLERANCE_S * 1000
  const underLump = charge.legacy_micros > 0n && (lumpClosed === null || e.created_ms === null || e.created_ms <= lumpClosed)
  const before = underLump && previous < charge.legacy_micros ? charge.legacy_micros : previous
  return after > before ? after - before : 0n
}

export const backoffMs = (declines: number): number =>
  Math.min(policy.AUTO_RECHARGE_BACKOFF_MAX_MS, policy.AUTO_RECHARGE_BACKOFF_BASE_MS * 2 ** Math.min(Math.max(declines - 1, 0), 20))

export class PaymentBook {
  private readonly s: ReturnType<typeof prepare>
  /** Accounts with auto-recharge settings: the after-unit check skips every other account. */
  private readonly recharging = new Set<string>()
  private readonly retryTimers = new Map<string, TimerHandle>()
  private stopped = false

  constructor(
    private readonly ledger: LedgerStore,
    private readonly clock: EngineClock,
    private readonly notifier: NotifierPort,
    private readonly journal: JournalPort,
    private readonly port: PaymentsPort,
    private readonly host: PaymentHost
  ) {
    this.s = prepare(ledger.db)
  }

  /** Loads auto-recharge accounts, re-arms backoff timers, and re-sends calls a crash cut short. */
  start(): void {
    const now = this.clock.now()
    for (const a of this.s.allAutoRecharge.all() as unknown as AutoRechargeRecord[]) {
      this.recharging.add(a.account)
      const burst = this.burstEnd(a.account, now)
      const wake = Math.max(a.retry_at ?? 0, burst ?? 0)
      if (wake > now) this.armRetry(a.account, wake)
    }
    // A payment still `creating` was written but its provider call may never have left (or its
    // answer was lost): the same idempotency key gets the same PaymentIntent back.
    for (const p of this.s.byStatus.all("creating") as unknown as PaymentRecord[]) this.send(p)
  }

  stop(): void {
    this.stopped = true
    for (const t of this.retryTimers.values()) this.clock.clearTimeout(t)
    this.retryTimers.clear()
  }

  // ── commands ────────────────────────────────────────────────────────────────────────
  /**
   * A manual top-up: writes the payment row, asks the provider for a PaymentIntent, and
   * answers it (the customer confirms it with `client_secret`). No money moves here.
   */
  topUp(
    account: string,
    amount_micros: Micros,
    attempt: TopUpAttempt = FIRST_ATTEMPT
  ): Promise<Either.Either<{ payment: PaymentRecord; intent: IntentResult }, NotFound | ValidationError | Conflict>> {
    const earlier = attempt.resume === null ? undefined : this.payment(attempt.resume)
    // A top-up an earlier attempt began, whose answer a crash lost (the client never saw its
    // client_secret): asked again with the same idempotency key, the provider answers the same
    // PaymentIntent, so the retry answers that payment rather than begin a second one. Only a
    // success is recorded here: the restart re-sends a payment still `creating` itself
    // (`start`), and a failure of this call (an outage, a concurrent call with the same key) is
    // the retry's 502, not the payment's. One that failed is not resumed: the retry pays anew.
    const resumed = earlier !== undefined && earlier.account === account && earlier.kind === "topup" && earlier.status !== "failed"
    const begun = resumed ? Either.right(earlier) : this.beginTopUp(account, amount_micros, attempt.began)
    if (Either.isLeft(begun)) return Promise.resolve(Either.left(begun.left))
    const payment = begun.right
    return new Promise((resolve) => {
      this.port.createIntent(this.requestOf(payment, null), (intent) => {
        if (intent.ok || !resumed) this.recordIntent(payment.id, intent)
        resolve(Either.right({ payment: this.payment(payment.id)!, intent }))
      })
    })
  }

  /**
   * The first half of a top-up (the simulator calls it and lets the provider answer later).
   * `began` runs in the unit of work that writes the payment row, so what it records commits
   * with it.
   */
  beginTopUp(account: string, amount_micros: Micros, began?: (payment_id: string) => void): Either.Either<PaymentRecord, NotFound | ValidationError | Conflict> {
    if (!this.ledger.hasAccount(account)) return Either.left(new NotFound({ code: "account_not_found", id: account }))
    const bad = checkAmount(amount_micros, "amount")
    if (bad !== null) return Either.left(bad)
    if (this.ledger.balance(account) + amount_micros > policy.WALLET_BALANCE_MAX_MICROS) {
      return Either.left(new ValidationError({ code: "invalid_amount", field: "amount", message: `a wallet holds at most $${formatDollars(policy.WALLET_BALANCE_MAX_MICROS)}` }))
    }
    // A PaymentIntent costs the account nothing to create: the ones awaiting confirmation are
    // bounded (docs/POLICY.md). A retry of an earlier attempt's top-up (`topUp`'s resume) makes
    // none and is not counted again.
    const pending = Number((this.s.pendingTopUps.get(account, this.clock.now() - policy.TOP_UP_PENDING_WINDOW_MS) as { n: bigint }).n)
    if (pending >= policy.TOP_UP_PENDING_MAX) {
      return Either.left(
        new Conflict({
          code: "too_many_pending_top_ups",
          id: account,
          status: "pending",
          message: `${pending} top-ups await confirmation: confirm or abandon one (a top-up counts for ${policy.TOP_UP_PENDING_WINDOW_MS / policy.MS_PER_HOUR} h) before starting another`
        })
      )
    }
    return Either.right(
      this.host.unitOfWork(() => {
        const payment = this.insertPayment(account, "topup", amount_micros)
        began?.(payment.id)
        return payment
      })
    )
  }

  /** A top-up whose provider answer comes through `done` (the simulator's path). */
  startTopUp(account: string, amount_micros: Micros): Either.Either<PaymentRecord, NotFound | ValidationError | Conflict> {
    const begun = this.beginTopUp(account, amount_micros)
    if (Either.isRight(begun)) this.send(begun.right)
    return begun
  }

  /** Auto-recharge settings `{threshold, amount}` on the card `payment_method`; null turns it off. */
  setAutoRecharge(
    account: string,
    settings: { readonly threshold_micros: Micros; readonly amount_micros: Micros; readonly payment_method: string } | null
  ): Either.Either<AutoRechargeRecord | null, NotFound | ValidationError> {
    if (!this.ledger.hasAccount(account)) return Either.left(new NotFound({ code: "account_not_found", id: account }))
    if (settings !== null) {
      if (settings.threshold_micros < 0n || settings.threshold_micros > policy.AUTO_RECHARGE_THRESHOLD_MAX_MICROS) {
        return Either.left(new ValidationError({ code: "invalid_threshold", field: "threshold", message: `threshold must be from $0 to $${formatDollars(policy.AUTO_RECHARGE_THRESHOLD_MAX_MICROS)}` }))
      }
      const bad = checkAmount(settings.amount_micros, "amount")
      if (bad !== null) return Either.left(bad)
      if (!/^[A-Za-z0-9_]{1,100}$/.test(settings.payment_method)) {
        return Either.left(new ValidationError({ code: "invalid_payment_method", field: "payment_method", message: "payment_method is a provider id like pm_card_visa" }))
      }
    }
    return Either.right(
      this.host.unitOfWork(() => {
        const at = this.clock.now()
        this.journal.append(at, "set_auto_recharge", settings === null ? { account, off: true } : { account, threshold_micros: settings.threshold_micros.toString(), amount_micros: settings.amount_micros.toString(), payment_method: settings.payment_method })
        if (settings === null) {
          this.turnOffAutoRecharge(account)
          return null
        }
        const before = this.autoRecharge(account)
        const sameCard = before !== undefined && before.payment_method === settings.payment_method
        this.s.upsertAutoRecharge.run({
          account,
          threshold: settings.threshold_micros,
          amount: settings.amount_micros,
          payment_method: settings.payment_method,
          customer: sameCard ? before.customer : null,
          at
        })
        // Settings saved again after they were deleted take back the backoff of the same card
        // (a different card starts afresh): deleting and saving them again is no way around it.
        if (before === undefined) {
          this.s.restoreBackoff.run(account)
          this.s.restorePending.run(account)
        }
        this.s.forgetBackoff.run(account)
        const restored = this.autoRecharge(account)!
        if (restored.retry_at !== null && restored.retry_at > at) this.armRetry(account, restored.retry_at)
        // Saving the settings ends a pause (the upsert clears `paused_by`), and with it its holders.
        this.s.clearPausedBy.run(account)
        this.recharging.add(account)
        if (!sameCard) {
          const idempotency_key = `ecolink-${account}-card-${settings.payment_method}`
          this.host.whenCommitted(() => this.port.saveCard({ account, payment_method: settings.payment_method, idempotency_key }, (r) => this.recordCard(account, settings.payment_method, r)))
        }
        this.host.touch(account)
        return this.autoRecharge(account)!
      })
    )
  }

  /** Enterprise (NET-30): an invoiced account is credited by `adjustment` rows; a flag, nothing more. */
  setInvoiced(account: string, invoiced: boolean): Either.Either<{ account: string; invoiced: boolean }, NotFound> {
    if (!this.ledger.hasAccount(account)) return Either.left(new NotFound({ code: "account_not_found", id: account }))
    return Either.right(
      this.host.unitOfWork(() => {
        this.journal.append(this.clock.now(), "set_invoiced", { account, invoiced })
        this.s.upsertBilling.run(account, invoiced ? 1 : 0, invoiced ? "NET-30" : null, this.clock.now())
        return { account, invoiced }
      })
    )
  }

  invoiced(account: string): boolean {
    return (this.s.billing.get(account) as { invoiced: number } | undefined)?.invoiced === 1
  }

  /**
   * Takes one provider event as the webhook delivers it. A `charge.refunded` that tells too
   * little to book exactly (`needsListing`) is completed from the charge's refunds listed at
   * the provider (`PaymentsPort.listRefunds`, asked for before the event is booked, so nothing
   * waits inside a unit of work); any other event, and a repeat, is booked at once. `done` gets
   * what was booked (`Received`), or what was thrown booking it (the webhook answers it as it
   * answers any error). Without an answer from the provider (a transient failure) the event is
   * booked as far as it tells and not recorded: the webhook answers non-2xx, and Stripe's retry
   * (or a later event of the charge) completes it.
   */
  receive(e: PaymentEvent, done: (r: Either.Either<Received, unknown>) => void): void {
    const book = (listing: RefundListing | null): void => {
      let outcome: EventOutcome
      try {
        outcome = this.handleEvent(e, listing)
      } catch (error) {
        return done(Either.left(error))
      }
      done(Either.right({ booked: true, outcome, listing_failed: listing === null || listing.ok || !listing.transient ? null : { code: listing.code, message: listing.message } }))
    }
    if (!needsListing(e) || this.s.event.get(e.id) !== undefined) return book(null)
    this.port.listRefunds(e.charge_id, (listing) => (this.stopped ? done(Either.right({ booked: false })) : book(listing)))
  }

  /**
   * Books one provider event, exactly once by event id and by payment status. `listing`: the
   * charge's refunds the provider listed for a `charge.refunded` that tells too little (null
   * when none was asked for); booked first, each as its own Refund event would book it. A
   * listing that failed leaves the event unrecorded, so a delivery again books the rest.
   */
  handleEvent(e: PaymentEvent, listing: RefundListing | null = null): EventOutcome {
    return this.host.unitOfWork(() => {
      if (this.s.event.get(e.id) !== undefined) return "duplicate"
      const outcome = this.apply(e, listing?.ok === true ? listing.refunds : [])
      // An event for a payment we do not know is answered (2xx: Stripe will not send it again)
      // but not recorded, so a resend from Stripe's dashboard can still match it later. Our
      // own payments are always known first: their row commits before the provider is called.
      // An event whose listing failed for a while is booked as far as it tells (each of its
      // terms only grows, so booking it again changes nothing) and not recorded either: the
      // webhook answers 502 and Stripe's retry lists the refunds again. One the provider
      // refused to list for good is booked as far as it tells, as before there was a list.
      const complete = listing === null || listing.ok || !listing.transient
      if (outcome !== "unmatched" && complete) this.s.insertEvent.run(e.id, "event_type" in e ? e.event_type : e.type, this.clock.now(), outcome)
      const listed = listing === null ? {} : listing.ok ? { listed: listing.refunds.length } : { listing_failed: listing.code }
      this.journal.append(this.clock.now(), "payment_event", { id: e.id, type: e.type, outcome, ...listed })
      return outcome
    })
  }

  /** After each unit of work: the touched accounts below their threshold get one off-session charge. */
  afterUnit(accounts: ReadonlyArray<string>): void {
    if (this.stopped || this.recharging.size === 0) return
    for (const account of accounts) if (this.recharging.has(account)) this.maybeRecharge(account)
  }

  // ── read models ─────────────────────────────────────────────────────────────────────
  payment(id: string): PaymentRecord | undefined {
    return this.s.payment.get(id) as PaymentRecord | undefined
  }

  payments(): ReadonlyArray<PaymentRecord> {
    return this.s.payments.all() as unknown as PaymentRecord[]
  }

  /** The account's payments, newest first, before the id `before` (keyset, in the order of PAYMENT_ORDER). */
  paymentsOf(account: string, before: string | null, limit: number): ReadonlyArray<PaymentRecord> {
    return this.s.paymentsOf.all({ account, before, limit }) as unknown as PaymentRecord[]
  }

  autoRecharge(account: string): AutoRechargeRecord | undefined {
    return this.s.autoRecharge.get(account) as AutoRechargeRecord | undefined
  }

  // ── inside ──────────────────────────────────────────────────────────────────────────
  private insertPayment(account: string, kind: PaymentKind, amount_micros: Micros): PaymentRecord {
    const at = this.clock.now()
    const n = (this.s.countPayments.get() as { n: number }).n
    const id = `pay_${String(n + 1).padStart(8, "0")}`
    this.s.insertPayment.run(id, account, kind, amount_micros, at, at)
    this.journal.append(at, "payment_created", { id, account, kind, amount_micros: amount_micros.toString() })
    return this.payment(id)!
  }

  private requestOf(p: PaymentRecord, card: AutoRechargeRecord | null): IntentRequest {
    return {
      payment_id: p.id,
      account: p.account,
      kind: p.kind,
      amount_cents: centsOf(p.amount_micros),
      currency: policy.PAYMENT_CURRENCY,
      idempotency_key: idempotencyKeyOf(p.id, "intent"),
      customer: card?.customer ?? null,
      payment_method: card?.payment_method ?? null
    }
  }

  /** Sends (or re-sends, same key) the provider call of a payment still `creating`. */
  private send(p: PaymentRecord): void {
    if (p.kind === "topup") return this.port.createIntent(this.requestOf(p, null), (r) => this.recordIntent(p.id, r))
    const card = this.autoRecharge(p.account)
    if (card === undefined || card.customer === null) return
    this.port.chargeOffSession(this.requestOf(p, card), (r) => this.recordIntent(p.id, r))
  }

  private recordIntent(payment_id: string, r: IntentResult): void {
    if (this.stopped) return
    this.host.background(() => {
      const at = this.clock.now()
      const p = this.payment(payment_id)
      assert(p !== undefined, () => `provider answer for unknown payment ${payment_id}`)
      if (r.intent_id !== null && p.intent_id === null) this.s.setIntent.run(r.intent_id, at, payment_id)
      if (r.ok) {
        this.s.casStatus.run("pending", null, at, payment_id, "creating")
        return
      }
      this.journal.append(at, "payment_refused", { id: payment_id, code: r.code })
      this.fail(this.payment(payment_id)!, r.code, r.declined)
    })
  }

  private recordCard(account: string, payment_method: string, r: CardResult): void {
    if (this.stopped) return
    this.host.background(() => {
      const card = this.autoRecharge(account)
      this.journal.append(this.clock.now(), "card_saved", { account, ok: r.ok })
      if (card === undefined || card.payment_method !== payment_method || !r.ok) return
      this.s.setCustomer.run(r.customer, account)
      this.host.touch(account)
    })
  }

  private find(intent_id: string, payment_id: string | null): PaymentRecord | undefined {
    const byIntent = this.s.byIntent.get(intent_id) as PaymentRecord | undefined
    if (byIntent !== undefined) return byIntent
    // The crash case: the provider made the intent but its id never reached our row.
    const byId = payment_id === null ? undefined : this.payment(payment_id)
    if (byId === undefined || (byId.intent_id !== null && byId.intent_id !== intent_id)) return undefined
    if (byId.intent_id === null) this.s.setIntent.run(intent_id, this.clock.now(), byId.id)
    return this.payment(byId.id)
  }

  private apply(e: PaymentEvent, listed: ReadonlyArray<RefundTold>): EventOutcome {
    if (e.type === "ignored") return "ignored"
    const p = this.find(e.intent_id, e.payment_id)
    if (p === undefined) return "unmatched"
    // An amount in another currency than the payment's is not comparable with it: whatever
    // the event tells (a refund, a dispute, a success), nothing is booked, and the operator is
    // told by the journal (docs/POLICY.md, Disputes). The event is recorded, as an amount
    // mismatch is: a resend answers `duplicate`.
    if (this.otherCurrency(p, e, "event_type" in e ? e.event_type : e.type)) return "currency_mismatch"
    // The provider must have taken what our row asked for: a payment of another amount is
    // not ours to credit; it is recorded (journal, outcome) for an operator, and moves nothing.
    // A refund larger than our payment cannot be of it either.
    const paid = e.type === "payment_intent.succeeded" || e.type === "charge.refunded" ? e.amount_cents : null
    const refund = e.type === "refund.failed" || e.type === "refund.made" ? e.amount_cents : null
    if ((paid !== null && paid !== centsOf(p.amount_micros)) || (refund !== null && refund > centsOf(p.amount_micros))) {
      this.journal.append(this.clock.now(), "payment_amount_mismatch", { payment: p.id, ours_cents: centsOf(p.amount_micros), provider_cents: paid ?? refund })
      return "amount_mismatch"
    }
    if (e.type === "payment_intent.succeeded") return this.succeed(p) ? "credited" : "nothing"
    if (e.type === "payment_intent.payment_failed") return this.fail(p, e.code, e.declined) ? "failed" : "nothing"
    if (e.type === "refund.failed") return this.refundFailed(p, e)
    if (e.type === "dispute") return this.disputed(p, e)
    // charge.refunded, refund.made: the charge was paid, so the top-up is credited first if it
    // was not yet (events come in any order); then the refund reported is booked, if it is news.
    if (this.chargeOf(e.charge_id, p) === undefined) return "unmatched"
    const credited = this.succeed(this.payment(p.id)!)
    if (e.type === "refund.made") {
      this.s.insertMade.run(e.refund_id, e.charge_id, p.id, microsOfCents(e.amount_cents))
      const moved = this.bookMade(p, e)
      return moved < 0n ? "refunded" : credited ? "credited" : "nothing"
    }
    // The charge's refunds the provider listed come first, oldest first, each booked as its own
    // Refund event would book it (a failure with its notification); what the event tells
    // itself (a cumulative amount older than the list) then adds nothing the list did not.
    let listedMoved = 0n
    for (const r of listed) listedMoved += this.bookListed(p, e.charge_id, r)
    for (const r of e.refunds) this.s.insertMade.run(r.refund_id, e.charge_id, p.id, microsOfCents(r.amount_cents))
    const reported = this.s.refund.get(e.charge_id) as unknown as RefundRecord
    this.s.reportRefund.run(reported.gross_micros + refundSize(reported, e), microsOfCents(e.amount_refunded_cents), e.charge_id)
    // Net, what the event did: more refunded, less (a failure the list told), or neither.
    const moved = listedMoved + this.bookMade(p, e)
    return moved < 0n ? "refunded" : moved > 0n ? "refund_reversed" : credited ? "credited" : "nothing"
  }

  /**
   * Books what a refund reported made (its id, size or cumulative amount, recorded by the
   * caller) adds to the charge's refunds, pausing auto-recharge if it moved money; returns the
   * amount booked (≤ 0).
   */
  private bookMade(p: PaymentRecord, e: { readonly type: string; readonly id: string; readonly charge_id: string }): Micros {
    const moved = this.bookRefunds(p, e.charge_id)
    // A refund reported can only add to what is booked as refunded; a failure only takes back.
    assert(moved <= 0n, () => `${e.type} ${e.id} credited ${moved} back`)
    if (moved < 0n) this.pauseAfterRefund(p, -moved)
    return moved
  }

  /**
   * One refund of the charge `charge_id` the provider listed, booked by its id as a Refund
   * event would book it: made (counted once per id), or failed or canceled (`recordFailure`).
   * One that names another charge, or is larger than the payment, is not of it and books
   * nothing. Returns the amount booked.
   */
  private bookListed(p: PaymentRecord, charge_id: string, r: RefundTold): Micros {
    if (r.charge_id !== charge_id || this.otherCurrency(p, r, LISTED_REFUND)) return 0n
    if (r.amount_cents > centsOf(p.amount_micros)) {
      this.journal.append(this.clock.now(), "payment_amount_mismatch", { payment: p.id, ours_cents: centsOf(p.amount_micros), provider_cents: r.amount_cents })
      return 0n
    }
    if (r.type === "refund.failed") return this.recordFailure(p, r)
    this.s.insertMade.run(r.refund_id, r.charge_id, p.id, microsOfCents(r.amount_cents))
    return this.bookMade(p, r)
  }

  /**
   * Whether the event's amounts are in another currency than the payment's (policy.PAYMENT_CURRENCY;
   * one that does not say is taken as the payment's), journaled for an operator if so
   * (`payment_currency_mismatch`).
   */
  private otherCurrency(p: PaymentRecord, e: { readonly id: string; readonly currency?: Currency }, told_as: string): boolean {
    if (e.currency === undefined || e.currency === null || e.currency === policy.PAYMENT_CURRENCY) return false
    this.journal.append(this.clock.now(), "payment_currency_mismatch", { payment: p.id, event: e.id, type: told_as, ours: policy.PAYMENT_CURRENCY, provider: e.currency })
    return true
  }

  /**
   * The charge's refund record, made for the payment if new; undefined if it is another
   * payment's. A second charge of one payment is journaled for an operator
   * (`payment_second_charge`): Stripe makes at most one successful charge per PaymentIntent, and
   * only a successful one is refunded or disputed, so it is a forged or buggy event; what it
   * books is capped by what the payment's first charge left (`leftByOthers`).
   */
  private chargeOf(charge_id: string, p: PaymentRecord): RefundRecord | undefined {
    const made = this.s.insertRefund.run(charge_id, p.id).changes === 1
    const charge = this.s.refund.get(charge_id) as unknown as RefundRecord | undefined
    assert(charge !== undefined, () => `refund record of ${charge_id} not written`)
    if (charge.payment_id !== p.id) return undefined
    const others = made ? Number((this.s.otherCharges.get(p.id, charge_id) as { n: bigint }).n) : 0
    if (others > 0) this.journal.append(this.clock.now(), "payment_second_charge", { payment: p.id, charge: charge_id, other_charges: others })
    return charge
  }

  /**
   * What the payment's charges other than `charge_id` leave of it: its amount less what their
   * refund and dispute rows took. A charge's refunds, and then its disputes, are capped by it, so
   * what the payment's card rows take in all (refunded + disputed, not reinstated) never exceeds
   * the payment, however many charge ids its events name. Before, the cap was per charge: two
   * charges of one payment could take it twice (docs/POLICY.md, Disputes). Each charge only
   * takes what the others left when it books: the first to book keeps it. `ceiling`, when
   * given, bounds it too: a refund's failure books the charge again within what its rows took
   * before (`recordFailure`), so room another charge freed meanwhile is not taken by a failure.
   */
  private leftByOthers(p: PaymentRecord, charge_id: string, ceiling: Micros | null = null): Micros {
    const others = this.s.otherCharges.get(p.id, charge_id) as { taken_micros: bigint }
    const left = others.taken_micros < p.amount_micros ? p.amount_micros - others.taken_micros : 0n
    return ceiling !== null && ceiling < left ? ceiling : left
  }

  /**
   * Makes the charge's refund rows add up to what the provider really refunded, as far as its
   * events have told us (the rule at the top of this file), with one row for the difference.
   * Returns the amount booked: negative for a refund made, positive for the credit back of a
   * failed one, 0 when the books already agree.
   */
  private bookRefunds(p: PaymentRecord, charge_id: string, ceiling: Micros | null = null): Micros {
    const charge = this.s.refund.get(charge_id) as unknown as RefundRecord
    const failed = (this.s.failedOf.get(charge_id) as { failed_micros: bigint }).failed_micros
    const known = (this.s.madeOf.get(charge_id) as { made_micros: bigint }).made_micros
    const made = [charge.gross_micros, charge.reported_micros, known].reduce((a, b) => (a > b ? a : b))
    // Refunds made can add up to more than the charge when some failed (Stripe gives a failed
    // refund's amount back to the charge, to be refunded again): the cap comes after them.
    const net = made > failed ? made - failed : 0n
    // The cap is the payment's, not the charge's: what the payment's other charges booked
    // (refunds and disputes) is not this charge's to take again (`leftByOthers`).
    const room = this.leftByOthers(p, charge_id, ceiling)
    const target = net < room ? net : room
    assert(target >= 0n && target <= p.amount_micros, () => `refund target ${target} of ${p.id} outside its amount`)
    // Money is booked as refunded only once the payment is credited (charge.refunded credits
    // it first); a failure that came before any refund was reported books nothing.
    assert(target === 0n || this.payment(p.id)!.status === "succeeded", () => `refund booked on ${p.id} before its credit`)
    const moved = this.bookCardRow(p, charge_id, charge.refunded_micros, target, this.s.setRefunded, (m) =>
      m < 0n ? policy.descriptions.cardRefund(p.id) : policy.descriptions.cardRefundFailed(p.id)
    )
    if (moved === 0n) return 0n
    // What a dispute of the charge may take is what the refunds leave of the payment.
    this.bookDisputes(p, charge_id, null, ceiling)
    return moved
  }

  /**
   * Moves what the charge's card rows of one sort (refunds, disputes) add up to from `booked` to
   * `target` with one card `refund` row naming the payment (− taken, + given back), and records
   * the new total with `record`. Returns the amount booked, 0 when they already agree.
   */
  private bookCardRow(p: PaymentRecord, charge_id: string, booked: Micros, target: Micros, record: { run(target: Micros, charge_id: string): unknown }, describe: (moved: Micros) => string): Micros {
    const moved = booked - target
    if (moved === 0n) return 0n
    record.run(target, charge_id)
    this.host.postPayment({ account: p.account, kind: "refund", amount_micros: moved, resource: p.id, description: describe(moved) })
    return moved
  }

  /**
   * A dispute (chargeback) event of the payment's charge: the charge was paid, so the top-up
   * is credited first if it was not yet (events come in any order); then what the provider
   * withdrew for the dispute is booked, and then what it reinstated, each the largest told for
   * the dispute id (so a resend, or another `charge.dispute.*` of the same dispute, books
   * nothing more). Withdrawn funds take the account's auto-recharge off (docs/POLICY.md).
   */
  private disputed(p: PaymentRecord, e: Extract<PaymentEvent, { type: "dispute" }>): EventOutcome {
    if (this.chargeOf(e.charge_id, p) === undefined) return "unmatched"
    const before = this.s.dispute.get(e.dispute_id) as unknown as DisputeRecord | undefined
    // A dispute id is the provider's, of one charge: another payment's is not this one's.
    if (before !== undefined && before.payment_id !== p.id) return "unmatched"
    const credited = this.succeed(this.payment(p.id)!)
    const at = this.clock.now()
    if (microsOfCents(e.amount_cents) > p.amount_micros) {
      this.journal.append(at, "dispute_exceeds_payment", { payment: p.id, dispute: e.dispute_id, ours_cents: centsOf(p.amount_micros), provider_cents: e.amount_cents })
    }
    const was = { withdrawn: before?.withdrawn_micros ?? 0n, reinstated: before?.reinstated_micros ?? 0n }
    const told = { withdrawn: microsOfCents(e.withdrawn_cents), reinstated: microsOfCents(e.reinstated_cents) }
    const withdrawn = told.withdrawn > was.withdrawn ? told.withdrawn : was.withdrawn
    const reinstated = told.reinstated > was.reinstated ? told.reinstated : was.reinstated
    this.s.upsertDispute.run({ dispute_id: e.dispute_id, charge_id: e.charge_id, payment_id: p.id, withdrawn: was.withdrawn, reinstated: was.reinstated, status: e.status, reason: e.reason, at })
    this.journal.append(at, "payment_dispute", { payment: p.id, dispute: e.dispute_id, event: e.event_type, withdrawn_micros: withdrawn.toString(), reinstated_micros: reinstated.toString(), status: e.status })
    // Withdrawn first, then reinstated, each its own row: an event that tells both (the
    // reinstatement overtook the withdrawal) books −x and +x, and each notification says
    // what its own step did.
    this.s.setDisputeWithdrawn.run(withdrawn, at, e.dispute_id)
    const taken = this.bookDisputes(p, e.charge_id, e.dispute_id)
    assert(taken <= 0n, () => `dispute ${e.dispute_id} withdrawal credited ${taken}`)
    if (was.withdrawn === 0n && withdrawn > 0n) this.noticeDispute(p, e, withdrawn, -taken)
    this.s.setDisputeReinstated.run(reinstated, at, e.dispute_id)
    const returned = this.bookDisputes(p, e.charge_id, e.dispute_id)
    assert(returned >= 0n, () => `dispute ${e.dispute_id} reinstatement took ${returned}`)
    if (was.reinstated === 0n && reinstated > 0n) {
      this.notifier.notify({
        account: p.account,
        resource: null,
        at,
        severity: "info",
        kind: "payment_dispute_reinstated",
        text: policy.texts.paymentDisputeReinstated(formatDollars(reinstated < withdrawn ? reinstated : withdrawn), formatDollars(returned)),
        data: { payment: p.id, dispute: e.dispute_id, reinstated: formatDollars(reinstated), returned: formatDollars(returned) }
      })
    }
    const moved = taken + returned
    return moved < 0n ? "disputed" : moved > 0n ? "dispute_reinstated" : credited ? "credited" : "nothing"
  }

  /**
   * Tells the account its payment was disputed and what the dispute took from its credit, and
   * takes its auto-recharge off: after a chargeback the card is not charged off-session again
   * until the owner saves the settings again (docs/POLICY.md).
   */
  private noticeDispute(p: PaymentRecord, e: Extract<PaymentEvent, { type: "dispute" }>, withdrawn: Micros, taken: Micros): void {
    const off = this.autoRecharge(p.account) !== undefined
    if (off) {
      this.journal.append(this.clock.now(), "auto_recharge_off", { account: p.account, dispute: e.dispute_id })
      this.turnOffAutoRecharge(p.account)
    }
    this.notifier.notify({
      account: p.account,
      resource: null,
      at: this.clock.now(),
      severity: "critical",
      kind: "payment_disputed",
      text: policy.texts.paymentDisputed(formatDollars(withdrawn < p.amount_micros ? withdrawn : p.amount_micros), formatDollars(taken), off),
      data: { payment: p.id, dispute: e.dispute_id, reason: e.reason, taken: formatDollars(taken), auto_recharge: off ? "off" : null }
    })
  }

  /**
   * Makes the charge's dispute rows add up to what its disputes took at the provider (withdrawn
   * less reinstated, per dispute), at most what the charge's refunds and the payment's other
   * charges (`leftByOthers`) left of the payment, with one row
   * for the difference. Returns the amount booked: negative when a dispute takes, positive when
   * it gives back (or a refund took its place).
   */
  private bookDisputes(p: PaymentRecord, charge_id: string, dispute_id: string | null, ceiling: Micros | null = null): Micros {
    const charge = this.s.refund.get(charge_id) as unknown as RefundRecord
    const net = (this.s.disputedOf.get(charge_id) as { net_micros: bigint }).net_micros
    const room = this.leftByOthers(p, charge_id, ceiling) - charge.refunded_micros
    assert(room >= 0n, () => `card rows of ${p.id} above its amount`)
    const target = net < room ? net : room
    assert(target >= 0n, () => `dispute target ${target} of ${p.id} below 0`)
    assert(target === 0n || this.payment(p.id)!.status === "succeeded", () => `dispute booked on ${p.id} before its credit`)
    return this.bookCardRow(p, charge_id, charge.disputed_micros, target, this.s.setDisputed, (m) =>
      m < 0n ? policy.descriptions.disputeWithdrawn(p.id, dispute_id) : policy.descriptions.disputeReturned(p.id, dispute_id)
    )
  }

  /**
   * Auto-recharge off, as the owner's DELETE does: the settings go, and so does any pause with
   * its holders; the card's backoff stays (`auto_recharge_backoff`), and a charge already in
   * flight still books when it answers.
   */
  private turnOffAutoRecharge(account: string): void {
    // The backoff is the account's, not the settings': it outlives them (saveBackoff skips a
    // card with none to keep).
    this.s.saveBackoff.run(account)
    this.s.deleteAutoRecharge.run(account)
    this.s.clearPausedBy.run(account)
    this.recharging.delete(account)
  }

  /**
   * A refund that failed or was canceled at the provider, once per refund id: its money comes
   * back to the wallet if it was booked as refunded (a failure that comes before its
   * charge.refunded is remembered, and that refund then books nothing), the auto-recharge
   * pause it held ends if no payment holding it has a refund left, and the account is told.
   */
  private refundFailed(p: PaymentRecord, e: Extract<PaymentEvent, { type: "refund.failed" }>): EventOutcome {
    if (this.s.failure.get(e.refund_id) !== undefined) return "nothing"
    if (this.chargeOf(e.charge_id, p) === undefined) return "unmatched"
    return this.recordFailure(p, e) > 0n ? "refund_reversed" : "nothing"
  }

  /**
   * A failure of a refund of the payment's charge, recorded once per refund id (an event's or
   * a listed one's), booked, and told; returns the amount credited back (0 when it was known,
   * or its refund was never booked).
   */
  private recordFailure(p: PaymentRecord, e: Extract<PaymentEvent, { type: "refund.failed" }>): Micros {
    if (this.s.failure.get(e.refund_id) !== undefined) return 0n
    const at = this.clock.now()
    const amount_micros = microsOfCents(e.amount_cents)
    this.s.insertFailure.run(e.refund_id, e.charge_id, p.id, amount_micros, e.status, e.failure_reason, at)
    // A refund that failed was made first: it counts among the refunds told by id.
    this.s.insertMade.run(e.refund_id, e.charge_id, p.id, amount_micros)
    this.journal.append(at, "card_refund_failed", { payment: p.id, refund: e.refund_id, charge: e.charge_id, amount_micros: amount_micros.toString(), status: e.status, reason: e.failure_reason })
    const before = this.s.refund.get(e.charge_id) as unknown as RefundRecord
    const disputedBefore = before.disputed_micros
    // A failure only gives back: the charge's rows take at most what they took before it, even
    // when another charge of the payment freed room since (`leftByOthers`); that room is taken
    // at the charge's next refund made or dispute, never as a failure's "credit back" < 0.
    const moved = this.bookRefunds(p, e.charge_id, before.refunded_micros + before.disputed_micros)
    assert(moved >= 0n, () => `failed refund ${e.refund_id} booked ${moved}`)
    // A dispute of the payment capped by this refund takes what the failure gives back.
    const toDispute = (this.s.refund.get(e.charge_id) as unknown as RefundRecord).disputed_micros - disputedBefore
    assert(toDispute >= 0n && toDispute <= moved, () => `failed refund ${e.refund_id}: its dispute took ${toDispute} of ${moved}`)
    const resumed = this.resumeAfterFailedRefund(p)
    this.notifier.notify({
      account: p.account,
      resource: null,
      at,
      severity: "warning",
      kind: "card_refund_failed",
      // A failure told before the top-up itself was credited (events come in any order): its
      // money is not in the balance yet, and the text says when it will be.
      text: policy.texts.cardRefundFailed(
        formatDollars(amount_micros),
        policy.cardRefundFailureWhy(e.status, e.failure_reason),
        resumed,
        this.payment(p.id)?.status === "succeeded",
        toDispute > 0n ? { kept: formatDollars(amount_micros - toDispute), taken: formatDollars(toDispute) } : null
      ),
      data: { payment: p.id, refund: e.refund_id, status: e.status, reason: e.failure_reason, credited: formatDollars(moved), ...(toDispute > 0n ? { to_dispute: formatDollars(toDispute) } : {}), auto_recharge: resumed ? "resumed" : null }
    })
    return moved
  }

  /**
   * A pause that the failed refund's payment held ends when no payment holding it has a refund
   * left at the provider: no money went back to any card, so charging one again undoes
   * nothing. While another refund still stands, of this payment or of another one refunded
   * while the pause lasted, the card that money went back to is still not charged.
   */
  private resumeAfterFailedRefund(p: PaymentRecord): boolean {
    const card = this.autoRecharge(p.account)
    if (card === undefined || card.paused_by === null) return false
    if (this.s.pausedByPayment.get(p.account, p.id) === undefined) return false
    if (this.s.pauseStanding.get(p.account) !== undefined) return false
    this.unpause(p.account)
    this.host.touch(p.account)
    return true
  }

  /** The pause ends, and no payment holds it any more. */
  private unpause(account: string): void {
    this.s.setPaused.run(null, account)
    this.s.clearPausedBy.run(account)
  }

  /**
   * A refund at the provider pauses the account's auto-recharge (if it has one and the refund
   * left it below its threshold), with a notification: charging the card again at once would
   * undo the refund an operator or the customer just asked for (docs/POLICY.md). A refund
   * made while it is paused holds the pause too, without a second notification.
   */
  private pauseAfterRefund(p: PaymentRecord, refunded: Micros): void {
    const card = this.autoRecharge(p.account)
    if (card === undefined) return
    if (card.paused_by !== null) {
      this.s.addPausedBy.run(p.account, p.id)
      return
    }
    if (this.host.spendable(p.account) >= card.threshold_micros) return
    this.s.clearPausedBy.run(p.account)
    this.s.setPaused.run(p.id, p.account)
    this.s.addPausedBy.run(p.account, p.id)
    this.notifier.notify({
      account: p.account,
      resource: null,
      at: this.clock.now(),
      severity: "warning",
      kind: "auto_recharge_paused",
      text: policy.texts.autoRechargePaused(formatDollars(refunded), formatDollars(card.threshold_micros)),
      data: { payment: p.id }
    })
  }

  /** pending/creating/failed → succeeded, once: the one `topup` row of this payment. */
  private succeed(p: PaymentRecord): boolean {
    if (p.status === "succeeded") return false
    const at = this.clock.now()
    const swapped = this.s.casStatus.run("succeeded", null, at, p.id, p.status).changes
    assert(swapped === 1, () => `payment ${p.id} changed under its credit`)
    const description = p.kind === "topup" ? policy.descriptions.topUpPayment(p.id) : policy.descriptions.autoRecharge(p.id)
    this.host.postPayment({ account: p.account, kind: "topup", amount_micros: p.amount_micros, resource: p.id, description })
    if (p.kind === "auto_recharge") {
      this.s.clearPending.run(p.id)
      // A success resets the count, also of settings turned off meanwhile.
      this.s.forgetBackoff.run(p.account)
    }
    return true
  }

  /**
   * creating/pending → failed, once; a failed auto-recharge waits and notifies. A decline
   * counts against the card: the wait doubles with each (backoffMs). A failure of the
   * provider's (`declined` false: an outage, a processing error) is not the card's: it leaves
   * the count as it is and waits AUTO_RECHARGE_PROVIDER_RETRY_MS, doubling with the run of
   * failures to AUTO_RECHARGE_PROVIDER_RETRY_MAX_MS, and the text does not ask for another
   * card (docs/POLICY.md).
   */
  private fail(p: PaymentRecord, code: string, declined: boolean): boolean {
    if (p.status === "succeeded" || p.status === "failed") return false
    const at = this.clock.now()
    this.s.casStatus.run("failed", code, at, p.id, p.status)
    if (p.kind !== "auto_recharge") return true
    const card = this.autoRecharge(p.account)
    // Turned off while the charge was in flight: its failure still counts against the card,
    // in the backoff kept for it (saving the same card again takes it back). Else deleting the
    // settings before the answer and saving them again charged a declining card at once.
    if (card === undefined) return this.failWhileOff(p.account, at, declined)
    if (card.pending_payment !== p.id) return true
    // A provider failure that repeats (a processing error the issuer keeps returning, an
    // invalid request) backs off too, by the run of failures since the last success, to a
    // lower cap (docs/POLICY.md).
    const wait = declined
      ? backoffMs(card.declines + 1)
      : Math.min(policy.AUTO_RECHARGE_PROVIDER_RETRY_MAX_MS, Math.max(policy.AUTO_RECHARGE_PROVIDER_RETRY_MS, backoffMs(this.failuresSinceSuccess(p.account))))
    if (declined) this.s.setDeclined.run(card.declines + 1, at, at + wait, p.account)
    else this.s.setRetry.run(at + wait, p.account)
    this.notifier.notify({
      account: p.account,
      resource: null,
      at,
      severity: "critical",
      kind: declined ? "auto_recharge_declined" : "auto_recharge_failed",
      text: (declined ? policy.texts.autoRechargeDeclined : policy.texts.autoRechargeFailed)(formatDollars(p.amount_micros), Math.round(wait / policy.MS_PER_MINUTE)),
      data: { payment: p.id, code, retry_at: at + wait }
    })
    this.armRetry(p.account, at + wait)
    return true
  }

  /** A failed auto-recharge of settings since turned off: the backoff kept for its card (if any) counts it. */
  private failWhileOff(account: string, at: number, declined: boolean): true {
    const kept = this.s.backoff.get(account) as { declines: number | bigint } | undefined
    if (kept === undefined) return true
    const declines = Number(kept.declines)
    if (declined) this.s.setBackoffDeclined.run(declines + 1, at, at + backoffMs(declines + 1), account)
    else this.s.setBackoffRetry.run(at + Math.min(policy.AUTO_RECHARGE_PROVIDER_RETRY_MAX_MS, Math.max(policy.AUTO_RECHARGE_PROVIDER_RETRY_MS, backoffMs(this.failuresSinceSuccess(account)))), account)
    return true
  }

  /** The account's auto-recharges that failed since its last one that succeeded (this one included). */
  private failuresSinceSuccess(account: string): number {
    return Number((this.s.failedSinceSuccess.get(account, account) as { n: bigint }).n)
  }

  private armRetry(account: string, at: number): void {
    const armed = this.retryTimers.get(account)
    if (armed !== undefined) this.clock.clearTimeout(armed)
    this.retryTimers.set(
      account,
      this.clock.schedule(
        at,
        () => {
          this.retryTimers.delete(account)
          this.host.background(() => {
            this.journal.append(this.clock.now(), "auto_recharge_retry", { account })
            this.host.touch(account)
          })
        },
        { lane: Lane.engine, key: `recharge:${account}` }
      )
    )
  }

  /** When the burst guard lets the account be charged again, or null if it does now. */
  private burstEnd(account: string, at: number): number | null {
    const oldest = this.s.nthRecentRecharge.get(account, policy.AUTO_RECHARGE_BURST_MAX - 1) as { created_at: number } | undefined
    if (oldest === undefined) return null
    const end = oldest.created_at + policy.AUTO_RECHARGE_BURST_WINDOW_MS
    return end > at ? end : null
  }

  private maybeRecharge(account: string): void {
    const card = this.autoRecharge(account)
    if (card === undefined) return
    if (this.host.spendable(account) >= card.threshold_micros) {
      // Back at the threshold: a pause after a refund ends here.
      if (card.paused_by !== null) this.unpause(account)
      return
    }
    if (card.customer === null || card.pending_payment !== null || card.paused_by !== null) return
    // One charge in flight per account, whatever settings it was made under.
    if (this.s.rechargeInFlight.get(account) !== undefined) return
    const at = this.clock.now()
    if (card.retry_at !== null && at < card.retry_at) return
    const burst = this.burstEnd(account, at)
    // The guard holds until the oldest charge of the window leaves it; then look again.
    if (burst !== null) return this.armRetry(account, burst)
    const p = this.insertPayment(account, "auto_recharge", card.amount_micros)
    this.s.setPending.run(p.id, account)
    const request = this.requestOf(p, card)
    this.host.whenCommitted(() => this.port.chargeOffSession(request, (r) => this.recordIntent(p.id, r)))
  }
}

/**
 * Payments in the order they were made: by the number in their id. An id is `pay_` and its
 * number padded to 8 digits (`insertPayment`), so past 99,999,999 ids grow longer and text order
 * is wrong (`pay_100000000` sorts before `pay_99999999`); a longer id is a later one, and among
 * ids of one length text order is numeric. Keyset cursors compare `(length(id), id)` alike.
 */
const PAYMENT_ORDER = "length(id), id"
const PAYMENT_ORDER_DESC = "length(id) DESC, id DESC"

const prepare = (db: LedgerStore["db"]) => {
  const money = <S extends { safeIntegers(on?: boolean): S }>(stmt: S): S => stmt.safeIntegers(true)
  // Money columns come back as bigint; instants and counts as numbers.
  const fixNumbers = (row: Record<string, unknown> | undefined) => {
    if (row === undefined) return row
    for (const k of ["created_at", "updated_at", "declines", "last_decline_at", "retry_at", "legacy_at"]) if (typeof row[k] === "bigint") row[k] = Number(row[k])
    return row
  }
  const rows = (sql: string) => {
    const stmt = money(db.prepare(sql))
    return {
      get: (...args: unknown[]) => fixNumbers(stmt.get(...args) as Record<string, unknown> | undefined),
      all: (...args: unknown[]) => (stmt.all(...args) as Array<Record<string, unknown>>).map((r) => fixNumbers(r)!)
    }
  }
  return {
    insertPayment: db.prepare(`INSERT INTO payments (id, account, kind, amount_micros, status, created_at, updated_at) VALUES (?, ?, ?, ?, 'creating', ?, ?)`),
    /**
     * Payments made so far: the table's largest rowid (payments are never deleted, so it is their
     * count, and a rolled-back insert gives its rowid back as it gives its id). `count(*)` read
     * the whole table at every payment: a scan that grew with the platform's history.
     */
    countPayments: db.prepare(`SELECT coalesce(max(rowid), 0) AS n FROM payments`),
    payment: rows(`SELECT * FROM payments WHERE id = ?`),
    payments: rows(`SELECT * FROM payments ORDER BY ${PAYMENT_ORDER}`),
    paymentsOf: rows(
      `SELECT * FROM payments WHERE account = @account AND (@before IS NULL OR (length(id), id) < (length(@before), @before)) ORDER BY ${PAYMENT_ORDER_DESC} LIMIT @limit`
    ),
    byIntent: rows(`SELECT * FROM payments WHERE intent_id = ?`),
    byStatus: rows(`SELECT * FROM payments WHERE status = ? ORDER BY ${PAYMENT_ORDER}`),
    setIntent: db.prepare(`UPDATE payments SET intent_id = ?, updated_at = ? WHERE id = ? AND intent_id IS NULL`),
    casStatus: db.prepare(`UPDATE payments SET status = ?, failure_code = ?, updated_at = ? WHERE id = ? AND status = ?`),
    nthRecentRecharge: db.prepare(`SELECT created_at FROM payments WHERE account = ? AND kind = 'auto_recharge' ORDER BY created_at DESC, ${PAYMENT_ORDER_DESC} LIMIT 1 OFFSET ?`),
    event: db.prepare(`SELECT 1 FROM payment_events WHERE id = ?`),
    insertEvent: db.prepare(`INSERT INTO payment_events (id, type, received_at, outcome) VALUES (?, ?, ?, ?)`),
    refund: rows(`SELECT charge_id, payment_id, refunded_micros, gross_micros, reported_micros, legacy_micros, legacy_at, disputed_micros FROM payment_refunds WHERE charge_id = ?`),
    setDisputed: db.prepare(`UPDATE payment_refunds SET disputed_micros = ? WHERE charge_id = ?`),
    dispute: rows(`SELECT dispute_id, charge_id, payment_id, withdrawn_micros, reinstated_micros FROM payment_disputes WHERE dispute_id = ?`),
    upsertDispute: db.prepare(
      `INSERT INTO payment_disputes (dispute_id, charge_id, payment_id, withdrawn_micros, reinstated_micros, status, reason, updated_at)
       VALUES (@dispute_id, @charge_id, @payment_id, @withdrawn, @reinstated, @status, @reason, @at)
       ON CONFLICT(dispute_id) DO UPDATE SET status = coalesce(excluded.status, status), reason = coalesce(excluded.reason, reason), updated_at = excluded.updated_at`
    ),
    setDisputeWithdrawn: db.prepare(`UPDATE payment_disputes SET withdrawn_micros = ?, updated_at = ? WHERE dispute_id = ?`),
    setDisputeReinstated: db.prepare(`UPDATE payment_disputes SET reinstated_micros = ?, updated_at = ? WHERE dispute_id = ?`),
    /** What the charge's disputes took at the provider and kept: withdrawn less reinstated, per dispute. */
    disputedOf: rows(`SELECT coalesce(sum(withdrawn_micros - min(reinstated_micros, withdrawn_micros)), 0) AS net_micros FROM payment_disputes WHERE charge_id = ?`),
    /** The payment's charges other than the one given: how many, and what their card rows took (refunds and disputes). */
    otherCharges: rows(`SELECT count(*) AS n, coalesce(sum(refunded_micros + disputed_micros), 0) AS taken_micros FROM payment_refunds WHERE payment_id = ? AND charge_id <> ?`),
    insertRefund: db.prepare(`INSERT INTO payment_refunds (charge_id, payment_id, refunded_micros) VALUES (?, ?, 0) ON CONFLICT(charge_id) DO NOTHING`),
    reportRefund: db.prepare(`UPDATE payment_refunds SET gross_micros = ?, reported_micros = max(reported_micros, ?) WHERE charge_id = ?`),
    setRefunded: db.prepare(`UPDATE payment_refunds SET refunded_micros = ? WHERE charge_id = ?`),
    failedSinceSuccess: rows(
      `SELECT count(*) AS n FROM payments WHERE account = ? AND kind = 'auto_recharge' AND status = 'failed'
         AND created_at >= coalesce((SELECT max(created_at) FROM payments WHERE account = ? AND kind = 'auto_recharge' AND status = 'succeeded'), 0)`
    ),
    pausedByPayment: db.prepare(`SELECT 1 FROM auto_recharge_paused_by WHERE account = ? AND payment_id = ?`),
    /** A payment holding the account's pause that still has a refund booked. */
    pauseStanding: db.prepare(
      `SELECT 1 FROM auto_recharge_paused_by h JOIN payment_refunds r ON r.payment_id = h.payment_id WHERE h.account = ? AND r.refunded_micros > 0 LIMIT 1`
    ),
    addPausedBy: db.prepare(`INSERT INTO auto_recharge_paused_by (account, payment_id) VALUES (?, ?) ON CONFLICT DO NOTHING`),
    clearPausedBy: db.prepare(`DELETE FROM auto_recharge_paused_by WHERE account = ?`),
    failure: db.prepare(`SELECT 1 FROM payment_refund_failures WHERE refund_id = ?`),
    failedOf: rows(`SELECT coalesce(sum(amount_micros), 0) AS failed_micros FROM payment_refund_failures WHERE charge_id = ?`),
    madeOf: rows(`SELECT coalesce(sum(amount_micros), 0) AS made_micros FROM payment_refunds_made WHERE charge_id = ?`),
    insertMade: db.prepare(`INSERT INTO payment_refunds_made (refund_id, charge_id, payment_id, amount_micros) VALUES (?, ?, ?, ?) ON CONFLICT(refund_id) DO NOTHING`),
    insertFailure: db.prepare(
      `INSERT INTO payment_refund_failures (refund_id, charge_id, payment_id, amount_micros, status, failure_reason, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)`
    ),
    autoRecharge: rows(`SELECT account, threshold_micros, amount_micros, payment_method, customer, pending_payment, declines, last_decline_at, retry_at, paused_by FROM auto_recharge WHERE account = ?`),
    allAutoRecharge: rows(`SELECT account, threshold_micros, amount_micros, payment_method, customer, pending_payment, declines, last_decline_at, retry_at, paused_by FROM auto_recharge ORDER BY account`),
    /** The account's manual top-ups awaiting confirmation, made since the instant given (TOP_UP_PENDING_WINDOW_MS). */
    pendingTopUps: rows(`SELECT count(*) AS n FROM payments WHERE account = ? AND kind = 'topup' AND status IN ('creating', 'pending') AND created_at > ?`),
    rechargeInFlight: db.prepare(`SELECT 1 FROM payments WHERE account = ? AND kind = 'auto_recharge' AND status IN ('creating', 'pending') LIMIT 1`),
    upsertAutoRecharge: db.prepare(
      `INSERT INTO auto_recharge (account, threshold_micros, amount_micros, payment_method, customer, updated_at) VALUES (@account, @threshold, @amount, @payment_method, @customer, @at)
       ON CONFLICT(account) DO UPDATE SET threshold_micros = excluded.threshold_micros, amount_micros = excluded.amount_micros,
         payment_method = excluded.payment_method, customer = excluded.customer, paused_by = NULL, updated_at = excluded.updated_at,
         declines = CASE WHEN payment_method = excluded.payment_method THEN declines ELSE 0 END,
         last_decline_at = CASE WHEN payment_method = excluded.payment_method THEN last_decline_at ELSE NULL END,
         retry_at = CASE WHEN payment_method = excluded.payment_method THEN retry_at ELSE NULL END`
    ),
    deleteAutoRecharge: db.prepare(`DELETE FROM auto_recharge WHERE account = ?`),
    saveBackoff: db.prepare(
      `INSERT INTO auto_recharge_backoff (account, payment_method, declines, last_decline_at, retry_at)
       SELECT account, payment_method, declines, last_decline_at, retry_at FROM auto_recharge WHERE account = ? AND (declines > 0 OR retry_at IS NOT NULL OR pending_payment IS NOT NULL)
       ON CONFLICT(account) DO UPDATE SET payment_method = excluded.payment_method, declines = excluded.declines, last_decline_at = excluded.last_decline_at, retry_at = excluded.retry_at`
    ),
    restoreBackoff: db.prepare(
      `UPDATE auto_recharge SET declines = b.declines, last_decline_at = b.last_decline_at, retry_at = b.retry_at
       FROM auto_recharge_backoff b WHERE auto_recharge.account = ? AND b.account = auto_recharge.account AND b.payment_method = auto_recharge.payment_method`
    ),
    forgetBackoff: db.prepare(`DELETE FROM auto_recharge_backoff WHERE account = ?`),
    backoff: db.prepare(`SELECT declines FROM auto_recharge_backoff WHERE account = ?`),
    setBackoffDeclined: db.prepare(`UPDATE auto_recharge_backoff SET declines = ?, last_decline_at = ?, retry_at = ? WHERE account = ?`),
    setBackoffRetry: db.prepare(`UPDATE auto_recharge_backoff SET retry_at = ? WHERE account = ?`),
    /**
     * Settings saved again on the card their backoff was kept for take back the charge still in
     * flight on it, so its answer counts against the card as if they had never gone.
     */
    restorePending: db.prepare(
      `UPDATE auto_recharge SET pending_payment = (SELECT id FROM payments WHERE payments.account = auto_recharge.account AND kind = 'auto_recharge' AND status IN ('creating', 'pending') ORDER BY ${PAYMENT_ORDER_DESC} LIMIT 1)
       WHERE account = ? AND EXISTS (SELECT 1 FROM auto_recharge_backoff b WHERE b.account = auto_recharge.account AND b.payment_method = auto_recharge.payment_method)`
    ),
    setCustomer: db.prepare(`UPDATE auto_recharge SET customer = ? WHERE account = ?`),
    setPending: db.prepare(`UPDATE auto_recharge SET pending_payment = ? WHERE account = ?`),
    setPaused: db.prepare(`UPDATE auto_recharge SET paused_by = ? WHERE account = ?`),
    clearPending: db.prepare(`UPDATE auto_recharge SET pending_payment = NULL, declines = 0, retry_at = NULL WHERE pending_payment = ?`),
    setDeclined: db.prepare(`UPDATE auto_recharge SET pending_payment = NULL, declines = ?, last_decline_at = ?, retry_at = ? WHERE account = ?`),
    setRetry: db.prepare(`UPDATE auto_recharge SET pending_payment = NULL, retry_at = ? WHERE account = ?`),
    billing: db.prepare(`SELECT invoiced FROM account_billing WHERE account = ?`),
    upsertBilling: db.prepare(
      `INSERT INTO account_billing (account, invoiced, terms, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT(account) DO UPDATE SET invoiced = excluded.invoiced, terms = excluded.terms, updated_at = excluded.updated_at`
    )
  }
}
