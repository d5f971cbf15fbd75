/**
 * fast-check throws random bodies, headers, credentials and ids at every route: the answer
 * is never a 500, always the API's error shape when it is an error, always carries a request
 * id, and a 4xx changes nothing (money, resources, notifications, users, keys, invites).
 * Idempotency records are left out of the comparison on purpose: a refusal sent with an
 * Idempotency-Key is recorded so that its repeat answers the same (docs/API.md).
 */
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ALL_ROUTES, MIN, OPERATOR_KEY, world, type World } from "./harness.js"

/** API_FUZZ_RUNS=5000 API_FUZZ_SEED=<n> for a longer search. */
const RUNS = Number(process.env["API_FUZZ_RUNS"] ?? 600)

let w: World
let keys: { a: string; b: string }
const ids: string[] = []

beforeAll(async () => {
  w = await world()
  const a = await w.signup("a@example.com")
  const b = await w.signup("b@example.com", "3.00")
  keys = { a: a.key, b: b.key }
  const post = async (url: string, body: unknown) => (await w.req("POST", url, { key: a.key, body })).body
  ids.push((await post("/gpu-instances", { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 })).id)
  ids.push((await post("/cloud-drives", { size_gb: 10, region: "us-east" })).id)
  await post("/models", { name: "m", source: "platform", gpu: "H100", gpu_count: 1 })
  ids.push((await post("/inference-instances", { model: "m" })).id)
  ids.push((await post("/api-keys", { name: "x" })).id)
  w.advance(40 * MIN)
  ids.push(String((await w.req("GET", "/notifications?limit=1", { key: a.key })).body.data[0].id))
  ids.push(a.account, b.account)
})
afterAll(async () => w.close())

/** Everything but the idempotency records (see the header). */
const state = (): string => {
  const db = w.opened.engine.ledger.db
  const tables = ["accounts", "ledger", "holds", "resources", "notifications", "models", "api_users", "api_memberships", "api_keys", "api_invites", "api_settings"]
  return JSON.stringify(tables.map((t) => db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).safeIntegers(true).all()), (_, v) =>
    typeof v === "bigint" ? v.toString() : Buffer.isBuffer(v) ? v.toString("hex") : v
  )
}

const weirdString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom("", " ", "..", "%", "%2F", "a/b", "null", "__proto__", "constructor", "0", "-1", "1e400", "x".repeat(300), "H100", "us-east", "llama-3-8b", "m")
)
const id = fc.oneof(fc.constantFrom(...[0, 1, 2, 3, 4, 5, 6].map((i) => () => ids[i]!)).map((f) => f()), weirdString, fc.stringMatching(/^[a-z0-9-]{1,20}$/))
const number = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(0, 1, 2, 3, 8, 9, 64, 65, 720, 721, -1, 1.5, 1e308, Number.MAX_SAFE_INTEGER))
const value = fc.oneof(number, weirdString, fc.boolean(), fc.constant(null), fc.array(weirdString, { maxLength: 3 }), fc.jsonValue({ maxDepth: 2 }))
const FIELDS = ["gpu", "gpu_count", "node_count", "region", "estimated_duration_hours", "hours", "drive", "filesystems", "image", "model", "name", "source", "filesystem", "size_gb", "email", "key_name", "amount", "description", "messages", "prompt", "input", "max_tokens", "stream", "encoding_format", "dimensions", "n"]
const plausible = fc.dictionary(fc.constantFrom(...FIELDS), value, { maxKeys: 6 })
const goodish = fc.record(
  {
    gpu: fc.constant("H100"),
    gpu_count: fc.constantFrom(1, 2),
    node_count: fc.constantFrom(1, 2),
    region: fc.constantFrom("us-east", "us-west"),
    estimated_duration_hours: fc.constantFrom(1, 2),
    hours: fc.constantFrom(1, 2),
    size_gb: fc.constantFrom(1, 10),
    model: fc.constantFrom("llama-3-8b", "m", "nope"),
    messages: fc.constant([{ role: "user", content: "hello" }]),
    prompt: fc.constant("hello"),
    input: fc.constant("hello"),
    name: fc.constantFrom("k", "m2"),
    email: fc.constantFrom("c@example.com", "a@example.com"),
    amount: fc.constantFrom("1.00", "-1.00", "abc"),
    description: fc.constant("fuzz")
  },
  { requiredKeys: [] }
)
/** A valid body per route, so that creates and money movements succeed often enough to matter. */
const validFor = (route: string): fc.Arbitrary<unknown> => {
  const path = route.split(" ")[1]!
  const region = fc.constantFrom("us-east", "us-west")
  switch (path) {
    case "/accounts":
      return fc.stringMatching(/^[a-z]{1,8}$/).map((u) => ({ email: `${u}@fuzz.example` }))
    case "/gpu-instances":
      return fc.record({ gpu: fc.constant("H100"), gpu_count: fc.constantFrom(1, 2, 9), region, estimated_duration_hours: fc.constantFrom(1, 24) })
    case "/gpu-clusters":
      return fc.record({ gpu: fc.constant("H100"), gpu_count: fc.constantFrom(1, 8), node_count: fc.constantFrom(1, 2, 3), region, estimated_duration_hours: fc.constant(1) })
    case "/gpu-instances/{id}/extend":
    case "/gpu-clusters/{id}/extend":
      return fc.record({ hours: fc.constantFrom(1, 100) })
    case "/inference-instances":
      return fc.record({ model: fc.constantFrom("m", "nope") })
    case "/models":
      return fc.record({ name: fc.stringMatching(/^[a-z]{1,6}$/), source: fc.constantFrom("platform", "huggingface"), gpu: fc.constant("H100"), gpu_count: fc.constant(1) })
    case "/cloud-drives":
    case "/shared-filesystems":
      return fc.record({ size_gb: fc.constantFrom(1, 1000), region })
    case "/api-keys":
      return fc.record({ name: fc.constant("fuzz") })
    case "/team/invites":
      return fc.stringMatching(/^[a-z]{1,8}$/).map((u) => ({ email: `${u}@fuzz.example` }))
    case "/v1/chat/completions":
      return fc.record({ model: fc.constantFrom("llama-3-8b", "m", "unpriced-model"), messages: fc.constant([{ role: "user", content: "hello there" }]), stream: fc.boolean() })
    case "/v1/completions":
      return fc.record({ model: fc.constant("llama-3-8b"), prompt: fc.constant("once upon") })
    case "/v1/embeddings":
      return fc.record({ model: fc.constant("embed-small"), input: fc.constant("hi") })
    case "/operator/accounts/{account}/adjustments":
      return fc.record({ amount: fc.constantFrom("1.00", "5.5"), description: fc.constant("fuzz") })
    default:
      return fc.constant(undefined)
  }
}

const body = fc.oneof(
  fc.constant<unknown>(undefined),
  plausible,
  goodish,
  fc.jsonValue({ maxDepth: 3 }),
  fc.string({ maxLength: 50 }).map((raw) => ({ raw })),
  fc.constantFrom({ raw: "{" }, { raw: '{"__proto__":{"a":1}}' }, { raw: "[]" }, { raw: "1e999" }, { raw: '{"hours":1e400}' })
)
// Weighted so that most requests get past authentication and parsing and reach the engine.
const authorization = fc.oneof(
  { arbitrary: fc.constantFrom(() => `Bearer ${keys.a}`, () => `Bearer ${keys.b}`).map((f) => f()), weight: 8 },
  { arbitrary: fc.constant(`Bearer ${OPERATOR_KEY}`), weight: 2 },
  { arbitrary: fc.constantFrom(() => "", () => "Bearer eco_", () => `Bearer ${keys.a.slice(0, -2)}`).map((f) => f()), weight: 1 },
  { arbitrary: fc.string({ maxLength: 30 }).map((s) => `Bearer ${s}`), weight: 1 },
  { arbitrary: fc.constant<string | undefined>(undefined), weight: 1 }
)
const contentType = fc.oneof(
  { arbitrary: fc.constant("application/json"), weight: 8 },
  { arbitrary: fc.constantFrom<string | undefined>(undefined, "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=latin1", "garbage"), weight: 2 }
)
const idempotencyKey = fc.option(fc.oneof(fc.constantFrom("k1", "k2"), fc.string({ maxLength: 300 })), { nil: undefined })
const query = fc.option(fc.dictionary(fc.constantFrom("limit", "after", "before", "kind", "resource", "unread", "from", "to", "x"), weirdString, { maxKeys: 3 }), { nil: undefined })

const urlOf = (route: string, pathId: string): string => {
  const path = route.split(" ")[1]!
  const enc = encodeURIComponent(pathId)
  return path.replace("{id}", enc).replace("{token}", enc).replace("{account}", enc).replace("{*}", pathId.length === 0 ? "x" : enc)
}

describe("random requests at every route", () => {
  it("never answer 500, always in the error shape with a request id, and a 4xx changes nothing", async () => {
    const request = fc.constantFrom(...ALL_ROUTES).chain((route) => fc.tuple(fc.constant(route), fc.oneof({ arbitrary: validFor(route), weight: 3 }, { arbitrary: body, weight: 2 })))
    await fc.assert(
      fc.asyncProperty(request, id, authorization, contentType, idempotencyKey, query, async ([route, b], pathId, auth, ct, idem, q) => {
        const method = route.split(" ")[0]!.toUpperCase()
        const qs = q === undefined ? "" : `?${new URLSearchParams(q as Record<string, string>).toString()}`
        const headers: Record<string, string> = {}
        if (auth !== undefined) headers["authorization"] = auth
        if (ct !== undefined) headers["content-type"] = ct
        if (idem !== undefined) headers["idempotency-key"] = idem
        const payload = b === undefined || method === "GET" ? undefined : typeof b === "object" && b !== null && "raw" in b ? String((b as { raw: string }).raw) : JSON.stringify(b)
        const before = state()
        const r = await w.app.inject({ method: method as "GET", url: urlOf(route, pathId) + qs, headers, ...(payload === undefined ? {} : { payload }) })
        expect(r.statusCode).toBeLessThan(500)
        expect(r.headers["x-ecolink-request-id"]).toMatch(/^req_/)
        if (r.statusCode >= 400) {
          const err = JSON.parse(r.body) as Record<string, unknown>
          expect(typeof err["error"]).toBe("string")
          expect(typeof err["message"]).toBe("string")
          expect(state()).toBe(before)
        }
      }),
      { numRuns: RUNS, seed: Number(process.env["API_FUZZ_SEED"] ?? 20_260_301) }
    )
  })
})
