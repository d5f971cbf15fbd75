/**
 * Accounts, teams and API keys over HTTP: sign-up, who-am-I, invites and their links,
 * acceptance, members, roles, key creation (secret shown once, stored hashed), listing and
 * revocation; the operator's routes and their key.
 */
import { createHash } from "node:crypto"
import { afterEach, describe, expect, it } from "vitest"
import { ApiStore, REVOKED_KEYS_KEPT } from "../../src/api/store.js"
import { sha256 } from "../../src/api/secrets.js"
import { databaseAtVersion, tmpDb } from "../helpers.js"
import { OPERATOR_KEY, START, ledgerOf, stateOf, world, type World } from "./harness.js"

let w: World
afterEach(async () => w.close())

describe("sign-up and keys", () => {
  it("sign-up makes an account at $0, its owner and a key shown once and stored as SHA-256", async () => {
    // Proves POST /accounts's exact answer and that the database never holds the secret.
    w = await world()
    const r = await w.req("POST", "/accounts", { body: { email: "Ada@Example.com" } })
    expect(r.status).toBe(201)
    const { account, user, api_key } = r.body
    expect(r.body).toEqual({
      account: { id: account.id, balance: "0.00" },
      user: { id: user.id, email: "ada@example.com", role: "owner" },
      api_key: { id: api_key.id, name: "default", prefix: `eco_${api_key.id}_`, user_id: user.id, created_at: "2026-03-01T00:00:00.000Z", revoked_at: null, secret: api_key.secret }
    })
    expect(account.id).toMatch(/^acct-[a-z2-7]{12}$/)
    expect(api_key.secret).toMatch(new RegExp(`^eco_${api_key.id}_[A-Za-z0-9_-]{43}$`))
    const row = w.opened.engine.ledger.db.prepare(`SELECT * FROM api_keys WHERE id = ?`).get(api_key.id) as { secret_sha256: Buffer }
    const secret = (api_key.secret as string).slice(`eco_${api_key.id}_`.length)
    expect(row.secret_sha256.toString("hex")).toBe(createHash("sha256").update(secret).digest("hex"))
    expect(stateOf(w)).not.toContain(secret)
    const me = await w.req("GET", "/account", { key: api_key.secret })
    expect(me.body).toEqual({ id: account.id, balance: "0.00", user: { id: user.id, email: "ada@example.com", role: "owner" }, key_id: api_key.id })
    const again = await w.req("POST", "/accounts", { body: { email: "ada@example.com" } })
    expect(again.status).toBe(409)
    expect(again.body).toEqual({ error: "email_taken", message: "an account was already signed up with this email" })
    const bad = await w.req("POST", "/accounts", { body: { email: "not-an-email" } })
    expect(bad.status).toBe(400)
    expect(bad.body).toEqual({ error: "invalid_request", message: "email is not an address we can store", field: "email" })
    // Control characters are refused, and so is an address that lowering makes too long.
    const before = stateOf(w)
    for (const email of ["a\u0000@example.com", "\u0130".repeat(64) + "@example.com"]) {
      const r = await w.req("POST", "/accounts", { body: { email } })
      expect([r.status, r.body.error, r.body.field]).toEqual([400, "invalid_request", "email"])
    }
    expect(stateOf(w)).toBe(before)
  })

  it("refuses an email with an invisible character in it: 400, nobody signed up or invited", async () => {
    // Found by review: `owner\u200b@example.com` signed up and looked like the owner in a
    // team's member list; a bidirectional override shows an address reversed.
    w = await world()
    const owner = await w.signup("owner@example.com")
    const before = stateOf(w)
    for (const hidden of ["owner\u200b@example.com", "\u202eowner@example.com", "own\u00ader@example.com", "owner@exa\u2060mple.com", "own\ufeffer@example.com"]) {
      const signup = await w.req("POST", "/accounts", { body: { email: hidden } })
      const invite = await w.req("POST", "/team/invites", { key: owner.key, body: { email: hidden } })
      for (const r of [signup, invite]) expect([JSON.stringify(hidden), r.status, r.body.error, r.body.field]).toEqual([JSON.stringify(hidden), 400, "invalid_request", "email"])
    }
    expect(stateOf(w)).toBe(before)
  })

  it("refuses every invisible character, not only the listed ones: Arabic letter mark, tags, variation selectors, fillers, lone surrogates", async () => {
    // Found by second review: the refused characters were a hand-made list, and the ones it
    // missed signed up: an Arabic letter mark (a bidirectional mark like U+200F), Unicode tag
    // characters (invisible ASCII look-alikes), variation selectors, the combining grapheme
    // joiner, the Hangul filler, the Mongolian vowel separator. Each of them is a default
    // ignorable code point, shown as nothing; a lone surrogate was stored as U+FFFD.
    w = await world()
    const owner = await w.signup("owner@example.com")
    const before = stateOf(w)
    for (const hidden of ["\u061cowner@example.com", "owner\u{e0041}@example.com", "owner\ufe0f@example.com", "own\u034fer@example.com", "owner\u3164@example.com", "owner@example\u180e.com", "owner\ud800@example.com"]) {
      const signup = await w.req("POST", "/accounts", { body: { email: hidden } })
      const invite = await w.req("POST", "/team/invites", { key: owner.key, body: { email: hidden } })
      for (const r of [signup, invite]) expect([JSON.stringify(hidden), r.status, r.body.error, r.body.field]).toEqual([JSON.stringify(hidden), 400, "invalid_request", "email"])
    }
    expect(stateOf(w)).toBe(before)
    // Letters of every script are addresses still.
    expect((await w.req("POST", "/accounts", { body: { email: "jos\u00e9@\u4f8b\u3048.jp" } })).status).toBe(201)
  })

  it("refuses a key name with an invisible or direction-changing character: 400, no key made", async () => {
    // Found by second review: a key's name is what the owner reads in GET /api-keys to choose
    // which key to revoke, and `\u202e` showed `Test-key` reversed, a zero-width space two names
    // as one; a member could pass a key of theirs for another. Letters of any script still do.
    w = await world()
    const owner = await w.signup("owner@example.com")
    const before = stateOf(w)
    for (const name of ["\u202eyek-tseT", "ci\u200bkey", "deploy\u{e0041}", "a\u0000b"]) {
      const made = await w.req("POST", "/api-keys", { key: owner.key, body: { name } })
      const signup = await w.req("POST", "/accounts", { body: { email: "new@example.com", key_name: name } })
      expect([JSON.stringify(name), made.status, made.body.error, made.body.field, signup.status, signup.body.field]).toEqual([JSON.stringify(name), 400, "invalid_request", "name", 400, "key_name"])
    }
    expect(stateOf(w)).toBe(before)
    const named = await w.req("POST", "/api-keys", { key: owner.key, body: { name: "clé de déploiement 生产" } })
    expect([named.status, named.body.name]).toEqual([201, "clé de déploiement 生产"])
  })

  it("stores an email composed (NFC): the same address typed decomposed is the same account and the same invitee", async () => {
    // Found by second review: `jose\u0301@example.com` (an e and a combining accent) shows as
    // `josé@example.com` but was another string, so it signed up as a second account that
    // passed for the first in a team's member list, and an invite to one was 403 for the other.
    w = await world()
    const jose = await w.signup("jos\u00e9@example.com")
    const twin = await w.req("POST", "/accounts", { body: { email: "jose\u0301@example.com" } })
    expect([twin.status, twin.body.error]).toEqual([409, "email_taken"])
    const owner = await w.signup("owner@example.com")
    const invite = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "JOSE\u0301@example.com" } })
    expect([invite.status, invite.body.email]).toEqual([201, "jos\u00e9@example.com"])
    const accepted = await w.req("POST", `/invites/${(invite.body.invite_url as string).split("/invites/")[1]}/accept`, { key: jose.key })
    expect(accepted.status).toBe(201)
  })

  it("composes an email stored decomposed before emails were composed (migration 19): its address signs up no second account, and its invites are accepted", async () => {
    // Proves migration 19 on a database an engine at schema 18 left: `jose\u0301@example.com`,
    // signed up before sign-up composed emails, stayed decomposed, so `josé@example.com` signed
    // up as a second account (201) that passed for the first, and an invite to the address
    // (stored composed) was 403 invite_email_mismatch for its owner. Composed at upgrade, the
    // sign-up is 409 email_taken, the member list shows the composed address, and the invite
    // is accepted with the old user's key.
    const file = tmpDb()
    const old = databaseAtVersion(file, 18)
    old.exec(`INSERT INTO accounts (id, balance_micros, created_at) VALUES ('acct-old', 0, 0)`)
    old.prepare(`INSERT INTO api_users (id, email, created_at) VALUES ('usr-old', ?, 0)`).run("jose\u0301@example.com")
    old.exec(`INSERT INTO api_memberships (account, user_id, role, joined_at) VALUES ('acct-old', 'usr-old', 'owner', 0)`)
    const secret = "s".repeat(43)
    old.prepare(`INSERT INTO api_keys (id, account, user_id, name, secret_sha256, created_at) VALUES ('oldkeyoldkey', 'acct-old', 'usr-old', 'default', ?, 0)`).run(sha256(secret))
    old.close()
    w = await world({}, { db: file })
    const twin = await w.req("POST", "/accounts", { body: { email: "jos\u00e9@example.com" } })
    expect([twin.status, twin.body.error]).toEqual([409, "email_taken"])
    const key = `eco_oldkeyoldkey_${secret}`
    expect((await w.req("GET", "/team/members", { key })).body.data).toEqual([{ user_id: "usr-old", email: "jos\u00e9@example.com", role: "owner", joined_at: "1970-01-01T00:00:00.000Z" }])
    const owner = await w.signup("owner@example.com")
    const invite = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "jos\u00e9@example.com" } })
    const accepted = await w.req("POST", `/invites/${(invite.body.invite_url as string).split("/invites/")[1]}/accept`, { key })
    expect([accepted.status, accepted.body.account]).toEqual([201, owner.account])
  })

  it("creates, lists (without secrets) and revokes keys; a revoked key is 401", async () => {
    // Proves /api-keys: the secret once, never in a list, revocation immediate.
    w = await world()
    const a = await w.signup("a@example.com")
    const created = await w.req("POST", "/api-keys", { key: a.key, body: { name: "ci" } })
    expect(created.status).toBe(201)
    expect(created.body).toMatchObject({ name: "ci", user_id: a.user, revoked_at: null })
    const ci = created.body.secret as string
    expect((await w.req("GET", "/billing/balance", { key: ci })).body).toEqual({ balance: "100.00" })
    const list = await w.req("GET", "/api-keys", { key: a.key })
    expect(list.body.data.map((k: { name: string }) => k.name)).toEqual(["default", "ci"])
    expect(list.text).not.toContain(ci.slice(-43))
    expect(Object.keys(list.body.data[0]).sort()).toEqual(["created_at", "id", "name", "prefix", "revoked_at", "user_id"])
    const revoked = await w.req("DELETE", `/api-keys/${created.body.id}`, { key: a.key })
    expect(revoked.status).toBe(200)
    expect(revoked.body).toEqual({ ...list.body.data[1], revoked_at: "2026-03-01T00:00:00.000Z" })
    const refused = await w.req("GET", "/billing/balance", { key: ci })
    expect(refused.status).toBe(401)
    expect(refused.body).toEqual({ error: "unauthorized", message: "missing, malformed, revoked or unknown API key: send Authorization: Bearer eco_…" })
    const unknown = await w.req("DELETE", "/api-keys/nosuchkey", { key: a.key })
    expect(unknown.status).toBe(404)
    expect(unknown.body).toEqual({ error: "key_not_found", message: "key nosuchkey not found" })
  })

  it("holds at most 1,000 live keys: 409 too_many_keys, and revoking one makes room", async () => {
    // Proves the limit counts live keys only (a revoked key stays listed but frees its place).
    w = await world()
    const a = await w.signup("a@example.com")
    const insert = w.opened.engine.ledger.db.prepare(`INSERT INTO api_keys (id, account, user_id, name, secret_sha256, created_at) VALUES (?, ?, ?, 'bulk', zeroblob(32), 0)`)
    for (let i = 0; i < 998; i++) insert.run(`bulk${String(i).padStart(4, "0")}`, a.account, a.user)
    const last = await w.req("POST", "/api-keys", { key: a.key, body: { name: "1000th" } })
    expect(last.status).toBe(201)
    const over = await w.req("POST", "/api-keys", { key: a.key, body: { name: "1001st" } })
    expect([over.status, over.body]).toEqual([409, { error: "too_many_keys", message: "an account holds at most 1000 live keys; revoke one to make another" }])
    expect((await w.req("DELETE", `/api-keys/${last.body.id}`, { key: a.key })).status).toBe(200)
    expect((await w.req("POST", "/api-keys", { key: a.key, body: { name: "again" } })).status).toBe(201)
    expect((await w.req("POST", "/api-keys", { key: a.key, body: { name: "over again" } })).status).toBe(409)
  })

  it("keeps the newest 1,000 revoked keys as history: making and revoking cannot grow the list for ever", async () => {
    // Proves revoked keys are bounded without locking the account out: a revoke beyond 1,000
    // revoked keys deletes the oldest revoked one; live keys are never touched.
    w = await world()
    const a = await w.signup("a@example.com")
    const insert = w.opened.engine.ledger.db.prepare(
      `INSERT INTO api_keys (id, account, user_id, name, secret_sha256, created_at, revoked_at, revoked_seq) VALUES (?, ?, ?, 'old', zeroblob(32), 0, ?, ?)`
    )
    for (let i = 0; i < 1_000; i++) insert.run(`old${String(i).padStart(4, "0")}`, a.account, a.user, i + 1, i + 1)
    const made = await w.req("POST", "/api-keys", { key: a.key, body: { name: "rotated" } })
    expect(made.status).toBe(201)
    expect((await w.req("DELETE", `/api-keys/${made.body.id}`, { key: a.key })).status).toBe(200)
    const listed = (await w.req("GET", "/api-keys", { key: a.key })).body.data as Array<{ id: string; name: string; revoked_at: string | null }>
    expect(listed).toHaveLength(1_001)
    expect(listed.filter((k) => k.revoked_at === null).map((k) => k.name)).toEqual(["default"])
    expect(listed.some((k) => k.id === "old0000")).toBe(false)
    expect(listed.some((k) => k.id === "old0001")).toBe(true)
    expect(listed.some((k) => k.id === made.body.id)).toBe(true)
    // The pruned key answers 401 like any revoked one.
    expect((await w.req("GET", "/api-keys", { key: `eco_old0000_${"A".repeat(43)}` })).status).toBe(401)
  })

  it("answers and keeps the key just revoked when 1,000 revocations share its millisecond", async () => {
    // Proves the prune ranks revocations by their order, not by revoked_at then row (found by
    // review: on a tie the key just revoked, made before the others, was pruned, and the
    // revoke that had committed answered 500, a defect that stops the server).
    const defects: unknown[] = []
    w = await world({ onDefect: (e) => defects.push(e) })
    const a = await w.signup("a@example.com")
    const { secret: _, ...target } = (await w.req("POST", "/api-keys", { key: a.key, body: { name: "target" } })).body
    // 1,000 keys made after it and revoked at this same instant, through the API's own store.
    const store = new ApiStore(w.opened.engine.ledger.db)
    const now = w.clock.now()
    for (let i = 0; i < REVOKED_KEYS_KEPT; i++) {
      const id = `old${String(i).padStart(4, "0")}`
      store.insertKey({ id, account: a.account, user_id: a.user, name: "old", secret_sha256: Buffer.alloc(32), created_at: now })
      store.revokeKey(a.account, id, now)
    }
    const revoked = await w.req("DELETE", `/api-keys/${target.id}`, { key: a.key })
    expect([revoked.status, revoked.body]).toEqual([200, { ...target, revoked_at: START }])
    const listed = (await w.req("GET", "/api-keys", { key: a.key })).body.data as Array<{ id: string }>
    expect(listed).toHaveLength(1 + REVOKED_KEYS_KEPT)
    expect([listed.some((k) => k.id === target.id), listed.some((k) => k.id === "old0000"), listed.some((k) => k.id === "old0001")]).toEqual([true, false, true])
    // A second DELETE answers the same revoked key and changes nothing.
    const before = stateOf(w)
    expect(await w.req("DELETE", `/api-keys/${target.id}`, { key: a.key })).toMatchObject({ status: 200, body: revoked.body })
    expect(stateOf(w)).toBe(before)
    expect(defects).toEqual([])
  })

  it("answers 401 for a missing, malformed, mistyped, revoked or other-scheme key", async () => {
    // Proves every wrong credential gives the same 401 body, with a request id.
    w = await world()
    const a = await w.signup("a@example.com")
    const mistyped = a.key.slice(0, -1) + (a.key.endsWith("A") ? "B" : "A")
    const headers: Array<Record<string, string>> = [
      {},
      { authorization: "" },
      { authorization: `Basic ${a.key}` },
      { authorization: "Bearer" },
      { authorization: "Bearer eco_" },
      { authorization: `Bearer ${mistyped}` },
      { authorization: `Bearer ${a.key}x` },
      { authorization: `Bearer ${"x".repeat(600)}` },
      { authorization: `Bearer ${OPERATOR_KEY}` }
    ]
    for (const h of headers) {
      const r = await w.req("GET", "/gpu-instances", { headers: h })
      expect([h, r.status, r.body]).toEqual([h, 401, { error: "unauthorized", message: "missing, malformed, revoked or unknown API key: send Authorization: Bearer eco_…" }])
      expect(r.headers["x-ecolink-request-id"]).toMatch(/^req_/)
    }
    expect((await w.req("GET", "/gpu-instances", { headers: { authorization: `bearer   ${a.key}` } })).status).toBe(200)
  })
})

describe("teams", () => {
  it("the owner invites, the link is accepted by the invitee's key, members share the wallet", async () => {
    // Proves POST /team/invites (link), GET /team/invites, POST /invites/:token/accept, GET /team/members.
    w = await world()
    const owner = await w.signup("owner@example.com")
    const bob = await w.signup("bob@example.com", "0")
    const inv = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "Bob@example.com" } })
    expect(inv.status).toBe(201)
    const token = (inv.body.invite_url as string).split("/invites/")[1]!
    expect(inv.body).toEqual({
      id: inv.body.id,
      email: "bob@example.com",
      role: "member",
      invite_url: `https://console.ecohash.test/invites/${token}`,
      created_at: "2026-03-01T00:00:00.000Z",
      expires_at: "2026-03-08T00:00:00.000Z"
    })
    expect((await w.req("GET", "/team/invites", { key: owner.key })).body).toEqual({ data: [inv.body] })
    const wrongToken = await w.req("POST", `/invites/${inv.body.id}.nope/accept`, { key: bob.key })
    expect(wrongToken.status).toBe(404)
    expect(wrongToken.body).toEqual({ error: "invite_not_found", message: "no such invite: check the link" })
    const stranger = await w.signup("eve@example.com", "0")
    const mismatch = await w.req("POST", `/invites/${token}/accept`, { key: stranger.key })
    expect(mismatch.status).toBe(403)
    expect(mismatch.body).toEqual({ error: "invite_email_mismatch", message: "this invite was sent to another email address" })
    const accepted = await w.req("POST", `/invites/${token}/accept`, { key: bob.key })
    expect(accepted.status).toBe(201)
    expect(accepted.body).toMatchObject({ account: owner.account, role: "member", api_key: { user_id: bob.user, name: "default" } })
    const bobInTeam = accepted.body.api_key.secret as string
    expect((await w.req("GET", "/billing/balance", { key: bobInTeam })).body).toEqual({ balance: "100.00" })
    expect((await w.req("GET", "/account", { key: bobInTeam })).body.user.role).toBe("member")
    const twice = await w.req("POST", `/invites/${token}/accept`, { key: bob.key })
    expect(twice.status).toBe(409)
    expect(twice.body).toEqual({ error: "invite_already_accepted", message: "this invite was already accepted" })
    const members = await w.req("GET", "/team/members", { key: bobInTeam })
    expect(members.body).toEqual({
      data: [
        { user_id: owner.user, email: "owner@example.com", role: "owner", joined_at: "2026-03-01T00:00:00.000Z" },
        { user_id: bob.user, email: "bob@example.com", role: "member", joined_at: "2026-03-01T00:00:00.000Z" }
      ]
    })
    // A member may not invite, nor revoke the owner's key; they may revoke their own.
    const refused = await w.req("POST", "/team/invites", { key: bobInTeam, body: { email: "carol@example.com" } })
    expect(refused.status).toBe(403)
    expect(refused.body).toEqual({ error: "forbidden", message: "only the account's owner may do this" })
    const ownerKeyId = (await w.req("GET", "/account", { key: owner.key })).body.key_id
    const notTheirs = await w.req("DELETE", `/api-keys/${ownerKeyId}`, { key: bobInTeam })
    expect(notTheirs.status).toBe(403)
    expect(notTheirs.body).toEqual({ error: "forbidden", message: "a member may revoke only the keys they created" })
    const already = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "bob@example.com" } })
    expect(already.status).toBe(409)
    expect(already.body).toEqual({ error: "already_member", message: "bob@example.com is already a member of this account" })
  })

  it("holds at most 1,000 pending invites: 409 too_many_invites changes nothing, and an expired one frees its place", async () => {
    // Proves the bound on the list GET /team/invites answers whole (found by review): an owner
    // could make invites at the rate limit for days and grow that answer without end.
    w = await world()
    const owner = await w.signup("owner@example.com")
    const insert = w.opened.engine.ledger.db.prepare(
      `INSERT INTO api_invites (id, account, email, role, secret, invited_by, created_at, expires_at) VALUES (?, ?, ?, 'member', 's', ?, ?, ?)`
    )
    const now = w.clock.now()
    for (let i = 0; i < 999; i++) insert.run(`inv-bulk${String(i).padStart(4, "0")}`, owner.account, `p${i}@example.com`, owner.user, now, now + 24 * 3_600_000)
    const last = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "last@example.com" } })
    expect(last.status).toBe(201)
    const before = stateOf(w)
    const over = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "over@example.com" } })
    expect([over.status, over.body]).toEqual([409, { error: "too_many_invites", message: "an account holds at most 1000 pending invites; one frees its place when it is accepted or expires" }])
    expect(stateOf(w)).toBe(before)
    expect((await w.req("GET", "/team/invites", { key: owner.key })).body.data.length).toBe(1_000)
    // The bulk invites expire after a day: their places are free again.
    w.advance(24 * 3_600_000)
    expect((await w.req("POST", "/team/invites", { key: owner.key, body: { email: "over@example.com" } })).status).toBe(201)
  })

  it("the owner removes a member: their keys for the account fail at once, the rest of the team and their own account are untouched", async () => {
    // Proves DELETE /team/members/:user_id (found by review: removing a member was not built, so
    // someone who left kept the account's balance and resources for as long as their keys lived).
    w = await world()
    const owner = await w.signup("owner@example.com")
    const bob = await w.signup("bob@example.com", "0")
    const carol = await w.signup("carol@example.com", "0")
    const join = async (who: { key: string }, email: string): Promise<string> => {
      const inv = await w.req("POST", "/team/invites", { key: owner.key, body: { email } })
      const accepted = await w.req("POST", `/invites/${(inv.body.invite_url as string).split("/invites/")[1]}/accept`, { key: who.key })
      return accepted.body.api_key.secret as string
    }
    const bobInTeam = await join(bob, "bob@example.com")
    const carolInTeam = await join(carol, "carol@example.com")
    const bobSecond = (await w.req("POST", "/api-keys", { key: bobInTeam, body: { name: "ci" } })).body.secret as string
    // A member may not remove another, nor anyone the owner; nobody is removed twice.
    const byMember = await w.req("DELETE", `/team/members/${carol.user}`, { key: bobInTeam })
    expect([byMember.status, byMember.body]).toEqual([403, { error: "forbidden", message: "only the owner may remove another member" }])
    const theOwner = await w.req("DELETE", `/team/members/${owner.user}`, { key: owner.key })
    expect([theOwner.status, theOwner.body]).toEqual([409, { error: "invalid_state", message: "the account's owner cannot be removed" }])
    const before = stateOf(w)
    const stranger = await w.req("DELETE", `/team/members/${carol.user}`, { key: bob.key })
    expect([stranger.status, stranger.body]).toEqual([404, { error: "member_not_found", message: `no member ${carol.user} in this account` }])
    expect(stateOf(w)).toBe(before)

    const removed = await w.req("DELETE", `/team/members/${bob.user}`, { key: owner.key })
    expect([removed.status, removed.body]).toEqual([
      200,
      { user_id: bob.user, email: "bob@example.com", role: "member", joined_at: "2026-03-01T00:00:00.000Z", removed_at: "2026-03-01T00:00:00.000Z", keys_revoked: 2 }
    ])
    for (const key of [bobInTeam, bobSecond]) expect((await w.req("GET", "/billing/balance", { key })).status).toBe(401)
    expect((await w.req("GET", "/team/members", { key: owner.key })).body.data.map((m: { email: string }) => m.email)).toEqual(["owner@example.com", "carol@example.com"])
    expect((await w.req("GET", "/api-keys", { key: owner.key })).body.data.filter((k: { user_id: string; revoked_at: string | null }) => k.user_id === bob.user).map((k: { revoked_at: string | null }) => k.revoked_at)).toEqual([
      "2026-03-01T00:00:00.000Z",
      "2026-03-01T00:00:00.000Z"
    ])
    expect((await w.req("GET", "/billing/balance", { key: carolInTeam })).body).toEqual({ balance: "100.00" })
    expect((await w.req("GET", "/billing/balance", { key: bob.key })).body).toEqual({ balance: "0.00" })
    expect((await w.req("DELETE", `/team/members/${bob.user}`, { key: owner.key })).status).toBe(404)
    // A member may leave: carol removes herself.
    const left = await w.req("DELETE", `/team/members/${carol.user}`, { key: carolInTeam })
    expect([left.status, left.body.keys_revoked]).toEqual([200, 1])
    expect((await w.req("GET", "/billing/balance", { key: carolInTeam })).status).toBe(401)
  })

  it("a removed member cannot rejoin through an invite left pending from before: the removal withdraws it", async () => {
    // Proves the removal closes every way back in (found by review): the owner sent bob two
    // invites, he accepted one; after his removal the other, still pending, made him a member
    // again with a fresh key, without the owner doing anything.
    w = await world()
    const owner = await w.signup("owner@example.com")
    const bob = await w.signup("bob@example.com", "0")
    const tokenOf = async (): Promise<string> =>
      ((await w.req("POST", "/team/invites", { key: owner.key, body: { email: "bob@example.com" } })).body.invite_url as string).split("/invites/")[1]!
    const [first, second] = [await tokenOf(), await tokenOf()]
    expect((await w.req("POST", `/invites/${first}/accept`, { key: bob.key })).status).toBe(201)
    expect((await w.req("DELETE", `/team/members/${bob.user}`, { key: owner.key })).status).toBe(200)
    expect((await w.req("GET", "/team/invites", { key: owner.key })).body.data).toEqual([])
    const before = stateOf(w)
    const back = await w.req("POST", `/invites/${second}/accept`, { key: bob.key })
    expect([back.status, back.body.error]).toEqual([410, "invite_expired"])
    expect(stateOf(w)).toBe(before)
    expect((await w.req("GET", "/team/members", { key: owner.key })).body.data.map((m: { email: string }) => m.email)).toEqual(["owner@example.com"])
    // The owner can still invite him again, on purpose.
    expect((await w.req("POST", `/invites/${await tokenOf()}/accept`, { key: bob.key })).status).toBe(201)
  })

  it("an invite expires after 7 days: 410", async () => {
    // Proves the invite's lifetime on the engine clock.
    w = await world()
    const owner = await w.signup("owner@example.com")
    const bob = await w.signup("bob@example.com", "0")
    const inv = await w.req("POST", "/team/invites", { key: owner.key, body: { email: "bob@example.com" } })
    w.advance(7 * 24 * 3_600_000)
    const r = await w.req("POST", `/invites/${(inv.body.invite_url as string).split("/invites/")[1]}/accept`, { key: bob.key })
    expect(r.status).toBe(410)
    expect(r.body).toEqual({ error: "invite_expired", message: "this invite expired; ask the owner for a new one" })
    expect((await w.req("GET", "/team/invites", { key: owner.key })).body).toEqual({ data: [] })
  })
})

describe("operator", () => {
  it("refuses a credit that would lift a wallet above $1,000,000,000 with 400, changing nothing", async () => {
    w = await world()
    const a = await w.signup("a@example.com", "20.50")
    // A wallet holds at most $1,000,000,000: beyond it the 64-bit balance would overflow (it
    // used to answer 500 and stop the process).
    const huge = { amount: "999999999999.999999", description: "x" }
    const tooMuch = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: huge })
    expect([tooMuch.status, tooMuch.body]).toEqual([400, { error: "invalid_amount", message: "a wallet holds at most $1000000000.00; this would make it $1000000000020.499999", field: "amount" }])
    const upToCap = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "999999979.50", description: "x" } })
    expect([upToCap.status, upToCap.body.balance]).toEqual([201, "1000000000.00"])
    expect((await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "0.000001", description: "x" } })).status).toBe(400)
    expect((await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "-999999979.50", description: "x" } })).body.balance).toBe("20.50")
    expect(w.opened.engine.ledger.ledgerRows().filter((x) => x.account === a.account).map((x) => x.amount_micros)).toEqual([20_500_000n, 999_999_979_500_000n, -999_999_979_500_000n])
  })

  it("credits an adjustment only with the operator's key; customer keys get 401", async () => {
    // Proves POST /operator/accounts/:account/adjustments and GET /operator/accounts/:account.
    w = await world()
    const a = await w.signup("a@example.com", "0")
    const r = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "25.50", description: "Goodwill credit" } })
    expect(r.status).toBe(201)
    expect(r.body).toEqual({ account: a.account, amount: "25.50", balance: "25.50" })
    expect(w.opened.engine.ledger.ledgerRows().filter((x) => x.account === a.account).map((x) => [x.kind, x.amount_micros, x.description])).toEqual([["adjustment", 25_500_000n, "Goodwill credit"]])
    expect((await w.req("GET", `/operator/accounts/${a.account}`, { key: OPERATOR_KEY })).body).toEqual({ id: a.account, balance: "25.50" })
    const customer = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: a.key, body: { amount: "1000.00", description: "mine" } })
    expect(customer.status).toBe(401)
    expect(customer.body.error).toBe("unauthorized")
    expect((await w.req("GET", `/operator/accounts/${a.account}`, { key: a.key })).status).toBe(401)
    const unknown = await w.req("POST", "/operator/accounts/acct-nobody/adjustments", { key: OPERATOR_KEY, body: { amount: "1.00", description: "x" } })
    expect(unknown.status).toBe(404)
    expect(unknown.body).toEqual({ error: "account_not_found", message: "account acct-nobody not found" })
    // SPEC §1: an adjustment has either sign; a negative one never takes the balance below $0.
    const negative = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "-5.00", description: "Correction" } })
    expect(negative.status).toBe(201)
    expect(negative.body).toEqual({ account: a.account, amount: "-5.00", balance: "20.50" })
    const overdraw = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "-20.51", description: "x" } })
    expect(overdraw.status).toBe(402)
    expect(overdraw.body).toEqual({ error: "insufficient_balance", message: "balance $20.50 cannot cover $20.51" })
    const zero = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "0.00", description: "x" } })
    expect(zero.status).toBe(400)
    expect(zero.body).toEqual({ error: "invalid_amount", message: "amount must not be zero", field: "amount" })
    const malformed = await w.req("POST", `/operator/accounts/${a.account}/adjustments`, { key: OPERATOR_KEY, body: { amount: "1.2345678", description: "x" } })
    expect(malformed.status).toBe(400)
    expect(malformed.body).toEqual({ error: "invalid_amount", message: 'not a dollar amount with at most 6 decimals: "1.2345678"', field: "amount" })
    expect(ledgerOf(w, a.account)).toEqual([
      ["adjustment", "25.50", null],
      ["adjustment", "-5.00", null]
    ])
  })
})
