/**
 * The payments port on the real `stripe` client (production; tests point it at the
 * Stripe-compatible server in test/payments/stripeServer.ts with `host`, `port` and
 * `protocol: "http"`). Every call carries the idempotency key the engine derived from its own
 * payment row, so a call repeated after a crash gets the same object back from Stripe.
 */
import Stripe from "stripe"
import { decodeListedRefunds, isCardDecline, REFUND_LIST_MAX, type CardResult, type IntentRequest, type IntentResult, type PaymentsPort, type RefundListing } from "./payments.js"
import * as policy from "./policy.js"

export interface StripeConfig {
  readonly api_key: string
  readonly host?: string
  readonly port?: number
  readonly protocol?: "http" | "https"
  /** stripe-node's own retries of a failed request (same idempotency key). */
  readonly max_network_retries?: number
}

const nonEmpty = (s: string | undefined): string | null => (s === undefined || s === "" ? null : s)

/**
 * A refused PaymentIntent call: a decline when Stripe says the card was at fault
 * (`isCardDecline`); an error of any other kind (an API error, an outage, no answer at all)
 * is the provider's.
 */
const failure = (e: unknown): IntentResult => {
  const err = e as { type?: string; rawType?: string; code?: string; decline_code?: string; message?: string; payment_intent?: { id?: string } }
  const declined = isCardDecline(err.rawType ?? (err.type === "StripeCardError" ? "card_error" : "api_error"), nonEmpty(err.code))
  return {
    ok: false,
    intent_id: err.payment_intent?.id ?? null,
    // stripe-node gives a card error without a decline code `decline_code: ""` (expired_card,
    // processing_error…): an empty code is no code.
    code: nonEmpty(err.decline_code) ?? nonEmpty(err.code) ?? (declined ? "card_declined" : "provider_error"),
    message: err.message ?? "the payment provider refused the request",
    declined
  }
}

export class StripePayments implements PaymentsPort {
  readonly stripe: Stripe

  constructor(config: StripeConfig) {
    this.stripe = new Stripe(config.api_key, {
      ...(config.host === undefined ? {} : { host: config.host }),
      ...(config.port === undefined ? {} : { port: config.port }),
      ...(config.protocol === undefined ? {} : { protocol: config.protocol }),
      maxNetworkRetries: config.max_network_retries ?? 2,
      telemetry: false
    })
  }

  createIntent(req: IntentRequest, done: (r: IntentResult) => void): void {
    this.stripe.paymentIntents
      .create(
        { amount: req.amount_cents, currency: req.currency, metadata: { payment_id: req.payment_id, account: req.account, kind: req.kind }, automatic_payment_methods: { enabled: true } },
        { idempotencyKey: req.idempotency_key }
      )
      .then(
        (pi) => done({ ok: true, intent_id: pi.id, client_secret: pi.client_secret, status: pi.status }),
        (e: unknown) => done(failure(e))
      )
  }

  chargeOffSession(req: IntentRequest, done: (r: IntentResult) => void): void {
    if (req.customer === null || req.payment_method === null) {
      queueMicrotask(() => done({ ok: false, intent_id: null, code: "no_saved_card", message: "the account has no saved card", declined: true }))
      return
    }
    this.stripe.paymentIntents
      .create(
        {
          amount: req.amount_cents,
          currency: req.currency,
          customer: req.customer,
          payment_method: req.payment_method,
          off_session: true,
          confirm: true,
          metadata: { payment_id: req.payment_id, account: req.account, kind: req.kind }
        },
        { idempotencyKey: req.idempotency_key }
      )
      .then(
        (pi) => done({ ok: true, intent_id: pi.id, client_secret: null, status: pi.status }),
        (e: unknown) => done(failure(e))
      )
  }

  saveCard(req: { readonly account: string; readonly payment_method: string; readonly idempotency_key: string }, done: (r: CardResult) => void): void {
    const run = async (): Promise<CardResult> => {
      const customer = await this.stripe.customers.create({ metadata: { account: req.account } }, { idempotencyKey: `${req.idempotency_key}-customer` })
      await this.stripe.paymentMethods.attach(req.payment_method, { customer: customer.id }, { idempotencyKey: `${req.idempotency_key}-attach` })
      await this.stripe.customers.update(customer.id, { invoice_settings: { default_payment_method: req.payment_method } }, { idempotencyKey: `${req.idempotency_key}-default` })
      return { ok: true, customer: customer.id, payment_method: req.payment_method }
    }
    run().then(done, (e: unknown) => done({ ok: false, code: (e as { code?: string }).code ?? "provider_error", message: (e as Error).message }))
  }

  /**
   * `GET /v1/refunds?charge=…`, 100 a page (Stripe's most), every page up to REFUND_LIST_MAX
   * refunds, within REFUND_LIST_DEADLINE_MS in all (a webhook waits for it). Stripe lists the
   * newest first; the port answers the oldest first. A failure is transient (worth the
   * webhook's retry) unless Stripe refused the request itself (`StripeInvalidRequestError`, a
   * 400 or 404: no such charge on this key's account or mode), which no retry changes.
   */
  listRefunds(charge_id: string, done: (r: RefundListing) => void): void {
    let timer: ReturnType<typeof setTimeout> | undefined
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Stripe did not list the refunds of ${charge_id} within ${policy.REFUND_LIST_DEADLINE_MS} ms`)), policy.REFUND_LIST_DEADLINE_MS)
    })
    const listed = this.stripe.refunds.list({ charge: charge_id, limit: 100 }, { timeout: policy.REFUND_LIST_DEADLINE_MS }).autoPagingToArray({ limit: REFUND_LIST_MAX })
    Promise.race([listed, deadline]).then(
      (refunds) => {
        clearTimeout(timer)
        done({ ok: true, refunds: [...decodeListedRefunds(charge_id, refunds)].reverse() })
      },
      (e: unknown) => {
        clearTimeout(timer)
        const err = e as { type?: string; code?: string; message?: string }
        const transient = err.type !== "StripeInvalidRequestError"
        done({ ok: false, code: nonEmpty(err.code) ?? "provider_error", message: err.message ?? "the payment provider did not list the refunds", transient })
      }
    )
  }
}
