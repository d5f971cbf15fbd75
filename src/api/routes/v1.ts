/**
 * `/v1`: the OpenAI-compatible surface (SPEC §6). A request names a platform model (a key of
 * the price catalog) or a user instance as `<name>:<instance_id>`; the engine meters it
 * (`apiRequest`: one `api_usage` row per request, or a typed refusal that writes nothing) and
 * the simulated world's model server (synthetic.ts) answers. Refusals use the API's one error
 * shape. `x-ecolink-region` names the region that served the request: the instance's first
 * healthy region for a user instance, and for a platform model the first region of the
 * cluster (the platform's router is not simulated).
 *
 * `stream: true` answers server-sent events in OpenAI's chunk format, ending with
 * `data: [DONE]`; the request is billed before the first byte, so a refusal is a plain JSON
 * error. OpenAI parameters the simulated model does not use (temperature, top_p, stop, …)
 * are accepted and ignored.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify"
import type { ChargeResult } from "../../metering.js"
import { MODEL_ID_LENGTH_MAX } from "../../metering.js"
import type { InferenceView } from "../../resources.js"
import { callerOf } from "../auth.js"
import { call, idempotent, keyOf, spec, type ApiContext, type KeyAuth, type Outcome } from "../http.js"
import { obj } from "../views.js"
import {
  chatPromptTokens,
  complete,
  COMPLETION_TOKENS_MAX,
  countTokens,
  embed,
  embeddingBase64,
  EMBEDDING_DIMENSIONS_DEFAULT,
  EMBEDDING_DIMENSIONS_MAX,
  type ChatMessage,
  type Completion
} from "../synthetic.js"

/** Messages in one chat request, prompts or inputs in one request: bounds like every other. */
export const MESSAGES_MAX = 1_024
export const INPUTS_MAX = 2_048
/** User instances listed by `/v1/models`, at most. */
export const V1_MODELS_INSTANCES_MAX = 1_000

/** OpenAI clients may add query parameters of their own (`default_query`); like unknown body fields, they are ignored. */
const OPENAI_QUERY = { type: "object" }
const model = { type: "string", minLength: 1, maxLength: MODEL_ID_LENGTH_MAX } as const
const maxTokens = { type: "integer", minimum: 1, maximum: COMPLETION_TOKENS_MAX } as const
const streamOptions = { type: ["object", "null"], properties: { include_usage: { type: "boolean" } } } as const
const text = { type: "string", maxLength: 1_000_000 } as const
/** OpenAI refuses an empty input to embed too: it has no tokens to bill and still costs a vector. */
const embeddingText = { ...text, minLength: 1 } as const

const contentPart = {
  type: "object",
  required: ["type", "text"],
  properties: { type: { type: "string", enum: ["text"] }, text }
} as const

const chatBody = {
  type: "object",
  required: ["model", "messages"],
  properties: {
    model,
    messages: {
      type: "array",
      minItems: 1,
      maxItems: MESSAGES_MAX,
      items: {
        type: "object",
        required: ["role"],
        properties: {
          role: { type: "string", enum: ["system", "developer", "user", "assistant", "tool"] },
          content: { anyOf: [text, { type: "array", maxItems: 256, items: contentPart }, { type: "null" }] },
          name: { type: "string", maxLength: 256 }
        }
      }
    },
    max_tokens: { ...maxTokens, type: ["integer", "null"] },
    max_completion_tokens: { ...maxTokens, type: ["integer", "null"] },
    n: { type: ["integer", "null"], minimum: 1, maximum: 1 },
    stream: { type: ["boolean", "null"] },
    stream_options: streamOptions
  }
} as const

const completionBody = {
  type: "object",
  required: ["model", "prompt"],
  properties: {
    model,
    prompt: { anyOf: [text, { type: "array", minItems: 1, maxItems: INPUTS_MAX, items: text }] },
    max_tokens: { ...maxTokens, type: ["integer", "null"] },
    n: { type: ["integer", "null"], minimum: 1, maximum: 1 },
    stream: { type: ["boolean", "null"] },
    stream_options: streamOptions
  }
} as const

const embeddingBody = {
  type: "object",
  required: ["model", "input"],
  properties: {
    model,
    // One schema for both forms (string keywords bind strings, array keywords arrays), so a
    // refusal names the input at fault (`input.3`), where anyOf would say "must be string".
    input: { type: ["string", "array"], minLength: 1, maxLength: text.maxLength, minItems: 1, maxItems: INPUTS_MAX, items: embeddingText },
    encoding_format: { type: "string", enum: ["float", "base64"] },
    dimensions: { type: "integer", minimum: 1, maximum: EMBEDDING_DIMENSIONS_MAX }
  }
} as const

const usageSchema = obj({ prompt_tokens: { type: "integer" }, completion_tokens: { type: "integer" }, total_tokens: { type: "integer" } })

const ChatCompletionSchema = obj({
  id: { type: "string" },
  object: { type: "string", enum: ["chat.completion"] },
  created: { type: "integer" },
  model: { type: "string" },
  choices: {
    type: "array",
    items: obj({
      index: { type: "integer" },
      message: obj({ role: { type: "string", enum: ["assistant"] }, content: { type: "string" }, refusal: { type: "null" } }),
      logprobs: { type: "null" },
      finish_reason: { type: "string", enum: ["stop", "length"] }
    })
  },
  usage: usageSchema
})

const CompletionSchema = obj({
  id: { type: "string" },
  object: { type: "string", enum: ["text_completion"] },
  created: { type: "integer" },
  model: { type: "string" },
  choices: { type: "array", items: obj({ index: { type: "integer" }, text: { type: "string" }, logprobs: { type: "null" }, finish_reason: { type: "string", enum: ["stop", "length"] } }) },
  usage: usageSchema
})

const EmbeddingsSchema = obj({
  object: { type: "string", enum: ["list"] },
  model: { type: "string" },
  data: { type: "array", items: obj({ object: { type: "string", enum: ["embedding"] }, index: { type: "integer" }, embedding: { anyOf: [{ type: "array", items: { type: "number" } }, { type: "string" }] } }) },
  usage: obj({ prompt_tokens: { type: "integer" }, total_tokens: { type: "integer" } })
})

const ModelsSchema = obj({
  object: { type: "string", enum: ["list"] },
  data: { type: "array", items: obj({ id: { type: "string" }, object: { type: "string", enum: ["model"] }, created: { type: "integer" }, owned_by: { type: "string" } }) }
})

type Content = string | ReadonlyArray<{ readonly type: "text"; readonly text: string }> | null | undefined

const contentText = (c: Content): string => (c == null ? "" : typeof c === "string" ? c : c.map((p) => p.text).join(""))

const sse = (events: ReadonlyArray<unknown>): string => events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join("") + "data: [DONE]\n\n"

export const v1Routes = (app: FastifyInstance, ctx: ApiContext): void => {
  const tags = ["OpenAI-compatible"]
  const seconds = () => Math.floor(ctx.engine.clock.now() / 1000)

  /** Meters the request in the engine (throws its refusal), then sets `x-ecolink-region`. */
  const bill = (auth: KeyAuth, reply: FastifyReply, modelId: string, input_tokens: number, output_tokens: number): ChargeResult => {
    const charged = call(ctx, ctx.engine.sup.apiRequest({ account: auth.account, model: modelId, input_tokens, output_tokens }, callerOf(auth)))
    reply.header("x-ecolink-region", charged.region ?? ctx.engine.cluster.regionNames()[0] ?? "platform")
    return charged
  }

  const streamed = (body: { stream?: boolean | null }): boolean => body.stream === true

  const route = (url: string, summary: string, body: Record<string, unknown>, ok: Record<string, unknown>, handle: (auth: KeyAuth, request: FastifyRequest, reply: FastifyReply) => Outcome) =>
    app.post(url, spec({ tags, summary, auth: "account", querystring: OPENAI_QUERY, body, response: { 200: ok }, idempotent: true }), async (request, reply) => {
      const auth = keyOf(request)
      return idempotent(ctx, request, reply, auth.account, () => handle(auth, request, reply))
    })

  route("/v1/chat/completions", "Chat completion (stream: true for server-sent events)", chatBody, ChatCompletionSchema, (auth, request, reply) => {
    const b = request.body as { model: string; messages: Array<{ role: string; content?: Content; name?: string }>; max_tokens?: number | null; max_completion_tokens?: number | null; stream?: boolean | null; stream_options?: { include_usage?: boolean } | null }
    const messages: ChatMessage[] = b.messages.map((m) => ({ role: m.role, content: contentText(m.content), ...(m.name === undefined ? {} : { name: m.name }) }))
    const prompt_tokens = chatPromptTokens(messages)
    const out = complete(b.model, messages.map((m) => `${m.role}: ${m.content}`).join("\n"), b.max_completion_tokens ?? b.max_tokens ?? undefined)
    bill(auth, reply, b.model, prompt_tokens, out.tokens)
    const id = `chatcmpl-${request.id}`
    const created = seconds()
    const usage = { prompt_tokens, completion_tokens: out.tokens, total_tokens: prompt_tokens + out.tokens }
    if (!streamed(b)) {
      return {
        status: 200,
        body: {
          id,
          object: "chat.completion",
          created,
          model: b.model,
          choices: [{ index: 0, message: { role: "assistant", content: out.text, refusal: null }, logprobs: null, finish_reason: out.finish_reason }],
          usage
        }
      }
    }
    const chunk = (delta: Record<string, unknown>, finish_reason: string | null) => ({ id, object: "chat.completion.chunk", created, model: b.model, choices: [{ index: 0, delta, logprobs: null, finish_reason }] })
    const events: unknown[] = [chunk({ role: "assistant", content: "" }, null), ...out.pieces.map((p) => chunk({ content: p }, null)), chunk({}, out.finish_reason)]
    if (b.stream_options?.include_usage === true) events.push({ id, object: "chat.completion.chunk", created, model: b.model, choices: [], usage })
    return { status: 200, body: sse(events), content_type: "text/event-stream" }
  })

  route("/v1/completions", "Text completion (legacy; stream: true for server-sent events)", completionBody, CompletionSchema, (auth, request, reply) => {
    const b = request.body as { model: string; prompt: string | string[]; max_tokens?: number | null; stream?: boolean | null; stream_options?: { include_usage?: boolean } | null }
    const prompt = typeof b.prompt === "string" ? b.prompt : b.prompt.join("")
    const prompt_tokens = typeof b.prompt === "string" ? countTokens(b.prompt) : b.prompt.reduce((n, p) => n + countTokens(p), 0)
    const out: Completion = complete(b.model, prompt, b.max_tokens ?? undefined)
    bill(auth, reply, b.model, prompt_tokens, out.tokens)
    const id = `cmpl-${request.id}`
    const created = seconds()
    const usage = { prompt_tokens, completion_tokens: out.tokens, total_tokens: prompt_tokens + out.tokens }
    if (!streamed(b)) {
      return { status: 200, body: { id, object: "text_completion", created, model: b.model, choices: [{ index: 0, text: out.text, logprobs: null, finish_reason: out.finish_reason }], usage } }
    }
    const chunk = (piece: string, finish_reason: string | null) => ({ id, object: "text_completion", created, model: b.model, choices: [{ index: 0, text: piece, logprobs: null, finish_reason }] })
    const events: unknown[] = [...out.pieces.map((p) => chunk(p, null)), chunk("", out.finish_reason)]
    if (b.stream_options?.include_usage === true) events.push({ id, object: "text_completion", created, model: b.model, choices: [], usage })
    return { status: 200, body: sse(events), content_type: "text/event-stream" }
  })

  route("/v1/embeddings", "Embeddings (deterministic vectors; encoding_format float or base64)", embeddingBody, EmbeddingsSchema, (auth, request, reply) => {
    const b = request.body as { model: string; input: string | string[]; encoding_format?: "float" | "base64"; dimensions?: number }
    const inputs = typeof b.input === "string" ? [b.input] : b.input
    const prompt_tokens = inputs.reduce((n, s) => n + countTokens(s), 0)
    bill(auth, reply, b.model, prompt_tokens, 0)
    const dimensions = b.dimensions ?? EMBEDDING_DIMENSIONS_DEFAULT
    const data = inputs.map((input, index) => {
      const vector = embed(b.model, input, dimensions)
      return { object: "embedding", index, embedding: b.encoding_format === "base64" ? embeddingBase64(vector) : vector }
    })
    return { status: 200, body: { object: "list", model: b.model, data, usage: { prompt_tokens, total_tokens: prompt_tokens } } }
  })

  app.get(
    "/v1/models",
    spec({ tags, summary: "Models you can call: the platform's, and your running instances as <name>:<instance_id>", auth: "account", querystring: OPENAI_QUERY, response: { 200: ModelsSchema } }),
    async (request) => {
      const auth = keyOf(request)
      const platform = [...ctx.engine.catalog.modelPrices.keys()].sort().map((id) => ({ id, object: "model", created: 0, owned_by: "ecolink" }))
      const instances: Array<{ id: string; object: string; created: number; owned_by: string }> = []
      let after: string | null = null
      while (instances.length < V1_MODELS_INSTANCES_MAX) {
        const views: ReadonlyArray<InferenceView> = call(ctx, ctx.engine.sup.list(auth.account, { kinds: ["inference_instance"], after, limit: 100 }, callerOf(auth))) as ReadonlyArray<InferenceView>
        for (const v of views) {
          // Running: at least one region serves it now (a pending or wholly preempted one answers 503).
          if (ctx.engine.sup.userInstance(auth.account, v.model, v.id).healthy_regions.length > 0) {
            instances.push({ id: `${v.model}:${v.id}`, object: "model", created: Math.floor(v.created_at / 1000), owned_by: auth.account })
          }
        }
        if (views.length < 100) break
        after = views[views.length - 1]!.id
      }
      return { object: "list", data: [...platform, ...instances.slice(0, V1_MODELS_INSTANCES_MAX)] }
    }
  )
}
