/**
 * Storage (SPEC §5): cloud drives (`/cloud-drives`) and shared filesystems
 * (`/shared-filesystems`): create, list, detail, delete (409 while attached). Attaching is
 * part of a launch (`drive`, `filesystems` on `POST /gpu-instances`; a `shared_fs` model's
 * filesystem on an inference instance); `in_use` says at least one instance has it.
 */
import type { FastifyInstance } from "fastify"
import type { StorageKind } from "../../../machines/storage.js"
import * as policy from "../../policy.js"
import type { StorageView } from "../../resources.js"
import { callerOf } from "../auth.js"
import { call, idempotent, idParams, keyOf, spec, type ApiContext } from "../http.js"
import { newId } from "../secrets.js"
import { StorageSchema, storageJson, page } from "../views.js"
import { describeAs, listQuery, pageOf } from "./common.js"

export const storageRoutes = (app: FastifyInstance, ctx: ApiContext): void => {
  for (const kind of ["cloud_drive", "shared_fs"] as const satisfies ReadonlyArray<StorageKind>) {
    const base = kind === "cloud_drive" ? "/cloud-drives" : "/shared-filesystems"
    const what = kind === "cloud_drive" ? "cloud drive" : "shared filesystem"
    const tags = ["Storage"]

    app.post(
      base,
      spec({
        tags,
        summary: `Create a ${what}`,
        description: "Charged size_gb × daily_rate_per_gb every day at 00:00 UTC, attached or idle.",
        auth: "account",
        body: {
          type: "object",
          additionalProperties: false,
          required: ["size_gb", "region"],
          properties: { size_gb: { type: "integer", minimum: 1, maximum: policy.STORAGE_SIZE_GB_MAX }, region: { type: "string", minLength: 1, maxLength: 100 } }
        },
        response: { 201: StorageSchema },
        idempotent: true
      }),
      async (request, reply) => {
        const auth = keyOf(request)
        const b = request.body as { size_gb: number; region: string }
        return idempotent(ctx, request, reply, auth.account, () => {
          const id = newId(ctx.secrets, kind === "cloud_drive" ? "cd-" : "fs-")
          const view = call(ctx, ctx.engine.sup.createStorage({ account: auth.account, id, kind, size_gb: b.size_gb, region: b.region }, callerOf(auth)))
          return { status: 201, body: storageJson(view) }
        })
      }
    )

    app.get(base, spec({ tags, summary: `List your ${what}s`, auth: "account", querystring: listQuery, response: { 200: page(StorageSchema, "next_after") } }), async (request) =>
      pageOf(ctx, keyOf(request), [kind], request.query as { limit?: string; after?: string }, (v) => storageJson(v as StorageView))
    )

    app.get(`${base}/:id`, spec({ tags, summary: `A ${what}`, auth: "account", params: idParams(), response: { 200: StorageSchema } }), async (request) =>
      storageJson(describeAs(ctx, keyOf(request), (request.params as { id: string }).id, [kind]) as StorageView)
    )

    app.delete(
      `${base}/:id`,
      spec({ tags, summary: `Delete a ${what} and its data (409 while attached)`, auth: "account", params: idParams(), response: { 200: StorageSchema } }),
      async (request) => {
        const auth = keyOf(request)
        const id = (request.params as { id: string }).id
        describeAs(ctx, auth, id, [kind])
        return storageJson(call(ctx, ctx.engine.sup.deleteStorage(id, callerOf(auth))) as StorageView)
      }
    )
  }
}
