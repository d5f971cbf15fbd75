/**
 * A replica that loses its leader lease fences its supervisor at once
 * (src/api/kubernetesServer.ts): another replica may be writing the database already, so
 * its timers, alarms and requests still in flight must write nothing more while its app
 * closes. Requests get the standby's 503 `not_leader`.
 */
import { afterEach, describe, expect, it } from "vitest"
import { NotLeader } from "../../src/errors.js"
import { HOUR, MIN, stateOf, world, type World } from "./harness.js"

let w: World | null = null
afterEach(async () => {
  await w?.close()
  w = null
})

const NOT_LEADER = { error: "not_leader", message: "this control-plane replica lost the leader lease; retry" }

describe("a fenced supervisor", () => {
  it("answers 503 not_leader and writes nothing more: no deadline, no terminate, no usage", async () => {
    w = await world()
    const { key } = await w.signup("ada@example.com")
    const launched = await w.req("POST", "/gpu-instances", { key, body: { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 } })
    expect(launched.status).toBe(201)
    const id = launched.body.id as string
    w.advance(5 * MIN)
    expect((await w.req("GET", `/gpu-instances/${id}`, { key })).body.status).toBe("running")
    const before = stateOf(w)

    w.opened.engine.sup.fence()
    for (const [method, url, body] of [
      ["POST", "/gpu-instances", { gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 }],
      ["POST", `/gpu-instances/${id}/extend`, { hours: 1 }],
      ["DELETE", `/gpu-instances/${id}`, undefined],
      ["POST", "/v1/embeddings", { model: "embed-small", input: "hello" }]
    ] as const) {
      const r = await w.req(method, url, { key, ...(body === undefined ? {} : { body }) })
      expect([method, url, r.status, r.body, r.headers["retry-after"]]).toEqual([method, url, 503, NOT_LEADER, "2"])
    }
    // A request already past the door when the lease went gets the same refusal from its unit of work.
    expect(() => w!.opened.engine.sup.unitOfWork(() => 1)).toThrow(NotLeader)
    // Its alarms are cancelled: the deadline an hour on settles nothing here (the new leader
    // does that), and the shutdown's posting of API usage writes nothing either.
    w.clock.advanceTo(w.clock.now() + 2 * HOUR)
    w.opened.engine.sup.settleApiUsage()
    expect(stateOf(w)).toBe(before)
  })
})
