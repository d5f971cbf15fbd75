/**
 * GPU instances and GPU clusters (SPEC §3): launch, list, detail, extend, terminate. The
 * same routes for both kinds under `/gpu-instances` and `/gpu-clusters`; a route answers 404
 * for an id of the other kind.
 */
import type { FastifyInstance } from "fastify"
import { extendAnswer } from "../../answers.js"
import * as policy from "../../policy.js"
import type { GpuView } from "../../resources.js"
import { callerOf } from "../auth.js"
import { call, idempotent, idParams, keyOf, spec, type ApiContext } from "../http.js"
import { newId } from "../secrets.js"
import { GpuSchema, gpuJson, iso, obj, page } from "../views.js"
import { describeAs, listQuery, pageOf } from "./common.js"

interface LaunchBody {
  readonly gpu: string
  readonly gpu_count: number
  readonly node_count?: number
  readonly region: string
  readonly estimated_duration_hours: number
  readonly image?: string | null
  readonly drive?: string | null
  readonly filesystems?: ReadonlyArray<string>
}

const name = { type: "string", minLength: 1, maxLength: 100 } as const
const hours = { type: "integer", minimum: policy.DURATION_HOURS_MIN, maximum: policy.DURATION_HOURS_MAX } as const
const gpuCount = { type: "integer", minimum: 1, maximum: policy.GPU_COUNT_MAX } as const

const launchBody = (cluster: boolean) => ({
  type: "object",
  additionalProperties: false,
  required: ["gpu", "gpu_count", "region", "estimated_duration_hours", ...(cluster ? ["node_count"] : [])],
  properties: {
    gpu: name,
    gpu_count: { ...gpuCount, description: cluster ? "GPUs per node" : "GPUs" },
    ...(cluster ? { node_count: { type: "integer", minimum: 1, maximum: policy.NODE_COUNT_MAX } } : {}),
    region: name,
    estimated_duration_hours: { ...hours, description: "whole hours; the instance stops at started_at + this (+ extensions)" },
    image: { type: ["string", "null"], maxLength: 512 },
    ...(cluster
      ? {}
      : {
          drive: { type: ["string", "null"], minLength: 1, maxLength: 100, description: "a cloud drive of yours to attach" },
          filesystems: { type: "array", maxItems: 16, items: name, description: "shared filesystems of yours to mount, each once (400 duplicate_storage)" }
        })
  }
})

const ExtendSchema = obj({
  additional_cost: { type: "number", description: "dollars held for the extension (the manual's number)" },
  new_balance: { type: "number", description: "dollars left after the hold" },
  deadline_at: { type: ["string", "null"], format: "date-time" }
})

export const gpuRoutes = (app: FastifyInstance, ctx: ApiContext): void => {
  for (const kind of ["gpu_instance", "gpu_cluster"] as const) {
    const cluster = kind === "gpu_cluster"
    const base = cluster ? "/gpu-clusters" : "/gpu-instances"
    const tags = [cluster ? "GPU clusters" : "GPU instances"]
    const what = cluster ? "GPU cluster" : "GPU instance"
    const now = () => ctx.engine.clock.now()
    const json = (v: GpuView) => gpuJson(v, now())

    app.post(
      base,
      spec({
        tags,
        summary: `Launch a ${what}`,
        description: "Holds estimated_duration_hours × hourly_rate × GPUs at once (402 insufficient_balance if the balance cannot cover it).",
        auth: "account",
        body: launchBody(cluster),
        response: { 201: GpuSchema },
        idempotent: true
      }),
      async (request, reply) => {
        const auth = keyOf(request)
        const b = request.body as LaunchBody
        return idempotent(ctx, request, reply, auth.account, () => {
          const view = call(
            ctx,
            ctx.engine.sup.launchGpu(
              {
                account: auth.account,
                id: newId(ctx.secrets, cluster ? "gc-" : "gi-"),
                kind,
                gpu: b.gpu,
                gpu_count: b.gpu_count,
                node_count: cluster ? b.node_count! : 1,
                region: b.region,
                estimated_duration_hours: b.estimated_duration_hours,
                image: b.image ?? null,
                drive: b.drive ?? null,
                filesystems: b.filesystems ?? []
              },
              callerOf(auth)
            )
          )
          return { status: 201, body: json(view) }
        })
      }
    )

    app.get(base, spec({ tags, summary: `List your ${what}s`, auth: "account", querystring: listQuery, response: { 200: page(GpuSchema, "next_after") } }), async (request) =>
      pageOf(ctx, keyOf(request), [kind], request.query as { limit?: string; after?: string }, (v) => json(v as GpuView))
    )

    app.get(
      `${base}/:id`,
      spec({ tags, summary: `A ${what}: status, elapsed, remaining, deadline`, auth: "account", params: idParams(), response: { 200: GpuSchema } }),
      async (request) => json(describeAs(ctx, keyOf(request), (request.params as { id: string }).id, [kind]) as GpuView)
    )

    app.post(
      `${base}/:id/extend`,
      spec({
        tags,
        summary: `Extend a ${what}`,
        description: "Holds hours × hourly_rate × GPUs more and moves the deadline (402 if not covered; 409 once stopped).",
        auth: "account",
        params: idParams(),
        body: { type: "object", additionalProperties: false, required: ["hours"], properties: { hours } },
        response: { 200: ExtendSchema },
        idempotent: true
      }),
      async (request, reply) => {
        const auth = keyOf(request)
        const id = (request.params as { id: string }).id
        const { hours: n } = request.body as { hours: number }
        return idempotent(ctx, request, reply, auth.account, () => {
          describeAs(ctx, auth, id, [kind])
          const r = call(ctx, ctx.engine.sup.extend(id, n, callerOf(auth)))
          return { status: 200, body: { ...extendAnswer(r), deadline_at: r.deadline_at === null ? null : iso(r.deadline_at) } }
        })
      }
    )

    app.delete(
      `${base}/:id`,
      spec({ tags, summary: `Terminate a ${what}`, description: "Stops it; the hold settles (actual use consumed, the rest refunded).", auth: "account", params: idParams(), response: { 200: GpuSchema } }),
      async (request) => {
        const auth = keyOf(request)
        const id = (request.params as { id: string }).id
        describeAs(ctx, auth, id, [kind])
        return json(call(ctx, ctx.engine.sup.terminate(id, callerOf(auth))) as GpuView)
      }
    )
  }
}
