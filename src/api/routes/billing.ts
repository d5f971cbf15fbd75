/**
 * Billing (the manual's Billing page): the balance, the transactions (the ledger, newest
 * first, paginated by row id, filtered by kind and resource), and API usage by model.
 */
import type { FastifyInstance } from "fastify"
import { LEDGER_ROW_KINDS } from "../../ledger/migrations.js"
import { formatDollars } from "../../money.js"
import { HttpError } from "../errors.js"
import { call, keyOf, limitOf, spec, type ApiContext } from "../http.js"
import { LedgerRowSchema, ledgerJson, moneySchema, obj, page } from "../views.js"

const INSTANT_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?Z$/

const instantOf = (field: string, raw: string | undefined, fallback: number): number => {
  if (raw === undefined) return fallback
  const ms = INSTANT_RE.test(raw) ? Date.parse(raw) : NaN
  // `Date.parse` rolls a day that does not exist (2026-02-31) into the next month; refuse it.
  if (!Number.isSafeInteger(ms) || new Date(ms).toISOString().slice(0, 10) !== raw.slice(0, 10)) throw new HttpError(400, "invalid_request", `${field} must be an ISO-8601 UTC instant like 2026-03-01T00:00:00Z`, field)
  return ms
}

export const billingRoutes = (app: FastifyInstance, ctx: ApiContext): void => {
  const tags = ["Billing"]

  app.get("/billing/balance", spec({ tags, summary: "The account's balance (dollars)", auth: "account", response: { 200: obj({ balance: moneySchema }) } }), async (request) => ({
    balance: formatDollars(call(ctx, ctx.engine.sup.balance(keyOf(request).account)))
  }))

  app.get(
    "/billing/transactions",
    spec({
      tags,
      summary: "Transactions: every change of the balance, newest first",
      auth: "account",
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: {
          kind: { type: "string", maxLength: 200, description: `comma-separated: ${LEDGER_ROW_KINDS.join(", ")}` },
          resource: { type: "string", minLength: 1, maxLength: 256, description: "a resource id, or a model for api_usage rows" },
          before: { type: "string", pattern: "^[0-9]{1,15}$", description: "the next_before of the previous page" },
          limit: { type: "string", pattern: "^[0-9]{1,4}$", description: "1 to 100, default 20" }
        }
      },
      response: { 200: page(LedgerRowSchema, "next_before") }
    }),
    async (request) => {
      const auth = keyOf(request)
      const q = request.query as { kind?: string; resource?: string; before?: string; limit?: string }
      const limit = limitOf(q.limit)
      const kinds = q.kind === undefined ? null : q.kind.split(",")
      for (const k of kinds ?? []) {
        if (!(LEDGER_ROW_KINDS as ReadonlyArray<string>).includes(k)) throw new HttpError(400, "invalid_request", `kind must be among ${LEDGER_ROW_KINDS.join(", ")}`, "kind")
      }
      const rows = ctx.engine.ledger.ledgerPage(auth.account, { kinds, resource: q.resource ?? null, before: q.before === undefined ? null : Number(q.before), limit: limit + 1 })
      const shown = rows.slice(0, limit)
      return { data: shown.map(ledgerJson), next_before: rows.length > limit ? String(shown[shown.length - 1]!.id) : null }
    }
  )

  app.get(
    "/billing/usage",
    spec({
      tags,
      summary: "API usage by model over [from, to): what it cost and in how many ledger rows",
      auth: "account",
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: { from: { type: "string", maxLength: 40 }, to: { type: "string", maxLength: 40 } }
      },
      response: {
        200: obj({
          from: { type: ["string", "null"] },
          to: { type: ["string", "null"] },
          total: moneySchema,
          models: { type: "array", items: obj({ model: { type: "string" }, amount: moneySchema, rows: { type: "integer" } }) }
        })
      }
    }),
    async (request) => {
      const auth = keyOf(request)
      const q = request.query as { from?: string; to?: string }
      const from = instantOf("from", q.from, 0)
      const to = instantOf("to", q.to, Number.MAX_SAFE_INTEGER)
      const usage = ctx.engine.ledger.apiUsageByModel(auth.account, from, to)
      const total = usage.reduce((sum, u) => sum + u.amount_micros, 0n)
      return {
        from: q.from === undefined ? null : new Date(from).toISOString(),
        to: q.to === undefined ? null : new Date(to).toISOString(),
        total: formatDollars(total),
        models: usage.map((u) => ({ model: u.model, amount: formatDollars(u.amount_micros), rows: u.rows }))
      }
    }
  )
}
