/**
 * The API's own tables (migration 4: users, memberships, API keys, invites, idempotency
 * records, settings). The engine's tables are read through the ledger store. It shares the
 * ledger's SQLite connection, so a write here joins the supervisor's unit of work when it runs
 * inside one. It never touches money: wallets, holds and ledger rows move only through the
 * supervisor.
 */
import type Database from "better-sqlite3"

export type Role = "owner" | "member"

export interface UserRow {
  readonly id: string
  readonly email: string
  readonly created_at: number
}

export interface KeyRow {
  readonly id: string
  readonly account: string
  readonly user_id: string
  readonly name: string
  readonly secret_sha256: Buffer
  readonly created_at: number
  readonly revoked_at: number | null
  /** The account's count of revocations when this key was revoked (1, 2, …); null while live. */
  readonly revoked_seq: number | null
}

export interface MemberRow {
  readonly user_id: string
  readonly email: string
  readonly role: Role
  readonly joined_at: number
}

export interface InviteRow {
  readonly id: string
  readonly account: string
  readonly email: string
  readonly role: "member"
  readonly secret: string
  readonly invited_by: string
  readonly created_at: number
  readonly expires_at: number
  readonly accepted_at: number | null
  readonly accepted_by: string | null
}

export interface IdempotencyRow {
  readonly account: string
  readonly key: string
  readonly request_sha256: string
  readonly status: number
  readonly content_type: string
  readonly body: string
  readonly created_at: number
  /** The answer's headers a replay sends again (JSON object), or null. */
  readonly headers: string | null
  /**
   * The payment the request began (a top-up), recorded with the payment row before the
   * provider is called; with status 0 the answer is not known yet (`idempotentAsync`).
   */
  readonly payment: string | null
}

/** Bound on the rows one purge deletes, so a purge never stalls a request. */
const IDEMPOTENCY_PURGE_BATCH_MAX = 1_000

/** Revoked API keys an account keeps listed as its history (`revokeKey`). */
export const REVOKED_KEYS_KEPT = 1_000

export class ApiStore {
  private readonly s: ReturnType<typeof prepare>

  constructor(readonly db: Database.Database) {
    this.s = prepare(db)
  }

  // ── users and memberships ─────────────────────────────────────────────────────────────
  insertUser(u: UserRow): void {
    this.s.insertUser.run(u.id, u.email, u.created_at)
  }

  userByEmail(email: string): UserRow | undefined {
    return this.s.userByEmail.get(email) as UserRow | undefined
  }

  user(id: string): UserRow | undefined {
    return this.s.user.get(id) as UserRow | undefined
  }

  addMember(account: string, user_id: string, role: Role, at: number): void {
    this.s.insertMember.run(account, user_id, role, at)
  }

  roleOf(account: string, user_id: string): Role | undefined {
    return (this.s.role.get(account, user_id) as { role: Role } | undefined)?.role
  }

  members(account: string): ReadonlyArray<MemberRow> {
    return this.s.members.all(account) as MemberRow[]
  }

  member(account: string, user_id: string): MemberRow | undefined {
    return this.s.member.get(account, user_id) as MemberRow | undefined
  }

  /**
   * Takes `user_id` out of `account` and revokes every live key of theirs there, in one go (the
   * caller's unit of work); answers how many keys were revoked. Invites to their email still
   * pending there expire now: one sent twice and accepted once let them back in unasked. Their
   * keys for other accounts, and the account's resources (the account's, not the user's), are
   * untouched.
   */
  removeMember(account: string, user_id: string, at: number): number {
    this.s.deleteMember.run(account, user_id)
    this.s.withdrawInvites.run(at, account, at, user_id)
    let revoked = 0
    for (const key of this.keysOf(account)) {
      if (key.user_id !== user_id || key.revoked_at !== null) continue
      if (this.revokeKey(account, key.id, at) !== undefined) revoked++
    }
    return revoked
  }

  // ── API keys ──────────────────────────────────────────────────────────────────────────
  insertKey(k: Omit<KeyRow, "revoked_at" | "revoked_seq">): void {
    this.s.insertKey.run(k.id, k.account, k.user_id, k.name, k.secret_sha256, k.created_at)
  }

  key(id: string): KeyRow | undefined {
    return this.s.key.get(id) as KeyRow | undefined
  }

  keysOf(account: string): ReadonlyArray<KeyRow> {
    return this.s.keysOf.all(account) as KeyRow[]
  }

  /**
   * Revokes a live key of `account` and answers its row as revoked; undefined if there is
   * none (unknown, revoked, another account's). Revoked keys stay listed as the account's
   * history, the newest `REVOKED_KEYS_KEPT` revocations: older ones are deleted here, so
   * making and revoking keys cannot grow the list and the table without end (and nothing
   * locks the account out). "Newest" is the order of revocation (`revoked_seq`), never a tie
   * on `revoked_at`, so the key just revoked is always kept.
   */
  revokeKey(account: string, id: string, at: number): KeyRow | undefined {
    const revoked = this.s.revokeKey.get(at, account, id, account) as KeyRow | undefined
    if (revoked !== undefined) this.s.pruneRevoked.run(account, revoked.revoked_seq! - REVOKED_KEYS_KEPT)
    return revoked
  }

  // ── invites ───────────────────────────────────────────────────────────────────────────
  insertInvite(i: Omit<InviteRow, "accepted_at" | "accepted_by">): void {
    this.s.insertInvite.run(i.id, i.account, i.email, i.role, i.secret, i.invited_by, i.created_at, i.expires_at)
  }

  invite(id: string): InviteRow | undefined {
    return this.s.invite.get(id) as InviteRow | undefined
  }

  pendingInvites(account: string, now: number): ReadonlyArray<InviteRow> {
    return this.s.pendingInvites.all(account, now) as InviteRow[]
  }

  /** Marks an invite accepted, once (compare-and-swap on `accepted_at`). */
  acceptInvite(id: string, user_id: string, at: number): boolean {
    return this.s.acceptInvite.run(at, user_id, id).changes === 1
  }

  // ── idempotency records ───────────────────────────────────────────────────────────────
  idempotency(account: string, key: string): IdempotencyRow | undefined {
    return this.s.idempotency.get(account, key) as IdempotencyRow | undefined
  }

  saveIdempotency(r: IdempotencyRow): void {
    this.s.insertIdempotency.run(r.account, r.key, r.request_sha256, r.status, r.content_type, r.body, r.created_at, r.headers, r.payment)
  }

  /** Forgets records created before `before` (at most a bounded batch per call). */
  purgeIdempotency(before: number): number {
    return this.s.purgeIdempotency.run(before, IDEMPOTENCY_PURGE_BATCH_MAX).changes
  }

  // ── settings ──────────────────────────────────────────────────────────────────────────
  setting(name: string): string | undefined {
    return (this.s.setting.get(name) as { value: string } | undefined)?.value
  }

  setSetting(name: string, value: string): void {
    this.s.setSetting.run(name, value)
  }
}

const prepare = (db: Database.Database) => ({
  insertUser: db.prepare(`INSERT INTO api_users (id, email, created_at) VALUES (?, ?, ?)`),
  userByEmail: db.prepare(`SELECT * FROM api_users WHERE email = ?`),
  user: db.prepare(`SELECT * FROM api_users WHERE id = ?`),
  insertMember: db.prepare(`INSERT INTO api_memberships (account, user_id, role, joined_at) VALUES (?, ?, ?, ?)`),
  role: db.prepare(`SELECT role FROM api_memberships WHERE account = ? AND user_id = ?`),
  member: db.prepare(`SELECT m.user_id, u.email, m.role, m.joined_at FROM api_memberships m JOIN api_users u ON u.id = m.user_id WHERE m.account = ? AND m.user_id = ?`),
  deleteMember: db.prepare(`DELETE FROM api_memberships WHERE account = ? AND user_id = ?`),
  members: db.prepare(
    `SELECT m.user_id, u.email, m.role, m.joined_at FROM api_memberships m JOIN api_users u ON u.id = m.user_id WHERE m.account = ? ORDER BY m.rowid`
  ),
  insertKey: db.prepare(`INSERT INTO api_keys (id, account, user_id, name, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)`),
  key: db.prepare(`SELECT * FROM api_keys WHERE id = ?`),
  keysOf: db.prepare(`SELECT * FROM api_keys WHERE account = ? ORDER BY rowid`),
  revokeKey: db.prepare(
    `UPDATE api_keys SET revoked_at = ?, revoked_seq = (SELECT coalesce(max(revoked_seq), 0) + 1 FROM api_keys WHERE account = ?)
     WHERE id = ? AND account = ? AND revoked_at IS NULL RETURNING *`
  ),
  pruneRevoked: db.prepare(`DELETE FROM api_keys WHERE account = ? AND revoked_seq <= ?`),
  insertInvite: db.prepare(
    `INSERT INTO api_invites (id, account, email, role, secret, invited_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`
  ),
  invite: db.prepare(`SELECT * FROM api_invites WHERE id = ?`),
  pendingInvites: db.prepare(`SELECT * FROM api_invites WHERE account = ? AND accepted_at IS NULL AND expires_at > ? ORDER BY rowid`),
  acceptInvite: db.prepare(`UPDATE api_invites SET accepted_at = ?, accepted_by = ? WHERE id = ? AND accepted_at IS NULL`),
  withdrawInvites: db.prepare(
    `UPDATE api_invites SET expires_at = ? WHERE account = ? AND accepted_at IS NULL AND expires_at > ? AND email = (SELECT email FROM api_users WHERE id = ?)`
  ),
  idempotency: db.prepare(`SELECT * FROM api_idempotency WHERE account = ? AND key = ?`),
  insertIdempotency: db.prepare(
    `INSERT OR REPLACE INTO api_idempotency (account, key, request_sha256, status, content_type, body, created_at, headers, payment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
  ),
  purgeIdempotency: db.prepare(
    `DELETE FROM api_idempotency WHERE rowid IN (SELECT rowid FROM api_idempotency WHERE created_at < ? ORDER BY created_at LIMIT ?)`
  ),
  setting: db.prepare(`SELECT value FROM api_settings WHERE name = ?`),
  setSetting: db.prepare(`INSERT INTO api_settings (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value`)
})
