/**
 * Payments (issue 6): card top-ups, auto-recharge settings, the Stripe webhook, and the
 * operator's invoiced (NET-30) flag. Registered only when the engine has a payment provider
 * and the app a webhook secret. Rules stay in src/payments.ts; this plugin decodes and encodes.
 *
 * The webhook verifies Stripe's signature on the raw body (a content-type parser scoped to its
 * own plugin keeps the text), with the tolerance window measured on the engine's clock; a bad
 * signature is 400 and books nothing.
 */
import type { FastifyInstance } from "fastify"
import { Either } from "effect"
import Stripe from "stripe"
import { formatDollars, parseDollars, type Micros } from "../../money.js"
import { decodeStripeEvent, type PaymentBook, type PaymentRecord, type Received } from "../../payments.js"
import * as policy from "../../policy.js"
import { HttpError } from "../errors.js"
import { idempotentAsync, keyOf, limitOf, spec, type ApiContext } from "../http.js"
import { moneySchema, obj } from "../views.js"

const dollarsOf = (field: string, raw: string): Micros => {
  const parsed = parseDollars(raw)
  if (Either.isLeft(parsed)) throw new HttpError(400, "invalid_amount", parsed.left.message, field)
  return parsed.right
}

const paymentJson = (p: PaymentRecord) => ({ id: p.id, kind: p.kind, amount: formatDollars(p.amount_micros), status: p.status, payment_intent: p.intent_id })
const PaymentSchema = obj({
  id: { type: "string" },
  kind: { type: "string" },
  amount: moneySchema,
  status: { type: "string" },
  payment_intent: { type: ["string", "null"] }
})

const fromEither = <A, E>(e: Either.Either<A, E>): A => {
  if (Either.isRight(e)) return e.right
  throw e.left
}

export const paymentRoutes = async (app: FastifyInstance, ctx: ApiContext, book: PaymentBook, webhook_secret: string): Promise<void> => {
  const tags = ["Billing"]

  app.post(
    "/billing/top-ups",
    spec({
      tags,
      summary: "Top up by card: creates a PaymentIntent; the wallet is credited when Stripe confirms the payment",
      description: `amount is dollars, $${formatDollars(policy.TOP_UP_MIN_MICROS)} to $${formatDollars(policy.TOP_UP_MAX_MICROS)}, whole cents.`,
      auth: "account",
      body: { type: "object", additionalProperties: false, required: ["amount"], properties: { amount: { type: "string", maxLength: 32 } } },
      response: { 201: obj({ payment: PaymentSchema, client_secret: { type: ["string", "null"] } }) },
      idempotent: true
    }),
    async (request, reply) => {
      const account = keyOf(request).account
      const amount = dollarsOf("amount", (request.body as { amount: string }).amount)
      // A repeat with the same Idempotency-Key answers the first PaymentIntent, never a second.
      return idempotentAsync(ctx, request, reply, account, async (attempt) => {
        const { payment, intent } = fromEither(await book.topUp(account, amount, attempt))
        if (!intent.ok) {
          if (intent.declined) throw new HttpError(402, "payment_failed", intent.message)
          // Not the customer's doing: an outage or an error at the provider. Nothing was charged
          // (a PaymentIntent is charged only when the customer confirms it). The answer names
          // the provider's error code, not its message, which is written for us (an
          // authentication error's shows the end of our secret key): that goes to the log.
          request.log.warn({ payment: payment.id, code: intent.code, provider_message: intent.message }, "payment provider error on a top-up")
          throw new HttpError(502, "payment_provider_error", `the payment provider did not create the payment (${intent.code}); nothing was charged, try again`)
        }
        return { status: 201, body: { payment: paymentJson(payment), client_secret: intent.client_secret } }
      })
    }
  )

  app.put(
    "/billing/auto-recharge",
    spec({
      tags,
      summary: "Auto-recharge (owner only): charge the saved card `amount` when the balance falls below `threshold`",
      auth: "account",
      // The card charged is the owner's business: a member sharing the wallet may spend it,
      // not choose the card it is refilled from, nor turn the refill off (security review).
      role: "owner",
      body: {
        type: "object",
        additionalProperties: false,
        required: ["threshold", "amount", "payment_method"],
        properties: { threshold: { type: "string", maxLength: 32 }, amount: { type: "string", maxLength: 32 }, payment_method: { type: "string", minLength: 1, maxLength: 100 } }
      },
      response: { 200: obj({ threshold: moneySchema, amount: moneySchema, payment_method: { type: "string" }, card_saved: { type: "boolean" } }) }
    }),
    async (request) => {
      const account = keyOf(request).account
      const b = request.body as { threshold: string; amount: string; payment_method: string }
      const saved = fromEither(book.setAutoRecharge(account, { threshold_micros: dollarsOf("threshold", b.threshold), amount_micros: dollarsOf("amount", b.amount), payment_method: b.payment_method }))!
      return { threshold: formatDollars(saved.threshold_micros), amount: formatDollars(saved.amount_micros), payment_method: saved.payment_method, card_saved: saved.customer !== null }
    }
  )

  app.get(
    "/billing/payments",
    spec({
      tags,
      summary: "Your card payments (top-ups and auto-recharges), newest first",
      auth: "account",
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: { limit: { type: "string", pattern: "^[0-9]{1,3}$" }, before: { type: "string", maxLength: 100 } }
      },
      response: { 200: obj({ data: { type: "array", items: PaymentSchema }, next_before: { type: ["string", "null"] } }) }
    }),
    async (request) => {
      const q = request.query as { limit?: string; before?: string }
      const limit = limitOf(q.limit)
      const rows = book.paymentsOf(keyOf(request).account, q.before ?? null, limit + 1)
      const shown = rows.slice(0, limit)
      return { data: shown.map(paymentJson), next_before: rows.length > limit ? shown[shown.length - 1]!.id : null }
    }
  )

  app.delete(
    "/billing/auto-recharge",
    spec({ tags, summary: "Turn auto-recharge off (owner only; the saved card stays with Stripe)", auth: "account", role: "owner", response: { 200: obj({ auto_recharge: { type: "null" } }) } }),
    async (request) => {
      fromEither(book.setAutoRecharge(keyOf(request).account, null))
      return { auto_recharge: null }
    }
  )

  app.put(
    "/operator/accounts/:account/invoiced",
    spec({
      tags: ["Operator"],
      summary: "Mark an enterprise account invoiced (NET-30) or not; it is credited by adjustments",
      auth: "operator",
      params: { type: "object", required: ["account"], additionalProperties: false, properties: { account: { type: "string", minLength: 1, maxLength: 100 } } },
      body: { type: "object", additionalProperties: false, required: ["invoiced"], properties: { invoiced: { type: "boolean" } } },
      response: { 200: obj({ account: { type: "string" }, invoiced: { type: "boolean" }, terms: { type: ["string", "null"] } }) }
    }),
    async (request) => {
      const { account } = request.params as { account: string }
      const r = fromEither(book.setInvoiced(account, (request.body as { invoiced: boolean }).invoiced))
      return { account: r.account, invoiced: r.invoiced, terms: r.invoiced ? "NET-30" : null }
    }
  )

  await app.register(async (scope) => {
    // The signature is over the exact bytes Stripe sent: keep the body as text here.
    scope.removeContentTypeParser("application/json")
    scope.addContentTypeParser("application/json", { parseAs: "string" }, (_request, body, done) => done(null, body))
    scope.post(
      "/webhooks/stripe",
      spec({
        tags: ["Webhooks"],
        summary: "Stripe events (signed): top-ups confirmed, payments failed, refunds",
        auth: "public",
        body: { type: "string" },
        response: { 200: obj({ received: { type: "boolean" }, outcome: { type: "string" } }) }
      }),
      async (request) => {
        const signature = request.headers["stripe-signature"]
        const raw = request.body as string
        let event: unknown
        try {
          if (typeof signature !== "string") throw new Error("no Stripe-Signature header")
          event = Stripe.webhooks.constructEvent(raw, signature, webhook_secret, policy.WEBHOOK_TOLERANCE_S, undefined, ctx.engine.clock.now())
        } catch (e) {
          // stripe-node parses the body only once the signature verified.
          if (e instanceof SyntaxError) throw new HttpError(400, "invalid_event", "the event is not JSON", "body")
          throw new HttpError(400, "invalid_signature", `the webhook signature does not verify: ${(e as Error).message}`, "stripe-signature")
        }
        const decoded = decodeStripeEvent(event)
        if (decoded === null) throw new HttpError(400, "invalid_event", "the event is not one this endpoint can read", "body")
        // A charge.refunded that tells too little waits here for Stripe to list the charge's
        // refunds (at most REFUND_LIST_DEADLINE_MS); every other event is booked at once.
        const received = await new Promise<Either.Either<Received, unknown>>((resolve) => book.receive(decoded, resolve))
        if (Either.isLeft(received)) throw received.left
        const r = received.right
        if (!r.booked) throw new HttpError(503, "engine_stopping", "the engine stopped before the payment provider answered; nothing was booked: deliver the event again")
        // Like a top-up Stripe could not create (502 payment_provider_error): the provider's
        // failure is answered as one, and Stripe, which retries a webhook not answered 2xx,
        // delivers the event again; it was booked as far as it tells and not recorded, so that
        // delivery lists the refunds and books the rest (docs/POLICY.md).
        if (r.listing_failed !== null) {
          throw new HttpError(502, "payment_provider_error", `the payment provider did not list the charge's refunds (${r.listing_failed.message}); the event was booked as far as it tells, deliver it again`)
        }
        return { received: true, outcome: r.outcome }
      }
    )
  })
}
