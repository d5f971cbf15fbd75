/**
 * `GET /healthz` and `GET /readyz` (src/api/app.ts): a liveness probe that answers 200 while
 * the process serves, and a readiness probe that answers 200 only on a replica fit for
 * traffic, else 503 with a reason. Both unauthenticated and never rate limited.
 */
import { afterEach, describe, expect, it } from "vitest"
import { world, type World } from "./harness.js"

let w: World | null = null
afterEach(async () => {
  await w?.close()
  w = null
})

describe("health probes", () => {
  it("answer without a key and are never rate limited; a fenced replica is alive but not ready", async () => {
    // Found by review: there were no probes, and a standby or fenced replica answered 503 on every path.
    w = await world({ rateLimit: { max: 2, window_ms: 60_000 } })
    for (let i = 0; i < 5; i++) {
      const [live, ready] = [await w.req("GET", "/healthz"), await w.req("GET", "/readyz")]
      expect([live.status, live.body, ready.status, ready.body]).toEqual([200, { status: "ok" }, 200, { status: "ready" }])
    }
    // The probes used no one's budget: an anonymous client still has its 2 requests.
    expect((await w.req("GET", "/platform/models")).status).toBe(401)
    expect((await w.req("GET", "/platform/models")).status).toBe(401)
    expect((await w.req("GET", "/platform/models")).status).toBe(429)

    w.opened.engine.sup.fence()
    expect((await w.req("GET", "/account")).status).toBe(503)
    expect((await w.req("GET", "/healthz")).status).toBe(200)
    const ready = await w.req("GET", "/readyz")
    expect([ready.status, ready.body]).toEqual([503, { error: "not_ready", reason: "fenced", message: "this replica was fenced: another replica leads" }])
  })
})
