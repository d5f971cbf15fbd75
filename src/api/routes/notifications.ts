/** Notifications (the bell and the Messages page): list, unread count, mark read. */
import type { FastifyInstance } from "fastify"
import { HttpError } from "../errors.js"
import { keyOf, limitOf, spec, type ApiContext } from "../http.js"
import { NotificationSchema, notificationJson, obj, page } from "../views.js"

export const notificationRoutes = (app: FastifyInstance, ctx: ApiContext): void => {
  const tags = ["Notifications"]
  const now = () => ctx.engine.clock.now()

  app.get(
    "/notifications",
    spec({
      tags,
      summary: "Notifications, newest first",
      auth: "account",
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: {
          unread: { type: "string", enum: ["true", "false"], description: "true: only unread ones" },
          before: { type: "string", pattern: "^[0-9]{1,15}$", description: "the next_before of the previous page" },
          limit: { type: "string", pattern: "^[0-9]{1,4}$", description: "1 to 100, default 20" }
        }
      },
      response: { 200: page(NotificationSchema, "next_before") }
    }),
    async (request) => {
      const auth = keyOf(request)
      const q = request.query as { unread?: string; before?: string; limit?: string }
      const limit = limitOf(q.limit)
      const rows = ctx.engine.ledger.notificationsOf(auth.account, { unread: q.unread === "true", before: q.before === undefined ? null : Number(q.before), limit: limit + 1 })
      const shown = rows.slice(0, limit)
      return { data: shown.map(notificationJson), next_before: rows.length > limit ? String(shown[shown.length - 1]!.id) : null }
    }
  )

  app.get("/notifications/unread-count", spec({ tags, summary: "How many notifications are unread (the bell's red dot)", auth: "account", response: { 200: obj({ unread: { type: "integer" } }) } }), async (request) => ({
    unread: ctx.engine.ledger.unreadCount(keyOf(request).account)
  }))

  app.post(
    "/notifications/:id/read",
    spec({
      tags,
      summary: "Mark one notification read (again: no change)",
      auth: "account",
      params: { type: "object", required: ["id"], additionalProperties: false, properties: { id: { type: "string", pattern: "^[0-9]{1,15}$" } } },
      response: { 200: obj({ id: { type: "integer" }, read: { type: "boolean" }, read_at: { type: "string", format: "date-time" } }) }
    }),
    async (request) => {
      const auth = keyOf(request)
      const id = Number((request.params as { id: string }).id)
      const owner = ctx.engine.ledger.notificationOwner(id)
      if (owner === undefined || owner.account !== auth.account) throw new HttpError(404, "notification_not_found", `notification ${id} not found`)
      if (owner.read_at === null) ctx.engine.ledger.markRead(auth.account, [id], now())
      return { id, read: true, read_at: new Date(ctx.engine.ledger.notificationOwner(id)!.read_at!).toISOString() }
    }
  )

  app.post("/notifications/read-all", spec({ tags, summary: "Mark every notification read", auth: "account", response: { 200: obj({ marked: { type: "integer" } }) } }), async (request) => ({
    marked: ctx.engine.ledger.markRead(keyOf(request).account, "all", now())
  }))
}
