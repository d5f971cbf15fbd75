/**
 * User inference instances (SPEC §4), the model registry they launch from, and the platform's
 * own models. `/models` is the account's registry; names may contain `/` (HuggingFace style),
 * so a model is addressed as `/models/<name>` with the rest of the path as its name.
 */
import type { FastifyInstance } from "fastify"
import { Effect } from "effect"
import { NotFound, ValidationError } from "../../errors.js"
import type { ModelPrice } from "../../metering.js"
import { formatDollars } from "../../money.js"
import * as policy from "../../policy.js"
import type { InferenceView } from "../../resources.js"
import { callerOf } from "../auth.js"
import { call, idempotent, idParams, keyOf, limitOf, spec, type ApiContext } from "../http.js"
import { newId } from "../secrets.js"
import { InferenceSchema, inferenceJson, ModelSchema, modelJson, obj, page } from "../views.js"
import { describeAs, listQuery, pageOf } from "./common.js"

const name = { type: "string", minLength: 1, maxLength: 128 } as const

const PriceSchema = {
  type: ["object", "null"],
  additionalProperties: false,
  properties: {
    input_per_1m_tokens: { type: "string" },
    output_per_1m_tokens: { type: "string" },
    per_image: { type: "string" },
    per_second: { type: "string" }
  }
} as const

export const priceJson = (p: ModelPrice | null): Record<string, string> | null => {
  if (p === null) return null
  const out: Record<string, string> = {}
  if (p.input_per_1m_tokens !== undefined) out["input_per_1m_tokens"] = formatDollars(p.input_per_1m_tokens)
  if (p.output_per_1m_tokens !== undefined) out["output_per_1m_tokens"] = formatDollars(p.output_per_1m_tokens)
  if (p.per_image !== undefined) out["per_image"] = formatDollars(p.per_image)
  if (p.per_second !== undefined) out["per_second"] = formatDollars(p.per_second)
  return Object.keys(out).length === 0 ? null : out
}

/** A model's name from the rest of the path. */
const modelName = (raw: string): string => {
  // The wildcard keeps percent-encoding of `/` as `%2F`; a name never contains `%`.
  let decoded: string
  try {
    decoded = decodeURIComponent(raw)
  } catch {
    decoded = raw
  }
  return decoded
}

export const inferenceRoutes = (app: FastifyInstance, ctx: ApiContext): void => {
  const tags = ["Inference instances"]
  const kind = ["inference_instance"] as const

  app.post(
    "/inference-instances",
    spec({
      tags,
      summary: "Launch an inference instance of a registered model",
      description: "Holds hourly_rate × GPUs × replicas × 24 at once (402 if not covered); renews every 24 h while the balance lasts.",
      auth: "account",
      body: { type: "object", additionalProperties: false, required: ["model"], properties: { model: name } },
      response: { 201: InferenceSchema },
      idempotent: true
    }),
    async (request, reply) => {
      const auth = keyOf(request)
      const { model } = request.body as { model: string }
      return idempotent(ctx, request, reply, auth.account, () => {
        const view = call(ctx, ctx.engine.sup.launchInference({ account: auth.account, id: newId(ctx.secrets, "ii-"), model }, callerOf(auth)))
        return { status: 201, body: inferenceJson(view) }
      })
    }
  )

  app.get("/inference-instances", spec({ tags, summary: "List your inference instances", auth: "account", querystring: listQuery, response: { 200: page(InferenceSchema, "next_after") } }), async (request) =>
    pageOf(ctx, keyOf(request), kind, request.query as { limit?: string; after?: string }, (v) => inferenceJson(v as InferenceView))
  )

  app.get(
    "/inference-instances/:id",
    spec({ tags, summary: "An inference instance, with each region's status", auth: "account", params: idParams(), response: { 200: InferenceSchema } }),
    async (request) => inferenceJson(describeAs(ctx, keyOf(request), (request.params as { id: string }).id, kind) as InferenceView)
  )

  app.delete(
    "/inference-instances/:id",
    spec({ tags, summary: "Terminate an inference instance in every region", description: "The cycle's hold is consumed up to actual uptime; the rest refunded.", auth: "account", params: idParams(), response: { 200: InferenceSchema } }),
    async (request) => {
      const auth = keyOf(request)
      const id = (request.params as { id: string }).id
      describeAs(ctx, auth, id, kind)
      return inferenceJson(call(ctx, ctx.engine.sup.terminate(id, callerOf(auth))) as InferenceView)
    }
  )

  // ── the model registry ──────────────────────────────────────────────────────────────
  const rtags = ["Model registry"]
  app.post(
    "/models",
    spec({
      tags: rtags,
      summary: "Register a model",
      description: "source huggingface or platform: 2 replicas in 2 regions; shared_fs: 1 replica in the filesystem's region (name it in filesystem).",
      auth: "account",
      body: {
        type: "object",
        additionalProperties: false,
        required: ["name", "source", "gpu", "gpu_count"],
        properties: {
          name,
          source: { type: "string", enum: [...policy.MODEL_SOURCES] },
          filesystem: { type: ["string", "null"], minLength: 1, maxLength: 100 },
          gpu: { type: "string", minLength: 1, maxLength: 100 },
          gpu_count: { type: "integer", minimum: 1, maximum: policy.GPU_COUNT_MAX }
        }
      },
      response: { 201: ModelSchema },
      idempotent: true
    }),
    async (request, reply) => {
      const auth = keyOf(request)
      const b = request.body as { name: string; source: (typeof policy.MODEL_SOURCES)[number]; filesystem?: string | null; gpu: string; gpu_count: number }
      return idempotent(ctx, request, reply, auth.account, () => {
        const registered = ctx.engine.sup.registerModel({ account: auth.account, model: b.name, source: b.source, filesystem: b.filesystem ?? null, gpu: b.gpu, gpu_count: b.gpu_count }, callerOf(auth))
        // The engine names the model `model` (the timeline's field); this body names it `name`.
        call(ctx, Effect.mapError(registered, (e) => (e instanceof ValidationError && e.field === "model" ? new ValidationError({ code: e.code, field: "name", message: e.message }) : e)))
        return { status: 201, body: modelJson(ctx.engine.ledger.model(auth.account, b.name)!) }
      })
    }
  )

  app.get(
    "/models",
    spec({
      tags: rtags,
      summary: "Your registered models, by name",
      auth: "account",
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: { limit: listQuery.properties.limit, after: { type: "string", maxLength: 128, description: "the next_after of the previous page" } }
      },
      response: { 200: page(ModelSchema, "next_after") }
    }),
    async (request) => {
      const auth = keyOf(request)
      const q = request.query as { limit?: string; after?: string }
      const limit = limitOf(q.limit)
      const rows = ctx.engine.ledger.modelsOf(auth.account, q.after ?? null, limit + 1)
      const shown = rows.slice(0, limit)
      return { data: shown.map(modelJson), next_after: rows.length > limit ? shown[shown.length - 1]!.name : null }
    }
  )

  const wildcard = { type: "object", required: ["*"], additionalProperties: false, properties: { "*": { type: "string", minLength: 1, maxLength: 512 } } }
  const registered = (account: string, raw: string) => {
    const model = modelName(raw)
    const record = ctx.engine.ledger.model(account, model)
    if (record === undefined) throw new NotFound({ code: "model_not_found", id: model })
    return record
  }

  app.get("/models/*", spec({ tags: rtags, summary: "A registered model", auth: "account", params: wildcard, response: { 200: ModelSchema } }), async (request) =>
    modelJson(registered(keyOf(request).account, (request.params as { "*": string })["*"]))
  )

  app.delete(
    "/models/*",
    spec({ tags: rtags, summary: "Delete a registered model (409 while a running instance uses it)", auth: "account", params: wildcard, response: { 200: ModelSchema } }),
    async (request) => {
      const auth = keyOf(request)
      const record = registered(auth.account, (request.params as { "*": string })["*"])
      call(ctx, ctx.engine.sup.deleteModel(auth.account, record.name, callerOf(auth)))
      return modelJson(record)
    }
  )

  app.get(
    "/platform/models",
    spec({
      tags: ["Platform models"],
      summary: "The platform's models and their prices (dollars)",
      auth: "account",
      response: { 200: obj({ data: { type: "array", items: obj({ id: { type: "string" }, priced: { type: "boolean" }, prices: PriceSchema }) } }) }
    }),
    async () => ({
      data: [...ctx.engine.catalog.modelPrices.entries()]
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([id, price]) => {
          const prices = priceJson(price)
          return { id, priced: prices !== null, prices }
        })
    })
  )
}

