/**
 * `/v1` to a stopped user inference instance, as the manual's Common issues describe it: "402
 * on my own user inference instance. Cause: balance hit $0 on the previous 24h cycle; instance
 * was terminated. Fix: check Model Instances — it'll show stopped with reason credit_depleted.
 * Restore balance and launch again." Any other stopped instance is "404 Not Found on a model",
 * and another account's instance answers exactly as an id that never existed.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { HOUR, stateOf, world, type World } from "./harness.js"

let w: World
let a: { account: string; key: string; user: string }
let b: { account: string; key: string; user: string }
/** a's instance, stopped by the engine at its 24 h boundary; b's, terminated by b. */
let depleted = ""
let terminated = ""

const chat = (model: string, extra: Record<string, unknown> = {}) => ({ model, messages: [{ role: "user", content: "hello" }], ...extra })
const launch = async (who: { key: string }): Promise<string> => {
  const m = await w.req("POST", "/models", { key: who.key, body: { name: "my-llm", source: "platform", gpu: "H100", gpu_count: 1 } })
  if (m.status !== 201) throw new Error(`register: ${m.status} ${m.text}`)
  const r = await w.req("POST", "/inference-instances", { key: who.key, body: { model: "my-llm" } })
  if (r.status !== 201) throw new Error(`launch: ${r.status} ${r.text}`)
  return r.body.id as string
}

beforeAll(async () => {
  w = await world()
  // $76.80 is exactly one full cycle: $1.60/h × 1 GPU × 2 replicas × 24 h. At the 24 h
  // boundary what the replicas did not use while their images were pulled comes back and
  // renews a partial hold of a few minutes; at its end nothing is left, and the engine stops
  // the instance (credit_depleted).
  a = await w.signup("a@example.com", "76.80")
  b = await w.signup("b@example.com", "200.00")
  depleted = await launch(a)
  terminated = await launch(b)
  w.advance(HOUR)
  expect((await w.req("DELETE", `/inference-instances/${terminated}`, { key: b.key })).status).toBe(200)
  w.advance(23 * HOUR)
  const partial = await w.req("GET", `/inference-instances/${depleted}`, { key: a.key })
  if (partial.body.status !== "running") throw new Error(`after 24 h: ${partial.status} ${partial.text}`)
  // Up to the partial hold's end exactly: the engine's cycle end has fired, and the requests
  // below come at that same instant, after the stop.
  w.advance(Date.parse(partial.body.cycle_ends_at) - w.clock.now())
})
afterAll(async () => w.close())

describe("a request to a stopped user inference instance", () => {
  it("is 402 insufficient_balance on the caller's own instance stopped for credit, naming it and saying what to do", async () => {
    // Proves the manual's 402, at the very instant the engine stopped the instance, on every
    // /v1 route (a streamed request gets the plain JSON error), and that it changes nothing.
    const shown = await w.req("GET", `/inference-instances/${depleted}`, { key: a.key })
    expect([shown.body.status, shown.body.termination_reason]).toEqual(["terminated", "credit_depleted"])
    const body = {
      error: "insufficient_balance",
      message: `instance ${depleted} of model my-llm was stopped because the credit balance was depleted (credit_depleted): add credit, then launch a new instance of my-llm`
    }
    const before = stateOf(w)
    for (const [url, payload] of [
      ["/v1/chat/completions", chat(`my-llm:${depleted}`)],
      ["/v1/chat/completions", chat(`my-llm:${depleted}`, { stream: true })],
      ["/v1/completions", { model: `my-llm:${depleted}`, prompt: "hello" }],
      ["/v1/embeddings", { model: `my-llm:${depleted}`, input: "hello" }]
    ] as const) {
      const r = await w.req("POST", url, { key: a.key, body: payload })
      expect([url, r.status, r.headers["content-type"], r.body]).toEqual([url, 402, "application/json; charset=utf-8", body])
    }
    expect(stateOf(w)).toBe(before)
  })

  it("is 404 model_not_found on an instance its owner terminated, and on one addressed by the wrong name", async () => {
    // Proves only credit_depleted is a 402: a user terminate is the manual's "your instance was terminated" 404.
    const own = await w.req("POST", "/v1/chat/completions", { key: b.key, body: chat(`my-llm:${terminated}`) })
    expect([own.status, own.body]).toEqual([404, { error: "model_not_found", message: `model my-llm:${terminated} not found` }])
    const misnamed = await w.req("POST", "/v1/chat/completions", { key: a.key, body: chat(`other-llm:${depleted}`) })
    expect([misnamed.status, misnamed.body]).toEqual([404, { error: "model_not_found", message: `model other-llm:${depleted} not found` }])
  })

  it("is 404 on another account's instance stopped for credit, exactly as on an id that never existed", async () => {
    // Proves no leak: b learns neither that a's instance exists nor why it stopped.
    const before = stateOf(w)
    const foreign = await w.req("POST", "/v1/chat/completions", { key: b.key, body: chat(`my-llm:${depleted}`) })
    expect([foreign.status, foreign.body]).toEqual([404, { error: "model_not_found", message: `model my-llm:${depleted} not found` }])
    const unknown = await w.req("POST", "/v1/chat/completions", { key: b.key, body: chat("my-llm:ii-neverexisted") })
    expect([unknown.status, unknown.body]).toEqual([404, { error: "model_not_found", message: "model my-llm:ii-neverexisted not found" }])
    expect(stateOf(w)).toBe(before)
  })
})
