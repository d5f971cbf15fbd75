/**
 * Accounts, teams and API keys (SPEC §8). Sign-up makes an account (an engine wallet at $0),
 * its owner and the owner's first key. The owner invites members: an invite answers a link
 * (`<public url>/invites/<token>`) that works whether or not any email arrived; the invited
 * user (identified by a key of theirs, from any account) accepts it with `POST
 * /invites/<token>/accept` and gets a key for the new account. Members share the balance, the
 * resources and the keys (every member lists every key; a member revokes only the keys they
 * made, the owner any). Secrets are answered once and stored as SHA-256.
 */
import type { FastifyInstance } from "fastify"
import { assert, Conflict } from "../../errors.js"
import { formatDollars } from "../../money.js"
import { call, idempotent, idParams, keyOf, spec, type ApiContext, type KeyAuth } from "../http.js"
import { HttpError } from "../errors.js"
import { formatApiKey, keyPrefix, KEY_ID_CHARS, base32, newId, newSecret, sameDigest, sha256 } from "../secrets.js"
import type { KeyRow } from "../store.js"
import { iso, obj, moneySchema } from "../views.js"

/** An invite link stays valid for 7 days. */
export const INVITE_TTL_MS = 7 * 24 * 3_600_000
export const EMAIL_LENGTH_MAX = 254
/**
 * Live keys one account may hold (a revoked key frees its place). Revoked keys stay, as the
 * account's history; how fast they can pile up is bounded by the rate limit.
 */
export const KEYS_PER_ACCOUNT_MAX = 1_000
/**
 * Pending invites one account may hold (an accepted or expired one frees its place).
 * `GET /team/invites` answers them whole; without a bound an owner making invites at the
 * rate limit (600 a minute, 7 days each) grew that answer to millions of rows, past what one
 * answer can hold in memory or in V8's longest string: a 500, and a process that stops.
 */
export const PENDING_INVITES_MAX = 1_000
/**
 * Characters an address must not hide: controls, and the invisible ones (soft hyphen,
 * zero-width spaces and joiners, bidirectional marks and overrides, word joiners, BOM), which
 * made `owner\u200b@example.com` look like the owner in a team's member list, or a reversed
 * text read as another address (security review).
 */
const EMAIL_FORBIDDEN = "\\s@\\u0000-\\u001f\\u007f\\u00ad\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u2069\\ufeff"
/** One @: a local part of 1–64 and a domain of 1–189 characters, none of them `EMAIL_FORBIDDEN`. */
const EMAIL_RE = `^[^${EMAIL_FORBIDDEN}]{1,64}@[^${EMAIL_FORBIDDEN}]{1,189}$`
/**
 * Every character shown as nothing, by Unicode's own classes rather than a list: controls,
 * format characters, default-ignorable code points, and lone surrogates (stored as U+FFFD).
 * The list above missed the Arabic letter mark (a bidirectional mark), tag characters,
 * variation selectors, the Hangul filler and more, and each of them signed up (second review).
 */
const INVISIBLE_RE = /[\p{Cc}\p{Cf}\p{Cs}\p{Default_Ignorable_Code_Point}]/u

/**
 * A key's name as the owner reads it in the list of keys, to choose which to revoke: no
 * character shown as nothing or that reorders the text around it (`INVISIBLE_RE`). A
 * member could name a key `\u202Eyek-tseT` to show as another (second review).
 */
const checkKeyName = (name: string, field: string): string => {
  if (INVISIBLE_RE.test(name)) throw new HttpError(400, "invalid_request", `${field} must not contain invisible or direction-changing characters`, field)
  return name
}

// The address's form is checked by `normalEmail`, which says so in words; a schema `pattern`
// answered the whole regular expression to the user.
const email = { type: "string", minLength: 3, maxLength: EMAIL_LENGTH_MAX, description: "an email address: one @, no spaces, control or invisible characters" } as const
const keyName = { type: "string", minLength: 1, maxLength: 100 } as const
const nullableInstant = { type: ["string", "null"], format: "date-time" } as const

const KeySchema = obj({
  id: { type: "string" },
  name: { type: "string" },
  prefix: { type: "string", description: "eco_<key id>_…: enough to recognise the key, never the secret" },
  user_id: { type: "string" },
  created_at: { type: "string", format: "date-time" },
  revoked_at: nullableInstant
})
const NewKeySchema = obj({
  ...KeySchema.properties,
  secret: { type: ["string", "null"], description: "the whole key, shown once (null in a replay of an idempotent request)" }
})
const MemberSchema = obj({ user_id: { type: "string" }, email: { type: "string" }, role: { type: "string", enum: ["owner", "member"] }, joined_at: { type: "string", format: "date-time" } })
const RemovedMemberSchema = obj({
  user_id: { type: "string" },
  email: { type: "string" },
  role: { type: "string", enum: ["member"] },
  joined_at: { type: "string", format: "date-time" },
  removed_at: { type: "string", format: "date-time" },
  keys_revoked: { type: "integer", description: "the member's keys for this account, revoked with the removal" }
})
const InviteSchema = obj({
  id: { type: "string" },
  email: { type: "string" },
  role: { type: "string", enum: ["member"] },
  invite_url: { type: "string", description: "send it any way you like; it works as the emailed one does" },
  created_at: { type: "string", format: "date-time" },
  expires_at: { type: "string", format: "date-time" }
})

const keyJson = (k: Pick<KeyRow, "id" | "name" | "user_id" | "created_at" | "revoked_at">) => ({
  id: k.id,
  name: k.name,
  prefix: keyPrefix(k.id),
  user_id: k.user_id,
  created_at: iso(k.created_at),
  revoked_at: k.revoked_at === null ? null : iso(k.revoked_at)
})

/**
 * Lower case and composed (NFC), then checked again: lowering can lengthen a string ("İ"
 * becomes two characters). Composed, an address typed with a combining accent (`e` + U+0301)
 * is the address it shows (`é`): it was another account that passed for the first.
 */
const normalEmail = (e: string): string => {
  const address = e.trim().toLowerCase().normalize("NFC")
  if (address.length > EMAIL_LENGTH_MAX || !new RegExp(EMAIL_RE).test(address) || INVISIBLE_RE.test(address)) throw new HttpError(400, "invalid_request", "email is not an address we can store", "email")
  return address
}

export const accountRoutes = (app: FastifyInstance, ctx: ApiContext): void => {
  const tags = ["Accounts and teams"]
  const now = () => ctx.engine.clock.now()

  /** A new key for `user_id` in `account`: the row holds the secret's SHA-256 only. */
  const createKey = (account: string, user_id: string, name: string) => {
    // Live keys count; a revoked one stays listed (its history) but frees its place.
    if (ctx.api.keysOf(account).filter((k) => k.revoked_at === null).length >= KEYS_PER_ACCOUNT_MAX) {
      throw new HttpError(409, "too_many_keys", `an account holds at most ${KEYS_PER_ACCOUNT_MAX} live keys; revoke one to make another`)
    }
    const id = base32(ctx.secrets, KEY_ID_CHARS)
    const secret = newSecret(ctx.secrets)
    const row = { id, account, user_id, name, secret_sha256: sha256(secret), created_at: now() }
    ctx.api.insertKey(row)
    return { ...keyJson({ ...row, revoked_at: null }), secret: formatApiKey(id, secret) }
  }

  app.post(
    "/accounts",
    spec({
      tags,
      summary: "Sign up: a new account, its owner and the owner's first API key",
      description: "The account starts at $0. One sign-up per email (409 email_taken). Not idempotent by key: a repeat is 409.",
      auth: "public",
      body: { type: "object", additionalProperties: false, required: ["email"], properties: { email, key_name: keyName } },
      response: {
        201: obj({
          account: obj({ id: { type: "string" }, balance: moneySchema }),
          user: obj({ id: { type: "string" }, email: { type: "string" }, role: { type: "string", enum: ["owner"] } }),
          api_key: NewKeySchema
        })
      }
    }),
    async (request, reply) => {
      const body = request.body as { email: string; key_name?: string }
      const address = normalEmail(body.email)
      const keyName = checkKeyName(body.key_name ?? "default", "key_name")
      const answer = ctx.engine.sup.unitOfWork(() => {
        if (ctx.api.userByEmail(address) !== undefined) throw new HttpError(409, "email_taken", "an account was already signed up with this email")
        const account = newId(ctx.secrets, "acct-")
        const user = newId(ctx.secrets, "usr-")
        call(ctx, ctx.engine.sup.openAccount(account))
        ctx.api.insertUser({ id: user, email: address, created_at: now() })
        ctx.api.addMember(account, user, "owner", now())
        const api_key = createKey(account, user, keyName)
        return {
          account: { id: account, balance: formatDollars(0n) },
          user: { id: user, email: address, role: "owner" as const },
          api_key
        }
      })
      return reply.code(201).send(answer)
    }
  )

  app.get(
    "/account",
    spec({
      tags,
      summary: "Who am I: the key's account, user and role",
      auth: "account",
      response: { 200: obj({ id: { type: "string" }, balance: moneySchema, user: obj({ id: { type: "string" }, email: { type: "string" }, role: { type: "string", enum: ["owner", "member"] } }), key_id: { type: "string" } }) }
    }),
    async (request) => {
      const auth = keyOf(request)
      const user = ctx.api.user(auth.user_id)!
      return {
        id: auth.account,
        balance: formatDollars(call(ctx, ctx.engine.sup.balance(auth.account))),
        user: { id: user.id, email: user.email, role: auth.role },
        key_id: auth.key_id
      }
    }
  )

  // `lockout`: the owner reads here whom to remove; a member at the account's limit must not keep them from it.
  app.get("/team/members", spec({ tags, summary: "The account's members", auth: "account", response: { 200: obj({ data: { type: "array", items: MemberSchema } }) }, lockout: true }), async (request) => ({
    data: ctx.api.members(keyOf(request).account).map((m) => ({ user_id: m.user_id, email: m.email, role: m.role, joined_at: iso(m.joined_at) }))
  }))

  app.delete(
    "/team/members/:user_id",
    spec({
      tags,
      summary: "Remove a member (the owner; a member may remove themselves): their keys for this account are revoked at once",
      description: "Invites to their email still pending here expire with it. The owner cannot be removed (409 invalid_state). Not a member of this account: 404 member_not_found.",
      auth: "account",
      params: idParams("user_id"),
      response: { 200: RemovedMemberSchema },
      lockout: true
    }),
    async (request) => {
      const auth = keyOf(request)
      const user_id = (request.params as { user_id: string }).user_id
      // One unit of work: the membership and every key of the member go together.
      const answer = ctx.engine.sup.unitOfWork(() => {
        const member = ctx.api.member(auth.account, user_id)
        if (member === undefined) throw new HttpError(404, "member_not_found", `no member ${user_id} in this account`)
        if (user_id !== auth.user_id && auth.role !== "owner") throw new HttpError(403, "forbidden", "only the owner may remove another member")
        if (member.role === "owner") throw new Conflict({ code: "invalid_state", id: user_id, status: "owner", message: "the account's owner cannot be removed" })
        const keys_revoked = ctx.api.removeMember(auth.account, user_id, now())
        return { user_id, email: member.email, role: member.role, joined_at: iso(member.joined_at), removed_at: iso(now()), keys_revoked }
      })
      // Keys are authenticated from a cache of their rows and roles: a removed member's keys
      // must fail from the next request on.
      ctx.auth.forget()
      return answer
    }
  )

  const inviteJson = (i: { id: string; email: string; role: "member"; secret: string; created_at: number; expires_at: number }) => ({
    id: i.id,
    email: i.email,
    role: i.role,
    invite_url: `${ctx.public_url()}/invites/${i.id}.${i.secret}`,
    created_at: iso(i.created_at),
    expires_at: iso(i.expires_at)
  })

  app.post(
    "/team/invites",
    spec({
      tags,
      summary: "Invite a member (owner only): answers the invite link",
      auth: "account",
      role: "owner",
      body: { type: "object", additionalProperties: false, required: ["email"], properties: { email } },
      response: { 201: InviteSchema },
      idempotent: true
    }),
    async (request, reply) => {
      const auth = keyOf(request)
      const address = normalEmail((request.body as { email: string }).email)
      return idempotent(ctx, request, reply, auth.account, () => {
        const invited = ctx.api.userByEmail(address)
        if (invited !== undefined && ctx.api.roleOf(auth.account, invited.id) !== undefined) {
          throw new HttpError(409, "already_member", `${address} is already a member of this account`)
        }
        if (ctx.api.pendingInvites(auth.account, now()).length >= PENDING_INVITES_MAX) {
          throw new HttpError(409, "too_many_invites", `an account holds at most ${PENDING_INVITES_MAX} pending invites; one frees its place when it is accepted or expires`)
        }
        const invite = { id: newId(ctx.secrets, "inv-"), account: auth.account, email: address, role: "member" as const, secret: newSecret(ctx.secrets), invited_by: auth.user_id, created_at: now(), expires_at: now() + INVITE_TTL_MS }
        ctx.api.insertInvite(invite)
        return { status: 201, body: inviteJson(invite) }
      })
    }
  )

  app.get("/team/invites", spec({ tags, summary: "Pending invites and their links (owner only)", auth: "account", role: "owner", response: { 200: obj({ data: { type: "array", items: InviteSchema } }) } }), async (request) => ({
    data: ctx.api.pendingInvites(keyOf(request).account, now()).map(inviteJson)
  }))

  app.post(
    "/invites/:token/accept",
    spec({
      tags,
      summary: "Accept an invite with a key of yours (from any account): you join as a member and get a key for it",
      description: "The invite's email must be yours (403 invite_email_mismatch). Unknown or mistyped: 404 invite_not_found; accepted: 409; expired: 410.",
      auth: "account",
      params: { type: "object", required: ["token"], additionalProperties: false, properties: { token: { type: "string", minLength: 1, maxLength: 100 } } },
      response: { 201: obj({ account: { type: "string" }, role: { type: "string", enum: ["member"] }, api_key: NewKeySchema }) }
    }),
    async (request, reply) => {
      const auth = keyOf(request)
      const token = (request.params as { token: string }).token
      const answer = ctx.engine.sup.unitOfWork(() => {
        const dot = token.indexOf(".")
        const invite = dot > 0 ? ctx.api.invite(token.slice(0, dot)) : undefined
        if (invite === undefined || !sameDigest(sha256(token.slice(dot + 1)), sha256(invite.secret))) {
          throw new HttpError(404, "invite_not_found", "no such invite: check the link")
        }
        if (invite.accepted_at !== null) throw new HttpError(409, "invite_already_accepted", "this invite was already accepted")
        if (invite.expires_at <= now()) throw new HttpError(410, "invite_expired", "this invite expired; ask the owner for a new one")
        const user = ctx.api.user(auth.user_id)!
        if (user.email !== invite.email) throw new HttpError(403, "invite_email_mismatch", "this invite was sent to another email address")
        if (ctx.api.roleOf(invite.account, user.id) !== undefined) throw new HttpError(409, "already_member", "you are already a member of this account")
        const swapped = ctx.api.acceptInvite(invite.id, user.id, now())
        if (!swapped) throw new Conflict({ code: "invalid_state", id: invite.id, status: "accepted", message: "this invite was already accepted" })
        ctx.api.addMember(invite.account, user.id, "member", now())
        ctx.auth.forget()
        return { account: invite.account, role: "member" as const, api_key: createKey(invite.account, user.id, "default") }
      })
      return reply.code(201).send(answer)
    }
  )

  app.post(
    "/api-keys",
    spec({
      tags: ["API keys"],
      summary: "Create an API key: the eco_… secret is in this answer only",
      auth: "account",
      body: { type: "object", additionalProperties: false, required: ["name"], properties: { name: keyName } },
      response: { 201: NewKeySchema },
      idempotent: true
    }),
    async (request, reply) => {
      const auth = keyOf(request)
      const name = checkKeyName((request.body as { name: string }).name, "name")
      return idempotent(ctx, request, reply, auth.account, () => ({ status: 201, body: createKey(auth.account, auth.user_id, name), secret_path: ["secret"] }))
    }
  )

  // `lockout`: the owner reads here which keys to revoke.
  app.get("/api-keys", spec({ tags: ["API keys"], summary: "The account's keys (never their secrets)", auth: "account", response: { 200: obj({ data: { type: "array", items: KeySchema } }) }, lockout: true }), async (request) => ({
    data: ctx.api.keysOf(keyOf(request).account).map(keyJson)
  }))

  app.delete(
    "/api-keys/:id",
    spec({ tags: ["API keys"], summary: "Revoke a key (yours; the owner may revoke any)", auth: "account", params: idParams(), response: { 200: KeySchema }, lockout: true }),
    async (request) => {
      const auth: KeyAuth = keyOf(request)
      const id = (request.params as { id: string }).id
      // One unit of work reads the key and revokes it, and the answer is the row the revoke
      // wrote: the prune after it may delete old revoked keys, never the one answered.
      const answer = ctx.engine.sup.unitOfWork(() => {
        const row = ctx.api.key(id)
        if (row === undefined || row.account !== auth.account) throw new HttpError(404, "key_not_found", `key ${id} not found`)
        if (row.user_id !== auth.user_id && auth.role !== "owner") throw new HttpError(403, "forbidden", "a member may revoke only the keys they created")
        if (row.revoked_at !== null) return row
        const revoked = ctx.api.revokeKey(auth.account, id, now())
        assert(revoked !== undefined, () => `live key ${id} read in this unit of work was not revoked`)
        return revoked
      })
      ctx.auth.forget(id)
      return keyJson(answer)
    }
  )
}
