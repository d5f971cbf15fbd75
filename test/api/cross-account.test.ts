/**
 * No route returns or changes another account's data. Account A holds one of everything (a
 * GPU instance and cluster, a model and its inference instance, a drive, a filesystem, keys,
 * notifications, an invite); account B's key aims every route that takes an id at A's ids
 * and gets 404 with the exact body, and nothing anywhere changes.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { MIN, stateOf, world, type World } from "./harness.js"

let w: World
let a: { account: string; key: string; user: string }
let b: { account: string; key: string; user: string }
const ids: Record<string, string> = {}

beforeAll(async () => {
  w = await world()
  a = await w.signup("a@example.com")
  b = await w.signup("b@example.com")
  const post = async (url: string, body: unknown) => {
    const r = await w.req("POST", url, { key: a.key, body })
    if (r.status !== 201) throw new Error(`${url}: ${r.status} ${r.text}`)
    return r.body
  }
  ids["fs"] = (await post("/shared-filesystems", { size_gb: 10, region: "us-east" })).id
  ids["drive"] = (await post("/cloud-drives", { size_gb: 10, region: "us-east" })).id
  ids["gi"] = (await post("/gpu-instances", { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 2 })).id
  ids["gc"] = (await post("/gpu-clusters", { gpu: "H100", gpu_count: 1, node_count: 2, region: "us-west", estimated_duration_hours: 1 })).id
  await post("/models", { name: "org/secret-model", source: "platform", gpu: "H100", gpu_count: 1 })
  ids["ii"] = (await post("/inference-instances", { model: "org/secret-model" })).id
  ids["key"] = (await post("/api-keys", { name: "ci" })).id
  ids["invite"] = ((await post("/team/invites", { email: "friend@example.com" })).invite_url as string).split("/invites/")[1]!
  w.advance(40 * MIN)
  ids["notification"] = String((await w.req("GET", "/notifications?limit=1", { key: a.key })).body.data[0].id)
})
afterAll(async () => w.close())

const notFound = (id: string) => ({ error: "resource_not_found", message: `resource ${id} not found` })

describe("another account's ids", () => {
  it("are 404 on every route that takes one, and nothing changes", async () => {
    // Proves each id-taking route answers the same 404 as for an id that never existed.
    const cases: Array<[string, string, unknown, unknown]> = [
      ["GET", `/gpu-instances/${ids["gi"]}`, undefined, notFound(ids["gi"]!)],
      ["POST", `/gpu-instances/${ids["gi"]}/extend`, { hours: 1 }, notFound(ids["gi"]!)],
      ["DELETE", `/gpu-instances/${ids["gi"]}`, undefined, notFound(ids["gi"]!)],
      ["GET", `/gpu-clusters/${ids["gc"]}`, undefined, notFound(ids["gc"]!)],
      ["POST", `/gpu-clusters/${ids["gc"]}/extend`, { hours: 1 }, notFound(ids["gc"]!)],
      ["DELETE", `/gpu-clusters/${ids["gc"]}`, undefined, notFound(ids["gc"]!)],
      ["GET", `/inference-instances/${ids["ii"]}`, undefined, notFound(ids["ii"]!)],
      ["DELETE", `/inference-instances/${ids["ii"]}`, undefined, notFound(ids["ii"]!)],
      ["GET", `/cloud-drives/${ids["drive"]}`, undefined, notFound(ids["drive"]!)],
      ["DELETE", `/cloud-drives/${ids["drive"]}`, undefined, notFound(ids["drive"]!)],
      ["GET", `/shared-filesystems/${ids["fs"]}`, undefined, notFound(ids["fs"]!)],
      ["DELETE", `/shared-filesystems/${ids["fs"]}`, undefined, notFound(ids["fs"]!)],
      ["GET", "/models/org/secret-model", undefined, { error: "model_not_found", message: "model org/secret-model not found" }],
      ["DELETE", "/models/org/secret-model", undefined, { error: "model_not_found", message: "model org/secret-model not found" }],
      ["POST", "/inference-instances", { model: "org/secret-model" }, { error: "model_not_found", message: "model org/secret-model not found" }],
      ["DELETE", `/api-keys/${ids["key"]}`, undefined, { error: "key_not_found", message: `key ${ids["key"]} not found` }],
      ["POST", `/notifications/${ids["notification"]}/read`, undefined, { error: "notification_not_found", message: `notification ${ids["notification"]} not found` }],
      ["POST", "/gpu-instances", { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, drive: ids["drive"] }, notFound(ids["drive"]!)],
      ["POST", "/gpu-instances", { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, filesystems: [ids["fs"]] }, notFound(ids["fs"]!)],
      ["POST", "/models", { name: "mine", source: "shared_fs", filesystem: ids["fs"], gpu: "H100", gpu_count: 1 }, notFound(ids["fs"]!)],
      ["POST", "/v1/chat/completions", { model: `org/secret-model:${ids["ii"]}`, messages: [{ role: "user", content: "hi" }] }, { error: "model_not_found", message: `model org/secret-model:${ids["ii"]} not found` }],
      ["POST", "/v1/embeddings", { model: `org/secret-model:${ids["ii"]}`, input: "hi" }, { error: "model_not_found", message: `model org/secret-model:${ids["ii"]} not found` }]
    ]
    for (const [method, url, body, expected] of cases) {
      const before = stateOf(w)
      const r = await w.req(method, url, { key: b.key, ...(body === undefined ? {} : { body }) })
      expect([method, url, r.status, r.body]).toEqual([method, url, 404, expected])
      expect([method, url, stateOf(w) === before]).toEqual([method, url, true])
    }
  })

  it("never appear in B's lists, pages or filters", async () => {
    // Proves the read routes are scoped to the key's account.
    const lists = ["/gpu-instances", "/gpu-clusters", "/inference-instances", "/cloud-drives", "/shared-filesystems", "/models", "/api-keys", "/team/members", "/team/invites", "/notifications"]
    for (const url of lists) {
      const r = await w.req("GET", url, { key: b.key })
      expect([url, r.status]).toEqual([url, 200])
      // (A notification id is a small number: it is checked by value below, not as text.)
      for (const [what, id] of Object.entries(ids)) if (what !== "notification") expect([url, r.text.includes(id)]).toEqual([url, false])
      expect([url, r.text.includes(a.account), r.text.includes(a.user)]).toEqual([url, false, false])
    }
    const notes = (await w.req("GET", "/notifications?limit=100", { key: b.key })).body.data as Array<{ id: number }>
    expect(notes.map((n) => String(n.id))).not.toContain(ids["notification"])
    const filtered = await w.req("GET", `/billing/transactions?resource=${ids["gi"]}`, { key: b.key })
    expect(filtered.body).toEqual({ data: [], next_before: null })
    const models = await w.req("GET", "/v1/models", { key: b.key })
    expect(models.text.includes(ids["ii"]!)).toBe(false)
  })

  it("an invite for another email is refused to B and changes nothing; operator routes refuse B's key", async () => {
    // Proves the invite is bound to its email and the operator's routes to the operator's key.
    const before = stateOf(w)
    const accept = await w.req("POST", `/invites/${ids["invite"]}/accept`, { key: b.key })
    expect(accept.status).toBe(403)
    expect(accept.body).toEqual({ error: "invite_email_mismatch", message: "this invite was sent to another email address" })
    const op = await w.req("POST", `/operator/accounts/${b.account}/adjustments`, { key: b.key, body: { amount: "1000.00", description: "free money" } })
    expect(op.status).toBe(401)
    const peek = await w.req("GET", `/operator/accounts/${a.account}`, { key: b.key })
    expect(peek.status).toBe(401)
    expect(stateOf(w)).toBe(before)
  })
})
