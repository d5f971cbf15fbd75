/**
 * Inference instances, the model registry, platform models, storage, billing and
 * notifications over HTTP, each with its exact answers and ledger rows.
 */
import { afterEach, describe, expect, it } from "vitest"
import { notificationDataJson } from "../../src/api/views.js"
import { HOUR, ledgerOf, MIN, stateOf, world, type World } from "./harness.js"

let w: World
afterEach(async () => w.close())

describe("model registry and inference instances", () => {
  it("registers a model, launches it in 2 regions holding 24 h, shows each region, and terminates it", async () => {
    // Proves /models, /inference-instances (per-region status), the 24 h hold and its refund.
    w = await world()
    const a = await w.signup("a@example.com")
    const m = await w.req("POST", "/models", { key: a.key, body: { name: "meta-llama/Llama-3-8B", source: "huggingface", gpu: "H100", gpu_count: 1 } })
    expect(m.status).toBe(201)
    expect(m.body).toEqual({ name: "meta-llama/Llama-3-8B", source: "huggingface", filesystem: null, gpu: "H100", gpu_count: 1, created_at: "2026-03-01T00:00:00.000Z" })
    expect((await w.req("GET", "/models/meta-llama/Llama-3-8B", { key: a.key })).body).toEqual(m.body)
    expect((await w.req("GET", "/models/meta-llama%2FLlama-3-8B", { key: a.key })).body).toEqual(m.body)
    expect((await w.req("GET", "/models", { key: a.key })).body).toEqual({ data: [m.body], next_after: null })
    const dup = await w.req("POST", "/models", { key: a.key, body: { name: "meta-llama/Llama-3-8B", source: "huggingface", gpu: "H100", gpu_count: 1 } })
    expect(dup.status).toBe(409)
    expect(dup.body).toEqual({ error: "already_exists", message: "model meta-llama/Llama-3-8B is already registered" })

    const r = await w.req("POST", "/inference-instances", { key: a.key, body: { model: "meta-llama/Llama-3-8B" } })
    expect(r.status).toBe(201)
    expect(r.body).toEqual({
      id: r.body.id,
      kind: "inference_instance",
      status: "pending",
      model: "meta-llama/Llama-3-8B",
      gpu: "H100",
      gpu_count: 1,
      replicas: 2,
      regions: [
        { region: "us-east", status: "pending" },
        { region: "us-west", status: "pending" }
      ],
      hourly_rate: "1.60",
      created_at: "2026-03-01T00:00:00.000Z",
      cycle: 1,
      cycle_hold: "76.80",
      cycle_ends_at: "2026-03-02T00:00:00.000Z",
      termination_reason: null
    })
    expect(r.body.id).toMatch(/^ii-/)
    w.advance(2 * MIN)
    const d = await w.req("GET", `/inference-instances/${r.body.id}`, { key: a.key })
    expect(d.body).toMatchObject({ status: "running", regions: [{ region: "us-east", status: "running" }, { region: "us-west", status: "running" }] })
    expect((await w.req("GET", "/inference-instances", { key: a.key })).body.data.map((v: { id: string }) => v.id)).toEqual([r.body.id])
    const inUse = await w.req("DELETE", "/models/meta-llama/Llama-3-8B", { key: a.key })
    expect(inUse.status).toBe(409)
    expect(inUse.body).toEqual({ error: "invalid_state", message: `model meta-llama/Llama-3-8B is in use by instance ${r.body.id}; delete the instance first` })
    w.advance(58 * MIN)
    const t = await w.req("DELETE", `/inference-instances/${r.body.id}`, { key: a.key })
    expect(t.status).toBe(200)
    expect(t.body).toMatchObject({ status: "terminating", termination_reason: "user_requested", cycle_ends_at: null })
    w.advance(0)
    // Each replica ran from 00:01:00 (loading) to 01:00:00: 59 min × 2 × $1.60/h = $3.146667.
    expect(ledgerOf(w, a.account)).toEqual([
      ["adjustment", "100.00", null],
      ["gpu_usage", "-76.80", r.body.id],
      ["refund", "73.653333", r.body.id]
    ])
    const gone = await w.req("DELETE", "/models/meta-llama/Llama-3-8B", { key: a.key })
    expect(gone.status).toBe(200)
    expect((await w.req("GET", "/models/meta-llama/Llama-3-8B", { key: a.key })).body).toEqual({ error: "model_not_found", message: "model meta-llama/Llama-3-8B not found" })
    const unknown = await w.req("POST", "/inference-instances", { key: a.key, body: { model: "nope" } })
    expect(unknown.status).toBe(404)
    expect(unknown.body).toEqual({ error: "model_not_found", message: "model nope not found" })
  })

  it("a launch the balance cannot cover is 402 and writes nothing; a shared_fs model needs its filesystem", async () => {
    // Proves the inference admission refusals through the API.
    w = await world()
    const a = await w.signup("a@example.com", "50.00")
    await w.req("POST", "/models", { key: a.key, body: { name: "m", source: "platform", gpu: "H100", gpu_count: 1 } })
    const before = stateOf(w)
    const r = await w.req("POST", "/inference-instances", { key: a.key, body: { model: "m" } })
    expect(r.status).toBe(402)
    expect(r.body).toEqual({ error: "insufficient_balance", message: "balance $50.00 cannot cover $76.80" })
    expect(stateOf(w)).toBe(before)
    const fs = await w.req("POST", "/models", { key: a.key, body: { name: "pinned", source: "shared_fs", gpu: "H100", gpu_count: 1 } })
    expect(fs.status).toBe(400)
    expect(fs.body).toEqual({ error: "filesystem_required", message: "a shared_fs model names the shared filesystem its weights are on", field: "filesystem" })
    // The field named is the body's (`name`), not the engine's (`model`).
    const bad = await w.req("POST", "/models", { key: a.key, body: { name: "foo:bar", source: "huggingface", gpu: "H100", gpu_count: 1 } })
    expect([bad.status, bad.body]).toEqual([400, { error: "invalid_model", message: "a model name is 1-128 letters, digits, '.', '_', '/' or '-'", field: "name" }])
    expect(stateOf(w)).toBe(before)
  })

  it("lists the platform's models with their prices", async () => {
    // Proves GET /platform/models: priced, unpriced, dollars as strings.
    w = await world()
    const a = await w.signup("a@example.com")
    expect((await w.req("GET", "/platform/models", { key: a.key })).body).toEqual({
      data: [
        { id: "embed-small", priced: true, prices: { input_per_1m_tokens: "0.02" } },
        { id: "llama-3-8b", priced: true, prices: { input_per_1m_tokens: "0.15", output_per_1m_tokens: "0.60" } },
        { id: "unpriced-model", priced: false, prices: null }
      ]
    })
  })
})

describe("storage", () => {
  it("creates a drive, attaches it at launch (in_use), refuses its delete while attached, deletes it after", async () => {
    // Proves /cloud-drives and attach-via-launch, with the 409 body and the daily charge.
    w = await world()
    const a = await w.signup("a@example.com")
    const d = await w.req("POST", "/cloud-drives", { key: a.key, body: { size_gb: 100, region: "us-east" } })
    expect(d.status).toBe(201)
    expect(d.body).toEqual({ id: d.body.id, kind: "cloud_drive", status: "available", in_use: false, size_gb: 100, region: "us-east", attached_to: [], daily_rate_per_gb: "0.004" })
    expect(d.body.id).toMatch(/^cd-/)
    const gi = await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, drive: d.body.id } })
    expect(gi.status).toBe(201)
    expect((await w.req("GET", `/cloud-drives/${d.body.id}`, { key: a.key })).body).toMatchObject({ status: "in_use", in_use: true, attached_to: [gi.body.id] })
    const refused = await w.req("DELETE", `/cloud-drives/${d.body.id}`, { key: a.key })
    expect(refused.status).toBe(409)
    expect(refused.body).toEqual({ error: "invalid_state", message: `${d.body.id} is attached to ${gi.body.id}; terminate the instance, then delete it` })
    expect((await w.req("GET", `/shared-filesystems/${d.body.id}`, { key: a.key })).status).toBe(404)
    const second = await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, drive: d.body.id } })
    expect(second.status).toBe(409)
    expect(second.body).toEqual({ error: "invalid_state", message: `drive ${d.body.id} is attached to ${gi.body.id}` })
    w.advance(24 * HOUR)
    expect(ledgerOf(w, a.account).filter((r) => r[0] === "storage_billing")).toEqual([["storage_billing", "-0.40", d.body.id]])
    const del = await w.req("DELETE", `/cloud-drives/${d.body.id}`, { key: a.key })
    expect(del.status).toBe(200)
    expect(del.body).toMatchObject({ id: d.body.id, status: "deleted", in_use: false })
    expect((await w.req("GET", "/cloud-drives", { key: a.key })).body.data.map((v: { status: string }) => v.status)).toEqual(["deleted"])
    // Deleted, it is still shown: a second delete is a conflict with its state (as a second
    // terminate of a terminated instance), not a 404; another account's still gets the 404.
    const again = await w.req("DELETE", `/cloud-drives/${d.body.id}`, { key: a.key })
    expect([again.status, again.body]).toEqual([409, { error: "invalid_state", message: `${d.body.id} is already deleted` }])
    const b = await w.signup("b@example.com")
    expect((await w.req("DELETE", `/cloud-drives/${d.body.id}`, { key: b.key })).status).toBe(404)
  })

  it("a shared filesystem is in_use while any instance mounts it", async () => {
    // Proves /shared-filesystems and `in_use` with two instances mounting one filesystem.
    w = await world()
    const a = await w.signup("a@example.com")
    const fs = await w.req("POST", "/shared-filesystems", { key: a.key, body: { size_gb: 10, region: "us-west" } })
    expect(fs.body).toMatchObject({ kind: "shared_fs", status: "available", in_use: false, daily_rate_per_gb: "0.006" })
    const g1 = await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-west", estimated_duration_hours: 1, filesystems: [fs.body.id] } })
    const g2 = await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-west", estimated_duration_hours: 1, filesystems: [fs.body.id] } })
    expect((await w.req("GET", `/shared-filesystems/${fs.body.id}`, { key: a.key })).body).toMatchObject({ in_use: true, attached_to: [g1.body.id, g2.body.id] })
    await w.req("DELETE", `/gpu-instances/${g1.body.id}`, { key: a.key })
    w.advance(0)
    expect((await w.req("GET", `/shared-filesystems/${fs.body.id}`, { key: a.key })).body).toMatchObject({ in_use: true, attached_to: [g2.body.id] })
    const mismatch = await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, filesystems: [fs.body.id] } })
    expect(mismatch.status).toBe(400)
    expect(mismatch.body).toEqual({ error: "storage_region_mismatch", message: `${fs.body.id} is in us-west, the instance in us-east`, field: "filesystems" })
    // Named twice: the engine's own code (docs/POLICY.md), not the schema's generic one.
    const twice = await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-west", estimated_duration_hours: 1, filesystems: [fs.body.id, fs.body.id] } })
    expect([twice.status, twice.body]).toEqual([400, { error: "duplicate_storage", message: `${fs.body.id} is listed more than once`, field: "filesystems" }])
  })
})

describe("billing and notifications", () => {
  it("pages transactions newest first, filters by kind and resource, and sums API usage by model", async () => {
    // Proves /billing/balance, /billing/transactions and /billing/usage on exact rows.
    w = await world()
    const a = await w.signup("a@example.com")
    const gi = (await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 } })).body.id
    w.advance(2 * HOUR)
    for (let i = 0; i < 2; i++) {
      // 100 tokens at $0.02 per 1M tokens: 2 micro-dollars a request.
      const r = await w.req("POST", "/v1/embeddings", { key: a.key, body: { model: "embed-small", input: Array(100).fill("hello").join(" ") } })
      expect(r.status).toBe(200)
    }
    expect((await w.req("GET", "/billing/balance", { key: a.key })).body).toEqual({ balance: "98.399996" })
    const page1 = await w.req("GET", "/billing/transactions?limit=2", { key: a.key })
    expect(page1.body).toEqual({
      data: [
        { id: 4, at: "2026-03-01T02:00:00.000Z", kind: "api_usage", amount: "-0.000002", balance_after: "98.399996", resource: "embed-small", description: "API usage: embed-small, 100 in / 0 out tokens" },
        { id: 3, at: "2026-03-01T02:00:00.000Z", kind: "api_usage", amount: "-0.000002", balance_after: "98.399998", resource: "embed-small", description: "API usage: embed-small, 100 in / 0 out tokens" }
      ],
      next_before: "3"
    })
    const page2 = await w.req("GET", "/billing/transactions?limit=2&before=3", { key: a.key })
    expect(page2.body.data.map((r: { id: number; kind: string; amount: string }) => [r.id, r.kind, r.amount])).toEqual([
      [2, "gpu_usage", "-1.60"],
      [1, "adjustment", "100.00"]
    ])
    expect(page2.body.next_before).toBeNull()
    const gpu = await w.req("GET", `/billing/transactions?kind=gpu_usage,refund&resource=${gi}`, { key: a.key })
    expect(gpu.body.data.map((r: { kind: string; amount: string }) => [r.kind, r.amount])).toEqual([["gpu_usage", "-1.60"]])
    const badKind = await w.req("GET", "/billing/transactions?kind=gift", { key: a.key })
    expect(badKind.status).toBe(400)
    expect(badKind.body).toEqual({ error: "invalid_request", message: "kind must be among topup, gpu_usage, refund, api_usage, storage_billing, adjustment", field: "kind" })
    expect((await w.req("GET", "/billing/usage", { key: a.key })).body).toEqual({ from: null, to: null, total: "0.000004", models: [{ model: "embed-small", amount: "0.000004", rows: 2 }] })
    expect((await w.req("GET", "/billing/usage?from=2026-03-01T00:00:00Z&to=2026-03-01T01:00:00Z", { key: a.key })).body).toEqual({
      from: "2026-03-01T00:00:00.000Z",
      to: "2026-03-01T01:00:00.000Z",
      total: "0.00",
      models: []
    })
    const badFrom = await w.req("GET", "/billing/usage?from=yesterday", { key: a.key })
    expect(badFrom.status).toBe(400)
    expect(badFrom.body).toEqual({ error: "invalid_request", message: "from must be an ISO-8601 UTC instant like 2026-03-01T00:00:00Z", field: "from" })
    // A day that does not exist is refused, not rolled into March.
    const feb31 = await w.req("GET", "/billing/usage?to=2026-02-31T00:00:00Z", { key: a.key })
    expect([feb31.status, feb31.body.field]).toEqual([400, "to"])
  })

  it("lists notifications, counts the unread, marks one read and then all", async () => {
    // Proves the bell: /notifications, /notifications/unread-count, mark read, read-all.
    w = await world()
    const a = await w.signup("a@example.com")
    const gi = (await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 } })).body.id
    w.advance(HOUR + 2 * MIN)
    const all = await w.req("GET", "/notifications", { key: a.key })
    expect(all.body.data.map((n: { kind: string; severity: string; at: string }) => [n.kind, n.severity, n.at])).toEqual([
      ["terminated", "info", "2026-03-01T01:01:00.000Z"],
      ["duration_warning", "critical", "2026-03-01T01:00:00.000Z"],
      ["duration_warning", "critical", "2026-03-01T00:56:00.000Z"],
      ["duration_warning", "critical", "2026-03-01T00:51:00.000Z"],
      ["duration_warning", "warning", "2026-03-01T00:41:00.000Z"],
      ["duration_warning", "warning", "2026-03-01T00:31:00.000Z"]
    ])
    const newest = all.body.data[0]
    expect(newest).toEqual({
      id: newest.id,
      at: "2026-03-01T01:01:00.000Z",
      severity: "info",
      kind: "terminated",
      text: "Instance terminated — duration reached.",
      resource: gi,
      data: { termination_reason: "duration_expired" },
      read: false,
      read_at: null
    })
    const count = all.body.data.length
    expect((await w.req("GET", "/notifications/unread-count", { key: a.key })).body).toEqual({ unread: count })
    const marked = await w.req("POST", `/notifications/${newest.id}/read`, { key: a.key })
    expect(marked.body).toEqual({ id: newest.id, read: true, read_at: "2026-03-01T01:02:00.000Z" })
    expect((await w.req("GET", "/notifications/unread-count", { key: a.key })).body).toEqual({ unread: count - 1 })
    expect((await w.req("GET", "/notifications?unread=true&limit=100", { key: a.key })).body.data).toHaveLength(count - 1)
    expect((await w.req("POST", "/notifications/read-all", { key: a.key })).body).toEqual({ marked: count - 1 })
    expect((await w.req("GET", "/notifications/unread-count", { key: a.key })).body).toEqual({ unread: 0 })
    const missing = await w.req("POST", "/notifications/999999/read", { key: a.key })
    expect(missing.status).toBe(404)
    expect(missing.body).toEqual({ error: "notification_not_found", message: "notification 999999 not found" })
  })

  it("writes a notification's data in the API's encoding: dollars, ISO instants, whole seconds", async () => {
    // Proves docs/API.md "Money … Instants … durations" holds for `data` too (found by review:
    // partial_hold's hold was micro-dollars "1653333" with window_ms, deadline_at and retry_at
    // epoch ms), while the engine keeps storing what its own readers use.
    w = await world()
    const a = await w.signup("a@example.com", "80.00")
    await w.req("POST", "/models", { key: a.key, body: { name: "m", source: "huggingface", gpu: "H100", gpu_count: 1 } })
    const ii = (await w.req("POST", "/inference-instances", { key: a.key, body: { model: "m" } })).body.id as string
    const gi = (await w.req("POST", "/gpu-instances", { key: a.key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 } })).body.id as string
    // $80 − $76.80 (24 h × 2 replicas) − $1.60: the second cycle renews on a partial hold.
    w.advance(24 * HOUR + MIN)
    const notes = (await w.req("GET", "/notifications?limit=100", { key: a.key })).body.data as Array<{ kind: string; resource: string | null; data: unknown }>
    const first = (kind: string) => notes.filter((n) => n.kind === kind).at(-1)
    expect([first("duration_warning"), first("partial_hold")]).toMatchObject([
      { resource: gi, data: { minutes: 30, deadline_at: "2026-03-01T01:01:00.000Z" } },
      { resource: ii, data: { hold: "1.653333", window_seconds: 1_859, cycle: 2 } }
    ])
    const stored = w.opened.engine.ledger.notifications().filter((n) => n.kind === "partial_hold").map((n) => n.data)
    expect(stored).toEqual(['{"hold":"1653333","window_ms":1859999,"cycle":2}'])
    // Every field the engine writes, as an answer shows it (an auto-recharge's retry_at too).
    expect(notificationDataJson('{"payment":"pay_1","code":"card_declined","retry_at":1772327700000}')).toEqual({ payment: "pay_1", code: "card_declined", retry_at: "2026-03-01T01:15:00.000Z" })
    expect(notificationDataJson('{"payment":"pay_1","credited":"10.00","auto_recharge":null}')).toEqual({ payment: "pay_1", credited: "10.00", auto_recharge: null })
    expect(notificationDataJson(null)).toBeNull()
  })
})
