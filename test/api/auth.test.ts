/**
 * Who is calling (src/api/auth.ts), without HTTP: an account key, the operator's key, and
 * every way a presented string fails. The account key is tried first, so the operator's key
 * is hashed only for strings that are not a valid account key of ours.
 */
import { afterEach, describe, expect, it } from "vitest"
import { Authenticator } from "../../src/api/auth.js"
import { formatApiKey, sha256 } from "../../src/api/secrets.js"
import { ApiStore } from "../../src/api/store.js"
import { LedgerStore } from "../../src/ledger/store.js"

const stores: LedgerStore[] = []
afterEach(() => {
  for (const s of stores.splice(0)) s.close()
})

const KEY_ID = "abcdefghijkl"
const SECRET = "S".repeat(43)
const KEY = formatApiKey(KEY_ID, SECRET)

const setup = (operatorKey: string | null) => {
  const ledger = LedgerStore.open(":memory:")
  stores.push(ledger)
  ledger.openAccount("acme", 0)
  const api = new ApiStore(ledger.db)
  api.insertUser({ id: "u-1", email: "a@example.com", created_at: 0 })
  api.addMember("acme", "u-1", "owner", 0)
  api.insertKey({ id: KEY_ID, account: "acme", user_id: "u-1", name: "ci", secret_sha256: sha256(SECRET), created_at: 0 })
  return { api, auth: new Authenticator(api, operatorKey) }
}

describe("Authenticator.identify", () => {
  it("names the account key's account and role, and the operator's key", () => {
    // Proves both kinds of caller are recognised from `Authorization: Bearer …`.
    const { auth } = setup("ecoop_operator-secret")
    expect(auth.identify(`Bearer ${KEY}`)).toEqual({ kind: "key", key_id: KEY_ID, account: "acme", user_id: "u-1", role: "owner" })
    expect(auth.identify("Bearer ecoop_operator-secret")).toEqual({ kind: "operator" })
  })

  it("still recognises an operator's key shaped like an account key whose id is not ours", () => {
    // Proves the account-key-first order loses no operator: an unknown key id falls through.
    const operatorKey = formatApiKey("zzzzzzzzzzzz", "O".repeat(43))
    const { auth } = setup(operatorKey)
    expect(auth.identify(`Bearer ${operatorKey}`)).toEqual({ kind: "operator" })
    expect(auth.identify(`Bearer ${KEY}`)).toMatchObject({ kind: "key", account: "acme" })
  })

  it("refuses a wrong secret, a revoked key, malformed headers, and an operator key when none is configured", () => {
    // Proves every failure is the same null (the route answers 401), whatever was wrong.
    const { api, auth } = setup(null)
    expect(auth.identify(`Bearer ${formatApiKey(KEY_ID, "X".repeat(43))}`)).toBeNull()
    expect(auth.identify(undefined)).toBeNull()
    expect(auth.identify("Basic abc")).toBeNull()
    expect(auth.identify(`Bearer ${"a".repeat(600)}`)).toBeNull()
    expect(auth.identify("Bearer ecoop_operator-secret")).toBeNull()
    expect(api.revokeKey("acme", KEY_ID, 1)).toMatchObject({ id: KEY_ID, revoked_at: 1, revoked_seq: 1 })
    auth.forget(KEY_ID)
    expect(auth.identify(`Bearer ${KEY}`)).toBeNull()
  })
})
