/** Helpers the resource routes share: kind-checked lookups and keyset pages of views. */
import { NotFound } from "../../errors.js"
import type { ResourceView } from "../../resources.js"
import { callerOf } from "../auth.js"
import { call, limitOf, type ApiContext, type KeyAuth } from "../http.js"

/**
 * The caller's resource `id` if it is of one of `kinds`; 404 `resource_not_found` otherwise,
 * exactly as for an id that does not exist or belongs to another account, so a route of one
 * kind never acts on another kind (DELETE /gpu-instances/<a drive> deletes nothing).
 */
export const describeAs = <K extends ResourceView["kind"]>(ctx: ApiContext, auth: KeyAuth, id: string, kinds: ReadonlyArray<K>): Extract<ResourceView, { kind: K }> => {
  const view = call(ctx, ctx.engine.sup.describe(id, callerOf(auth)))
  if (!(kinds as ReadonlyArray<string>).includes(view.kind)) throw new NotFound({ code: "resource_not_found", id })
  return view as Extract<ResourceView, { kind: K }>
}

/** One page of the caller's resources of `kinds`, by id, after `after`. */
export const pageOf = <K extends ResourceView["kind"], J>(
  ctx: ApiContext,
  auth: KeyAuth,
  kinds: ReadonlyArray<K>,
  query: { readonly limit?: string; readonly after?: string },
  encode: (v: Extract<ResourceView, { kind: K }>) => J
): { data: J[]; next_after: string | null } => {
  const limit = limitOf(query.limit)
  const views = call(ctx, ctx.engine.sup.list(auth.account, { kinds, after: query.after ?? null, limit: limit + 1 }, callerOf(auth)))
  const more = views.length > limit
  const shown = views.slice(0, limit) as Array<Extract<ResourceView, { kind: K }>>
  return { data: shown.map(encode), next_after: more ? shown[shown.length - 1]!.id : null }
}

export const listQuery = {
  type: "object",
  additionalProperties: false,
  properties: {
    limit: { type: "string", pattern: "^[0-9]{1,4}$", description: "1 to 100, default 20" },
    after: { type: "string", maxLength: 100, description: "the next_after of the previous page" }
  }
} as const
