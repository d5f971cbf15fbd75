/**
 * Who is calling. `Authorization: Bearer eco_<key id>_<secret>` names an API key: the key id
 * finds its row, the secret's SHA-256 is compared with the stored one in constant time
 * (`timingSafeEqual`), the key must not be revoked, and its user must still be a member of
 * the key's account (the role comes from the membership). The operator's key is configured,
 * held only as its SHA-256, and compared the same way. Anything else is `null`: the route
 * then answers 401 `{"error":"unauthorized"}`, whatever exactly was wrong.
 */
import type { Caller } from "../resources.js"
import { parseApiKey, sameDigest, sha256 } from "./secrets.js"
import type { ApiStore, KeyRow, Role } from "./store.js"

export type Auth =
  | { readonly kind: "key"; readonly key_id: string; readonly account: string; readonly user_id: string; readonly role: Role }
  | { readonly kind: "operator" }

/** The longest Authorization header looked at; longer ones are refused unread. */
export const AUTHORIZATION_LENGTH_MAX = 512
/** Keys remembered between requests (their rows and roles); the oldest is forgotten first. */
export const AUTH_CACHE_ENTRIES_MAX = 10_000

export const callerOf = (auth: Extract<Auth, { kind: "key" }>): Caller => ({ account: auth.account })

interface Cached {
  readonly row: KeyRow
  readonly role: Role | undefined
}

export class Authenticator {
  private readonly operatorDigest: Buffer | null
  /** Key rows and roles by key id. Invalidated on revoke and membership changes (this process is the only writer). */
  private readonly cache = new Map<string, Cached>()

  constructor(
    private readonly store: ApiStore,
    operatorKey: string | null
  ) {
    this.operatorDigest = operatorKey === null ? null : sha256(operatorKey)
  }

  identify(header: string | undefined): Auth | null {
    if (header === undefined || header.length > AUTHORIZATION_LENGTH_MAX) return null
    const m = /^Bearer +(\S+) *$/i.exec(header)
    if (m === null) return null
    const presented = m[1]!
    // An account key first: one digest per request on the common path. A presented string
    // that is not a valid key of ours is then compared with the operator's key.
    const parsed = parseApiKey(presented)
    if (parsed !== null) {
      const key = this.keyAuth(parsed)
      if (key !== null) return key
    }
    if (this.operatorDigest !== null && sameDigest(sha256(presented), this.operatorDigest)) return { kind: "operator" }
    return null
  }

  private keyAuth(parsed: { readonly key_id: string; readonly secret: string }): Auth | null {
    const cached = this.lookup(parsed.key_id)
    if (cached === undefined) return null
    if (!sameDigest(sha256(parsed.secret), cached.row.secret_sha256)) return null
    if (cached.row.revoked_at !== null || cached.role === undefined) return null
    return { kind: "key", key_id: cached.row.id, account: cached.row.account, user_id: cached.row.user_id, role: cached.role }
  }

  /** Drops what is remembered of a key (revoked) or of every key (a membership changed). */
  forget(key_id?: string): void {
    if (key_id === undefined) this.cache.clear()
    else this.cache.delete(key_id)
  }

  private lookup(key_id: string): Cached | undefined {
    const hit = this.cache.get(key_id)
    if (hit !== undefined) return hit
    const row = this.store.key(key_id)
    if (row === undefined) return undefined
    const entry: Cached = { row, role: this.store.roleOf(row.account, row.user_id) }
    if (this.cache.size >= AUTH_CACHE_ENTRIES_MAX) this.cache.delete(this.cache.keys().next().value!)
    this.cache.set(key_id, entry)
    return entry
  }
}
