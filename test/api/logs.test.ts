/**
 * What the request log may hold: no secret from a URL. The invite route carries its secret in
 * the path (`/invites/<id>.<secret>/accept`); a client may put a key in a query or a path by
 * mistake. Fastify logs every request's URL, so the log serializer redacts them (`redactUrl`).
 */
import { pino } from "pino"
import { afterEach, describe, expect, it } from "vitest"
import { redactUrl } from "../../src/api/app.js"
import { world, type World } from "./harness.js"

let w: World | null = null
afterEach(async () => {
  await w?.close()
  w = null
})

describe("the request log", () => {
  it("never holds an invite's secret: the accept route's URL is logged with the secret redacted", async () => {
    // Found by review: Fastify's request log carried `/invites/<id>.<secret>/accept` whole.
    const lines: string[] = []
    w = await world({ loggerInstance: pino({ level: "info" }, { write: (line: string) => void lines.push(line) }) })
    const owner = await w.signup("owner@example.com")
    const friend = await w.signup("friend@example.com", "0")
    const invite = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "friend@example.com" } })
    expect(invite.status).toBe(201)
    const token = (invite.body.invite_url as string).split("/invites/")[1]!
    const [id, secret] = token.split(".") as [string, string]
    const accepted = await w.req("POST", `/invites/${token}/accept?after=x`, { key: friend.key })
    expect(accepted.status).toBe(400) // the route takes no query: the URL is still logged
    expect((await w.req("POST", `/invites/${token}/accept`, { key: friend.key })).status).toBe(201)
    const logged = lines.join("")
    expect(logged).toContain(`"url":"/invites/${id}.[redacted]/accept"`)
    expect(logged).not.toContain(secret)
    // Nor does a key a client put in a path or a query by mistake.
    await w.req("GET", `/api-keys/${owner.key}?api-key=${owner.key}`, { key: owner.key })
    expect(lines.join("")).not.toContain(owner.key.slice(18))
  })

  it("redacts secrets by place and by shape, and leaves the rest of a URL as it was", () => {
    expect(redactUrl("/invites/inv-abc.s3cr3t/accept")).toBe("/invites/inv-abc.[redacted]/accept")
    expect(redactUrl("/invites/inv-abc%2Es3cr3t/accept")).toBe("/invites/[redacted]/accept")
    expect(redactUrl("/invites/.s3cr3t/accept?x=1")).toBe("/invites/[redacted]/accept?x=1")
    expect(redactUrl("/billing/transactions?kind=gpu_usage&before=42&limit=5")).toBe("/billing/transactions?kind=gpu_usage&before=42&limit=5")
    expect(redactUrl("/v1/models?api-key=abc&token=def&Secret=ghi&sig=1&limit")).toBe("/v1/models?api-key=[redacted]&token=[redacted]&Secret=[redacted]&sig=1&limit")
    expect(redactUrl("/api-keys/eco_abcdefghijkl_AAAA-bbbb_cccc")).toBe("/api-keys/eco_abcdefghijkl_[redacted]")
    expect(redactUrl("/x?q=ecoop_AbC123&s=sk_live_XyZ&w=whsec_123")).toBe("/x?q=ecoop_[redacted]&s=sk_live_[redacted]&w=whsec_[redacted]")
    expect(redactUrl("/gpu-instances/gi-abc")).toBe("/gpu-instances/gi-abc")
    // Found by review: a percent-encoded space before a key is a digit, no word boundary.
    expect(redactUrl("/x?q=Bearer%20eco_abcdefghijkl_SECRET")).toBe("/x?q=Bearer%20eco_abcdefghijkl_[redacted]")
  })
})
