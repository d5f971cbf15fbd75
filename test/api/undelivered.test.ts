/**
 * The bound on `/v1` answers a client leaves unread (`UNDELIVERED_ANSWER_BYTES_MAX`), at the
 * edges openai.test.ts does not reach: requests already under way when the first answer goes
 * unread, and requests whose client is gone before their answer is written; and the bound
 * across all accounts (`UNDELIVERED_ANSWER_BYTES_TOTAL_MAX`).
 */
import { connect, type AddressInfo, type Socket } from "node:net"
import { Writable } from "node:stream"
import { afterEach, describe, expect, it } from "vitest"
import { stateOf, world, type World } from "./harness.js"

let w: World
afterEach(async () => w.close())

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const apiRows = (account: string) => w.opened.engine.ledger.ledgerRows().filter((r) => r.account === account && r.kind === "api_usage")

/** 2,048 embeddings of 256 floats: an answer of megabytes, over a bound of 1 MiB. */
const BIG = JSON.stringify({ model: "embed-small", input: Array(2_048).fill("a"), dimensions: 256, encoding_format: "float" })

/** A connection that sends a /v1 embeddings request's headers and all its body but the last byte, and reads nothing. */
const held = (port: number, key: string): Socket => {
  const socket = connect(port, "127.0.0.1")
  socket.pause()
  socket.write(`POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(BIG)}\r\n\r\n${BIG.slice(0, -1)}`)
  return socket
}

/** Reads a held connection's answer until its status (and a refusal's error code) is known, then closes it. */
const statusAndCode = (socket: Socket): Promise<string> =>
  new Promise((resolve) => {
    let text = ""
    const done = (answer: string) => {
      socket.destroy()
      resolve(answer)
    }
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1")
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]
      if (status === "200") return done(status)
      const code = /"error":"([a-z_]+)"/.exec(text)?.[1]
      if (status !== undefined && code !== undefined) done(`${status} ${code}`)
    })
    socket.resume()
  })

describe("/v1 answers a client leaves unread", () => {
  it("bound requests whose headers came before the first unread answer: they are refused when their body ends, not billed and answered", async () => {
    // Proves the bound holds for requests already under way (review): the count was read when
    // a request's headers arrived, so five connections that sent their headers first, then
    // their bodies, all passed it and left five answers of megabytes unread.
    w = await world({ undeliveredAnswerBytesMax: 1_048_576 })
    const a = await w.signup("a@example.com", "10.00")
    await w.app.listen({ port: 0, host: "127.0.0.1" })
    const port = (w.app.server.address() as AddressInfo).port
    const sockets = [1, 2, 3, 4, 5].map(() => held(port, a.key))
    await sleep(300)
    for (const socket of sockets) socket.write(BIG.slice(-1))
    for (let i = 0; i < 400 && apiRows(a.account).length < 1; i++) await sleep(10)
    await sleep(300)
    expect(apiRows(a.account)).toHaveLength(1)
    // Read now: one was answered, the four others refused with the code that says why.
    const answers = await Promise.all(sockets.map(statusAndCode))
    expect(answers.sort()).toEqual(["200", "429 answers_undelivered", "429 answers_undelivered", "429 answers_undelivered", "429 answers_undelivered"])
    expect(apiRows(a.account)).toHaveLength(1)
  })
})


describe("/v1 answers to a client already gone", () => {
  it("are not counted: a client that hangs up or resets mid-body leaves the account's count at 0", async () => {
    // Proves the count cannot drift up (review): the refusal of a body cut short is written
    // after the connection closed, so its bytes were added and the close that takes them off
    // had already happened. 43 bytes stayed per hang-up, for good: a flaky network locked the
    // account out of /v1 in the end. With a bound of 0, any byte left is a 429.
    w = await world({ undeliveredAnswerBytesMax: 0 })
    const a = await w.signup("a@example.com", "10.00")
    await w.app.listen({ port: 0, host: "127.0.0.1" })
    const port = (w.app.server.address() as AddressInfo).port
    const body = JSON.stringify({ model: "llama-3-8b", messages: [{ role: "user", content: "hi" }], max_tokens: 1 })
    const chat = () =>
      fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${a.key}`, "content-type": "application/json" }, body })
    expect((await chat()).status).toBe(200)
    for (const hangUp of [(s: Socket) => s.destroy(), (s: Socket) => s.resetAndDestroy()]) {
      const socket = connect(port, "127.0.0.1")
      await new Promise((r) => socket.once("connect", r))
      socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${a.key}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body.slice(0, 5)}`)
      await sleep(100)
      hangUp(socket)
      await sleep(200)
      const again = await chat()
      expect([again.status, await again.text()]).toEqual([200, expect.stringContaining('"object":"chat.completion"')])
    }
    expect(apiRows(a.account)).toHaveLength(3)
  })
})

describe("/v1 answers queued behind an unread one on a connection that goes", () => {
  it("are not counted once the connection is gone: requests pipelined behind an unread answer leave the count at 0", async () => {
    // Proves the count cannot drift up (second review): Node queues the answers of requests
    // pipelined behind one not yet written out, and when the connection goes it never closes
    // them, so their bytes stayed counted for good. With a bound of 0, any byte left is a 429
    // (or a 503, for the process's count).
    w = await world({ undeliveredAnswerBytesMax: 0, undeliveredAnswerBytesTotalMax: 0 })
    const a = await w.signup("a@example.com", "10.00")
    await w.app.listen({ port: 0, host: "127.0.0.1" })
    const port = (w.app.server.address() as AddressInfo).port
    const small = JSON.stringify({ model: "llama-3-8b", messages: [{ role: "user", content: "hi" }], max_tokens: 1 })
    const request = (path: string, body: string) => `POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${a.key}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
    const socket = connect(port, "127.0.0.1")
    socket.pause()
    socket.write(request("/v1/embeddings", BIG) + request("/v1/chat/completions", small).repeat(3))
    for (let i = 0; i < 400 && apiRows(a.account).length < 1; i++) await sleep(10)
    await sleep(300)
    socket.destroy()
    await sleep(300)
    const again = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${a.key}`, "content-type": "application/json" }, body: small })
    expect([again.status, await again.text()]).toEqual([200, expect.stringContaining('"object":"chat.completion"')])
    expect(apiRows(a.account)).toHaveLength(2)
  })
})

describe("/v1 answers all accounts' clients leave unread", () => {
  it("past the process's bound, refuse every account's /v1 request 503 server_busy with retry-after, bill nothing, store nothing, and answer again once they are read", async () => {
    // Proves the process-wide bound: per account alone, a hundred accounts could each leave
    // 64 MiB unread and take the process to 6 GiB. Here the bound is 1 MiB for the process and
    // the default 64 MiB per account: one unread answer of account A is over the first, under
    // the second, so B (and A too) are told the server is busy, not that they are at fault.
    const lines: string[] = []
    const stream = new Writable({
      write(chunk, _enc, done) {
        lines.push(...String(chunk).split("\n").filter((l) => l.length > 0))
        done()
      }
    })
    const warnings = () => lines.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => l.level === 40).map((l) => l.msg)
    w = await world({ undeliveredAnswerBytesTotalMax: 1_048_576, logger: { level: "warn", stream } })
    const a = await w.signup("a@example.com", "10.00")
    const b = await w.signup("b@example.com", "10.00")
    await w.app.listen({ port: 0, host: "127.0.0.1" })
    const port = (w.app.server.address() as AddressInfo).port
    const unread = held(port, a.key)
    unread.write(BIG.slice(-1))
    for (let i = 0; i < 400 && apiRows(a.account).length < 1; i++) await sleep(10)
    await sleep(100)
    expect(apiRows(a.account)).toHaveLength(1)
    const body = JSON.stringify({ model: "llama-3-8b", messages: [{ role: "user", content: "hi" }], max_tokens: 1 })
    const chat = (key: string) =>
      fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${key}`, "content-type": "application/json", "idempotency-key": "k1" }, body })
    const before = stateOf(w)
    for (const key of [b.key, a.key]) {
      const refused = await chat(key)
      expect([refused.status, refused.headers.get("retry-after"), await refused.json()]).toEqual([
        503,
        "5",
        { error: "server_busy", message: "the server holds too many /v1 answers its clients have not read yet; retry after 5 s" }
      ])
      expect(refused.headers.get("x-ecolink-request-id")).toMatch(/^req_/)
    }
    // The operator is told once for the spell, not once per refused request.
    expect(warnings()).toEqual(["unread /v1 answers over the process's bound: /v1 refused 503 server_busy until they are read"])
    // Nothing billed, nothing remembered for the Idempotency-Key; the other routes answer.
    expect(stateOf(w)).toBe(before)
    expect(apiRows(b.account)).toHaveLength(0)
    expect((await fetch(`http://127.0.0.1:${port}/billing/balance`, { headers: { authorization: `Bearer ${b.key}` } })).status).toBe(200)
    // Once A's connection is gone, B asks again with the same key: run once, billed once.
    unread.destroy()
    let again = await chat(b.key)
    for (let i = 0; i < 100 && again.status === 503; i++) {
      await sleep(10)
      again = await chat(b.key)
    }
    expect([again.status, again.headers.get("idempotent-replayed")]).toEqual([200, null])
    const repeat = await chat(b.key)
    expect([repeat.status, repeat.headers.get("idempotent-replayed")]).toEqual([200, "true"])
    expect(apiRows(b.account)).toHaveLength(1)
  })
})
