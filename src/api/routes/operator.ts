/**
 * Operator routes: reachable only with the operator's key (a customer key is 401 here, as
 * the operator key is on customer routes). A credit adjustment goes through the supervisor
 * like every money movement (`credit(account, "adjustment", …)`).
 */
import type { FastifyInstance } from "fastify"
import { Either } from "effect"
import { formatDollars, parseDollars } from "../../money.js"
import { HttpError } from "../errors.js"
import { call, idempotent, spec, type ApiContext } from "../http.js"
import { moneySchema, obj } from "../views.js"

/** The idempotency scope of operator requests (an account id never has this shape). */
const OPERATOR_SCOPE = "@operator"

const accountParams = { type: "object", required: ["account"], additionalProperties: false, properties: { account: { type: "string", minLength: 1, maxLength: 100 } } }

export const operatorRoutes = (app: FastifyInstance, ctx: ApiContext): void => {
  const tags = ["Operator"]

  app.get("/operator/accounts/:account", spec({ tags, summary: "An account's balance", auth: "operator", params: accountParams, response: { 200: obj({ id: { type: "string" }, balance: moneySchema }) } }), async (request) => {
    const { account } = request.params as { account: string }
    return { id: account, balance: formatDollars(call(ctx, ctx.engine.sup.balance(account))) }
  })

  app.post(
    "/operator/accounts/:account/adjustments",
    spec({
      tags,
      summary: "Adjust an account: an adjustment row (the operator's correction, either sign)",
      description:
        "amount is a signed dollar string with at most 6 decimals, not zero. A negative adjustment cannot take the balance below $0 (402 insufficient_balance).",
      auth: "operator",
      params: accountParams,
      body: {
        type: "object",
        additionalProperties: false,
        required: ["amount", "description"],
        properties: { amount: { type: "string", maxLength: 32, description: "dollars, e.g. \"25.00\" or \"-5.00\"" }, description: { type: "string", minLength: 1, maxLength: 200 } }
      },
      response: { 201: obj({ account: { type: "string" }, amount: moneySchema, balance: moneySchema }) },
      idempotent: true
    }),
    async (request, reply) => {
      const { account } = request.params as { account: string }
      const b = request.body as { amount: string; description: string }
      const amount = parseDollars(b.amount)
      if (Either.isLeft(amount)) throw new HttpError(400, "invalid_amount", amount.left.message, "amount")
      return idempotent(ctx, request, reply, `${OPERATOR_SCOPE}`, () => {
        const balance = call(ctx, ctx.engine.sup.credit(account, "adjustment", amount.right, b.description))
        return { status: 201, body: { account, amount: formatDollars(amount.right), balance: formatDollars(balance) } }
      })
    }
  )
}
