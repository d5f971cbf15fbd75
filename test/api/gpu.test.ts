/**
 * GPU instances and clusters over HTTP: launch, list, detail, extend, terminate, the
 * seeds' worked numbers, and every refusal with its exact body and ledger effect.
 */
import { afterEach, describe, expect, it } from "vitest"
import { HOUR, ledgerOf, MIN, stateOf, world, type World } from "./harness.js"

let w: World
afterEach(async () => w.close())

const launch = (key: string, extra: Record<string, unknown> = {}) =>
  w.req("POST", "/gpu-instances", { key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 2, ...extra } })

describe("GPU instances", () => {
  it("launch holds 1 GPU × $1.60 × 2 h = $3.20 and answers the instance, pending", async () => {
    // Proves POST /gpu-instances: 201, the exact view, the hold row, the request id header.
    w = await world()
    const a = await w.signup("a@example.com")
    const r = await launch(a.key)
    expect(r.status).toBe(201)
    expect(r.headers["x-ecolink-request-id"]).toMatch(/^req_[a-z2-7]{8}_\d+$/)
    expect(r.body).toEqual({
      id: r.body.id,
      kind: "gpu_instance",
      status: "pending",
      gpu: "H100",
      gpu_count: 1,
      node_count: 1,
      region: "us-east",
      image: null,
      drive: null,
      filesystems: [],
      hourly_rate: "1.60",
      estimated_duration_hours: 2,
      created_at: "2026-03-01T00:00:00.000Z",
      started_at: null,
      deadline_at: null,
      elapsed_seconds: null,
      remaining_seconds: null,
      billable_seconds: 0,
      termination_reason: null
    })
    expect(r.body.id).toMatch(/^gi-[a-z2-7]{12}$/)
    expect(ledgerOf(w, a.account)).toEqual([
      ["adjustment", "100.00", null],
      ["gpu_usage", "-3.20", r.body.id]
    ])
  })

  it("shows the image, the drive and the filesystems a launch asked for; the drive's attached_to names the instance", async () => {
    // Proves the view carries what a launch attached, not only the storage's own attached_to.
    w = await world()
    const a = await w.signup("a@example.com")
    const drive = await w.req("POST", "/cloud-drives", { key: a.key, body: { size_gb: 10, region: "us-east" } })
    const fs = await w.req("POST", "/shared-filesystems", { key: a.key, body: { size_gb: 10, region: "us-east" } })
    const r = await launch(a.key, { image: "ghcr.io/acme/train:1", drive: drive.body.id, filesystems: [fs.body.id] })
    expect(r.status).toBe(201)
    expect([r.body.image, r.body.drive, r.body.filesystems]).toEqual(["ghcr.io/acme/train:1", drive.body.id, [fs.body.id]])
    const d = await w.req("GET", `/gpu-instances/${r.body.id}`, { key: a.key })
    expect([d.body.image, d.body.drive, d.body.filesystems]).toEqual(["ghcr.io/acme/train:1", drive.body.id, [fs.body.id]])
    expect((await w.req("GET", `/cloud-drives/${drive.body.id}`, { key: a.key })).body).toMatchObject({ status: "in_use", attached_to: [r.body.id] })
  })

  it("detail shows status, elapsed, remaining and the deadline; list pages by id", async () => {
    // Proves GET /gpu-instances/:id and GET /gpu-instances with limit/after.
    w = await world()
    const a = await w.signup("a@example.com")
    const ids = [(await launch(a.key)).body.id, (await launch(a.key)).body.id, (await launch(a.key)).body.id].sort()
    w.advance(31 * MIN)
    const d = await w.req("GET", `/gpu-instances/${ids[0]}`, { key: a.key })
    expect(d.status).toBe(200)
    expect(d.body).toMatchObject({
      id: ids[0],
      status: "running",
      started_at: "2026-03-01T00:01:00.000Z",
      deadline_at: "2026-03-01T02:01:00.000Z",
      elapsed_seconds: 30 * 60,
      remaining_seconds: 90 * 60,
      billable_seconds: 30 * 60
    })
    const first = await w.req("GET", "/gpu-instances?limit=2", { key: a.key })
    expect(first.status).toBe(200)
    expect(first.body.data.map((v: { id: string }) => v.id)).toEqual(ids.slice(0, 2))
    expect(first.body.next_after).toBe(ids[1])
    const second = await w.req("GET", `/gpu-instances?limit=2&after=${ids[1]}`, { key: a.key })
    expect(second.body.data.map((v: { id: string }) => v.id)).toEqual([ids[2]])
    expect(second.body.next_after).toBeNull()
    const bad = await w.req("GET", "/gpu-instances?limit=101", { key: a.key })
    expect(bad.status).toBe(400)
    expect(bad.body).toEqual({ error: "invalid_request", message: "limit must be from 1 to 100", field: "limit" })
  })

  it("extend by 3 h answers {additional_cost: 4.80, new_balance} and moves the deadline", async () => {
    // Proves the seeds' extend example, byte for byte as the manual shows the numbers.
    w = await world()
    const a = await w.signup("a@example.com")
    const id = (await launch(a.key)).body.id
    w.advance(5 * MIN)
    const r = await w.req("POST", `/gpu-instances/${id}/extend`, { key: a.key, body: { hours: 3 } })
    expect(r.status).toBe(200)
    expect(r.text).toBe('{"additional_cost":4.8,"new_balance":92,"deadline_at":"2026-03-01T05:01:00.000Z"}')
    expect(ledgerOf(w, a.account).slice(-1)).toEqual([["gpu_usage", "-4.80", id]])
    const d = await w.req("GET", `/gpu-instances/${id}`, { key: a.key })
    expect(d.body.estimated_duration_hours).toBe(5)
  })

  it("extend the balance cannot cover is 402 insufficient_balance and changes nothing", async () => {
    // Proves a refused extend leaves the old deadline and writes no row.
    w = await world()
    const a = await w.signup("a@example.com", "5.00")
    const id = (await launch(a.key)).body.id
    const before = stateOf(w)
    const r = await w.req("POST", `/gpu-instances/${id}/extend`, { key: a.key, body: { hours: 2 } })
    expect(r.status).toBe(402)
    expect(r.body).toEqual({ error: "insufficient_balance", message: "balance $1.80 cannot cover $3.20" })
    expect(stateOf(w)).toBe(before)
  })

  it("extend validates hours: missing, fractional, out of range, huge, unknown fields", async () => {
    // Proves 400 bodies name the field, and no number (1e400, 2^64) is a 500.
    w = await world()
    const a = await w.signup("a@example.com")
    const id = (await launch(a.key)).body.id
    const cases: Array<[string, unknown]> = [
      ["{}", { error: "invalid_request", message: "hours is required", field: "hours" }],
      ['{"hours":1.5}', { error: "invalid_request", message: "hours must be integer", field: "hours" }],
      ['{"hours":0}', { error: "invalid_request", message: "hours must be >= 1", field: "hours" }],
      ['{"hours":721}', { error: "invalid_request", message: "hours must be <= 720", field: "hours" }],
      ['{"hours":1e400}', { error: "invalid_request", message: "hours must be integer", field: "hours" }],
      ['{"hours":18446744073709551616}', { error: "invalid_request", message: "hours must be <= 720", field: "hours" }],
      ['{"hours":"3"}', { error: "invalid_request", message: "hours must be integer", field: "hours" }],
      ['{"hours":3,"minutes":5}', { error: "invalid_request", message: "unknown field minutes", field: "minutes" }],
      ["[3]", { error: "invalid_request", message: "body must be object", field: "body" }]
    ]
    for (const [raw, body] of cases) {
      const r = await w.req("POST", `/gpu-instances/${id}/extend`, { key: a.key, raw, headers: { "content-type": "application/json" } })
      expect([raw, r.status, r.body]).toEqual([raw, 400, body])
    }
  })

  it("DELETE terminates: terminating at once, terminated when the pod is gone, unused hold refunded", async () => {
    // Proves DELETE /gpu-instances/:id settles the hold exactly once, and 409 afterwards.
    w = await world()
    const a = await w.signup("a@example.com")
    const id = (await launch(a.key)).body.id
    w.advance(31 * MIN)
    const r = await w.req("DELETE", `/gpu-instances/${id}`, { key: a.key })
    expect(r.status).toBe(200)
    expect(r.body).toMatchObject({ id, status: "terminating", termination_reason: "user_requested", billable_seconds: 30 * 60, elapsed_seconds: null, remaining_seconds: null })
    w.advance(0)
    expect((await w.req("GET", `/gpu-instances/${id}`, { key: a.key })).body.status).toBe("terminated")
    // 30 minutes of $1.60/h is $0.80: the rest of the $3.20 hold comes back.
    expect(ledgerOf(w, a.account)).toEqual([
      ["adjustment", "100.00", null],
      ["gpu_usage", "-3.20", id],
      ["refund", "2.40", id]
    ])
    const again = await w.req("DELETE", `/gpu-instances/${id}`, { key: a.key })
    expect(again.status).toBe(409)
    expect(again.body).toEqual({ error: "instance_not_active", message: `cannot terminate instance ${id}: it is terminated` })
    const extend = await w.req("POST", `/gpu-instances/${id}/extend`, { key: a.key, body: { hours: 1 } })
    expect(extend.status).toBe(409)
    expect(extend.body).toEqual({ error: "instance_not_active", message: `cannot extend instance ${id}: it is terminated` })
  })

  it("runs to its deadline and stops with duration_expired and the manual's notification", async () => {
    // Proves the auto-stop as the API shows it: status, reason, notification text.
    w = await world()
    const a = await w.signup("a@example.com")
    const id = (await launch(a.key, { estimated_duration_hours: 1 })).body.id
    w.advance(HOUR + 2 * MIN)
    const d = await w.req("GET", `/gpu-instances/${id}`, { key: a.key })
    expect(d.body).toMatchObject({ status: "terminated", termination_reason: "duration_expired", billable_seconds: 3600 })
    const n = await w.req("GET", "/notifications?limit=1", { key: a.key })
    expect(n.body.data[0]).toMatchObject({ kind: "terminated", severity: "info", text: "Instance terminated — duration reached.", resource: id, read: false })
    expect(ledgerOf(w, a.account)).toEqual([
      ["adjustment", "100.00", null],
      ["gpu_usage", "-1.60", id]
    ])
  })

  it("refuses launches: 402 uncovered hold, 400 GPUs over a node, unknown region and GPU, unknown storage 404", async () => {
    // Proves each admission refusal's exact body, and that none writes anything.
    w = await world()
    const a = await w.signup("a@example.com", "1.00")
    const before = stateOf(w)
    const cases: Array<[Record<string, unknown>, number, unknown]> = [
      [{}, 402, { error: "insufficient_balance", message: "balance $1.00 cannot cover $3.20" }],
      [{ gpu_count: 9 }, 400, { error: "gpu_count_exceeds_node", message: "gpu_count exceeds GPUs per node", field: "gpu_count" }],
      [{ region: "mars" }, 400, { error: "unknown_region", message: "no region mars", field: "region" }],
      [{ gpu: "Z9" }, 400, { error: "unknown_gpu", message: "no GPU type Z9 in the catalog", field: "gpu" }],
      [{ drive: "cd-nothere" }, 404, { error: "resource_not_found", message: "resource cd-nothere not found" }],
      [{ node_count: 2 }, 400, { error: "invalid_request", message: "unknown field node_count", field: "node_count" }],
      [{ gpu_count: 65 }, 400, { error: "invalid_request", message: "gpu_count must be <= 64", field: "gpu_count" }]
    ]
    for (const [extra, status, body] of cases) {
      const r = await launch(a.key, extra)
      expect([extra, r.status, r.body]).toEqual([extra, status, body])
    }
    expect(stateOf(w)).toBe(before)
  })
})

describe("GPU clusters", () => {
  it("launch holds every GPU of every node; the routes of one kind do not see the other", async () => {
    // Proves POST /gpu-clusters (2 nodes × 8 GPUs × $1.60 × 1 h = $25.60) and kind-scoped routes.
    w = await world()
    const a = await w.signup("a@example.com")
    const r = await w.req("POST", "/gpu-clusters", { key: a.key, body: { gpu: "H100", gpu_count: 8, node_count: 2, region: "us-west", estimated_duration_hours: 1 } })
    expect(r.status).toBe(201)
    expect(r.body).toMatchObject({ kind: "gpu_cluster", status: "pending", gpu_count: 8, node_count: 2, region: "us-west", estimated_duration_hours: 1 })
    expect(r.body.id).toMatch(/^gc-/)
    expect(ledgerOf(w, a.account).slice(-1)).toEqual([["gpu_usage", "-25.60", r.body.id]])
    const other = await w.req("GET", `/gpu-instances/${r.body.id}`, { key: a.key })
    expect(other.status).toBe(404)
    expect(other.body).toEqual({ error: "resource_not_found", message: `resource ${r.body.id} not found` })
    const wrongDelete = await w.req("DELETE", `/gpu-instances/${r.body.id}`, { key: a.key })
    expect(wrongDelete.status).toBe(404)
    expect((await w.req("GET", `/gpu-clusters/${r.body.id}`, { key: a.key })).body.status).toBe("pending")
    const list = await w.req("GET", "/gpu-clusters", { key: a.key })
    expect(list.body.data.map((v: { id: string }) => v.id)).toEqual([r.body.id])
    expect((await w.req("GET", "/gpu-instances", { key: a.key })).body).toEqual({ data: [], next_after: null })
    w.advance(2 * MIN)
    const ext = await w.req("POST", `/gpu-clusters/${r.body.id}/extend`, { key: a.key, body: { hours: 1 } })
    expect(ext.status).toBe(200)
    expect(ext.body).toEqual({ additional_cost: 25.6, new_balance: 48.8, deadline_at: "2026-03-01T02:01:00.000Z" })
    const del = await w.req("DELETE", `/gpu-clusters/${r.body.id}`, { key: a.key })
    expect(del.body).toMatchObject({ status: "terminating", termination_reason: "user_requested" })
  })
})
