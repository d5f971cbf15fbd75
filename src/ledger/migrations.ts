/**
 * Versioned schema migrations. Each runs once, in order, inside a transaction, and is
 * recorded in `schema_migrations`. Never edit a shipped migration: add the next one.
 *
 * Money columns are INTEGER micro-dollars (SQLite integers are 64-bit) and are read back
 * as `bigint` (`safeIntegers`). Instants are INTEGER milliseconds since the Unix epoch on
 * the engine's clock.
 */
import type Database from "better-sqlite3"

export interface Migration {
  readonly version: number
  readonly name: string
  readonly sql: string
}

export const LEDGER_ROW_KINDS = ["topup", "gpu_usage", "refund", "api_usage", "storage_billing", "adjustment"] as const
export type LedgerRowKind = (typeof LEDGER_ROW_KINDS)[number]

const kinds = LEDGER_ROW_KINDS.map((k) => `'${k}'`).join(", ")

export const MIGRATIONS: ReadonlyArray<Migration> = [
  {
    version: 1,
    name: "wallets, holds, ledger, notifications, resources, transitions, journal",
    sql: `
      CREATE TABLE accounts (
        id              TEXT PRIMARY KEY,
        balance_micros  INTEGER NOT NULL,
        created_at      INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE ledger (
        id                    INTEGER PRIMARY KEY,
        account               TEXT NOT NULL REFERENCES accounts(id),
        at                    INTEGER NOT NULL,
        kind                  TEXT NOT NULL CHECK (kind IN (${kinds})),
        amount_micros         INTEGER NOT NULL CHECK (amount_micros <> 0),
        balance_after_micros  INTEGER NOT NULL,
        resource              TEXT,
        hold_id               TEXT,
        description           TEXT NOT NULL
      ) STRICT;
      CREATE INDEX ledger_by_account ON ledger(account, id);
      CREATE INDEX ledger_by_resource ON ledger(resource, id);

      CREATE TABLE holds (
        id               TEXT PRIMARY KEY,
        account          TEXT NOT NULL REFERENCES accounts(id),
        resource         TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('open', 'settled')),
        held_micros      INTEGER NOT NULL CHECK (held_micros >= 0),
        consumed_micros  INTEGER,
        refunded_micros  INTEGER,
        overage_micros   INTEGER,
        placed_at        INTEGER NOT NULL,
        settled_at       INTEGER,
        CHECK (status = 'open' OR consumed_micros - overage_micros + refunded_micros = held_micros)
      ) STRICT;
      CREATE INDEX holds_by_resource ON holds(resource);

      CREATE TABLE notifications (
        id        INTEGER PRIMARY KEY,
        account   TEXT NOT NULL REFERENCES accounts(id),
        resource  TEXT,
        at        INTEGER NOT NULL,
        severity  TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
        kind      TEXT NOT NULL,
        text      TEXT NOT NULL,
        data      TEXT,
        read_at   INTEGER
      ) STRICT;
      CREATE INDEX notifications_by_account ON notifications(account, id);

      CREATE TABLE resources (
        id          TEXT PRIMARY KEY,
        account     TEXT NOT NULL REFERENCES accounts(id),
        kind        TEXT NOT NULL,
        status      TEXT NOT NULL,
        live        INTEGER NOT NULL CHECK (live IN (0, 1)),
        snapshot    TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX resources_live ON resources(live, id);
      CREATE INDEX resources_by_account ON resources(account, id);

      CREATE TABLE transitions (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        resource    TEXT NOT NULL,
        from_state  TEXT,
        to_state    TEXT NOT NULL,
        reason      TEXT
      ) STRICT;
      CREATE INDEX transitions_by_resource ON transitions(resource, id);

      CREATE TABLE journal (
        seq      INTEGER PRIMARY KEY,
        at       INTEGER NOT NULL,
        kind     TEXT NOT NULL,
        payload  TEXT NOT NULL
      ) STRICT;
    `
  },
  {
    version: 2,
    name: "model registry",
    sql: `
      CREATE TABLE models (
        account     TEXT NOT NULL REFERENCES accounts(id),
        name        TEXT NOT NULL,
        source      TEXT NOT NULL CHECK (source IN ('huggingface', 'platform', 'shared_fs')),
        filesystem  TEXT,
        gpu         TEXT NOT NULL,
        gpu_count   INTEGER NOT NULL CHECK (gpu_count > 0),
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (account, name)
      ) STRICT;
    `
  },
  {
    version: 3,
    name: "low-balance monitor state",
    sql: `
      CREATE TABLE account_monitor (
        account  TEXT PRIMARY KEY REFERENCES accounts(id),
        warned   TEXT NOT NULL
      ) STRICT;
    `
  },
  {
    version: 4,
    name: "HTTP API: users, memberships, API keys, invites, idempotency records, settings",
    // The API's own tables (src/api/store.ts). No money here: wallets, holds and ledger rows
    // move only through the supervisor. Key secrets are stored as their SHA-256, never as text.
    sql: `
      CREATE TABLE api_users (
        id          TEXT PRIMARY KEY,
        email       TEXT NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE api_memberships (
        account    TEXT NOT NULL REFERENCES accounts(id),
        user_id    TEXT NOT NULL REFERENCES api_users(id),
        role       TEXT NOT NULL CHECK (role IN ('owner', 'member')),
        joined_at  INTEGER NOT NULL,
        PRIMARY KEY (account, user_id)
      ) STRICT;
      CREATE INDEX api_memberships_by_user ON api_memberships(user_id);

      CREATE TABLE api_keys (
        id             TEXT PRIMARY KEY,
        account        TEXT NOT NULL REFERENCES accounts(id),
        user_id        TEXT NOT NULL REFERENCES api_users(id),
        name           TEXT NOT NULL,
        secret_sha256  BLOB NOT NULL CHECK (length(secret_sha256) = 32),
        created_at     INTEGER NOT NULL,
        revoked_at     INTEGER
      ) STRICT;
      CREATE INDEX api_keys_by_account ON api_keys(account, id);

      CREATE TABLE api_invites (
        id           TEXT PRIMARY KEY,
        account      TEXT NOT NULL REFERENCES accounts(id),
        email        TEXT NOT NULL,
        role         TEXT NOT NULL CHECK (role IN ('member')),
        secret       TEXT NOT NULL,
        invited_by   TEXT NOT NULL REFERENCES api_users(id),
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        accepted_at  INTEGER,
        accepted_by  TEXT REFERENCES api_users(id)
      ) STRICT;
      CREATE INDEX api_invites_by_account ON api_invites(account, id);

      CREATE TABLE api_idempotency (
        account         TEXT NOT NULL,
        key             TEXT NOT NULL,
        request_sha256  TEXT NOT NULL,
        status          INTEGER NOT NULL,
        content_type    TEXT NOT NULL,
        body            TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        PRIMARY KEY (account, key)
      ) STRICT;
      CREATE INDEX api_idempotency_by_age ON api_idempotency(created_at);

      CREATE TABLE api_settings (
        name   TEXT PRIMARY KEY,
        value  TEXT NOT NULL
      ) STRICT;
    `
  },
  {
    version: 5,
    name: "payments: card payments, webhook events, refunds per charge, auto-recharge, invoiced accounts",
    // src/payments.ts. A payment row is written before the provider is called; its id is the
    // idempotency key of every call about it, so a retry after a crash never charges twice.
    // Money moves only as ledger rows (topup +, refund −) posted by the supervisor.
    sql: `
      CREATE TABLE payments (
        id               TEXT PRIMARY KEY,
        account          TEXT NOT NULL REFERENCES accounts(id),
        kind             TEXT NOT NULL CHECK (kind IN ('topup', 'auto_recharge')),
        amount_micros    INTEGER NOT NULL CHECK (amount_micros > 0),
        status           TEXT NOT NULL CHECK (status IN ('creating', 'pending', 'succeeded', 'failed')),
        intent_id        TEXT UNIQUE,
        failure_code     TEXT,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX payments_by_account ON payments(account, created_at);
      CREATE INDEX payments_by_status ON payments(status, id);

      CREATE TABLE payment_events (
        id           TEXT PRIMARY KEY,
        type         TEXT NOT NULL,
        received_at  INTEGER NOT NULL,
        outcome      TEXT NOT NULL
      ) STRICT;

      CREATE TABLE payment_refunds (
        charge_id        TEXT PRIMARY KEY,
        payment_id       TEXT NOT NULL REFERENCES payments(id),
        refunded_micros  INTEGER NOT NULL CHECK (refunded_micros >= 0)
      ) STRICT;

      CREATE TABLE auto_recharge (
        account           TEXT PRIMARY KEY REFERENCES accounts(id),
        threshold_micros  INTEGER NOT NULL CHECK (threshold_micros >= 0),
        amount_micros     INTEGER NOT NULL CHECK (amount_micros > 0),
        payment_method    TEXT NOT NULL,
        customer          TEXT,
        pending_payment   TEXT REFERENCES payments(id),
        declines          INTEGER NOT NULL DEFAULT 0,
        last_decline_at   INTEGER,
        retry_at          INTEGER,
        updated_at        INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE account_billing (
        account     TEXT PRIMARY KEY REFERENCES accounts(id),
        invoiced    INTEGER NOT NULL CHECK (invoiced IN (0, 1)),
        terms       TEXT,
        updated_at  INTEGER NOT NULL
      ) STRICT;
    `
  },
  {
    version: 6,
    name: "auto-recharge: paused by a refund at the provider",
    // src/payments.ts. A card refund pauses auto-recharge (the payment it refunded is named
    // here): the card the money just went back to is not charged again at once. The pause
    // ends when the balance is back at the threshold or the settings are saved again.
    sql: `
      ALTER TABLE auto_recharge ADD COLUMN paused_by TEXT REFERENCES payments(id);
    `
  },
  {
    version: 7,
    name: "idempotency: the answer's replayed headers",
    // src/api/http.ts. A replay answers the first answer's headers too (a /v1 answer's
    // x-ecolink-region), as JSON; older records have none.
    sql: `
      ALTER TABLE api_idempotency ADD COLUMN headers TEXT;
    `
  },
  {
    version: 8,
    name: "payments: refunds that fail at the provider",
    // src/payments.ts. A refund to the card can fail (or be canceled) after `charge.refunded`
    // was booked; its money then comes back to the wallet, once per refund id. A charge's
    // booked refund (`refunded_micros`, the sum of its refund rows, negated) now follows
    // `gross_micros` (the sizes of the refunds made, from each charge.refunded's
    // previous_attributes; a charge booked before this migration starts from what it booked),
    // `reported_micros` (the largest amount_refunded reported) and the failures below.
    sql: `
      ALTER TABLE payment_refunds ADD COLUMN gross_micros INTEGER NOT NULL DEFAULT 0 CHECK (gross_micros >= 0);
      ALTER TABLE payment_refunds ADD COLUMN reported_micros INTEGER NOT NULL DEFAULT 0 CHECK (reported_micros >= 0);
      UPDATE payment_refunds SET gross_micros = refunded_micros, reported_micros = refunded_micros;

      CREATE TABLE payment_refund_failures (
        refund_id      TEXT PRIMARY KEY,
        charge_id      TEXT NOT NULL,
        payment_id     TEXT NOT NULL REFERENCES payments(id),
        amount_micros  INTEGER NOT NULL CHECK (amount_micros > 0),
        status         TEXT NOT NULL CHECK (status IN ('failed', 'canceled')),
        failure_reason TEXT,
        failed_at      INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX payment_refund_failures_by_charge ON payment_refund_failures(charge_id);
    `
  },
  {
    version: 9,
    name: "leader term: a fencing token for replicas sharing the file",
    // src/ledger/store.ts (`claim_leader_term`). A replica that starts leading takes the next
    // term; every unit of work of one that no longer holds the latest term is refused, so a
    // leader whose lease ran out while its event loop was blocked cannot write after the new
    // leader began (docs/KUBERNETES.md).
    sql: `
      CREATE TABLE leader_term (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        term INTEGER NOT NULL CHECK (term >= 0)
      ) STRICT;
      INSERT INTO leader_term (id, term) VALUES (1, 0);
    `
  },
  {
    version: 10,
    name: "payments: forget refund events read before refund failures were",
    // src/payments.ts. Before migration 8 a failed refund's event (a Refund object in
    // charge.refund.updated, refund.updated or refund.failed) was answered and recorded as
    // `ignored`, so resending it from Stripe's dashboard answered `duplicate` and its money
    // never came back. Forgetting those records lets a resend book it now.
    sql: `
      DELETE FROM payment_events
      WHERE outcome = 'ignored' AND type IN ('charge.refund.updated', 'refund.updated', 'refund.failed');
    `
  },
  {
    version: 11,
    name: "auto-recharge: every payment whose refund holds a pause",
    // src/payments.ts. A pause is held by the refund that set it (`paused_by`) and by every
    // refund made while it lasts, of any payment of the account; a refund that fails ends it
    // only when none of the payments named here has a refund left standing (looked up by
    // payment, hence the index). A pause set before this migration is held by the payment that
    // set it.
    sql: `
      CREATE TABLE auto_recharge_paused_by (
        account     TEXT NOT NULL REFERENCES accounts(id),
        payment_id  TEXT NOT NULL REFERENCES payments(id),
        PRIMARY KEY (account, payment_id)
      ) STRICT;
      INSERT INTO auto_recharge_paused_by (account, payment_id) SELECT account, paused_by FROM auto_recharge WHERE paused_by IS NOT NULL;
      CREATE INDEX payment_refunds_by_payment ON payment_refunds(payment_id);
    `
  },
  {
    version: 12,
    name: "payments: the refunds booked before migration 8, as one lump",
    // src/payments.ts. Code older than migration 8 booked a charge's refunds by its largest
    // cumulative amount_refunded, not refund by refund, and migration 8 started the charge's
    // refunds made (`gross_micros`) at that amount. A charge.refunded of one of the refunds in
    // it that arrives only after the upgrade (Stripe keeps no order, and retries a delivery
    // for days) added its size again. The lump is kept here (`legacy_micros`, as booked at
    // `legacy_at`, the instant of the payment's last refund row) so such an event counts only
    // its part above it. Marked: every charge as migration 8 left it (its three amounts equal,
    // no failure); a charge booked since in that state has no such event to come, as long as
    // no refund of it failed unseen (src/payments.ts, `refundSize`).
    sql: `
      ALTER TABLE payment_refunds ADD COLUMN legacy_micros INTEGER NOT NULL DEFAULT 0 CHECK (legacy_micros >= 0);
      ALTER TABLE payment_refunds ADD COLUMN legacy_at INTEGER;
      UPDATE payment_refunds
      SET legacy_micros = refunded_micros,
          legacy_at = (SELECT max(at) FROM ledger WHERE kind = 'refund' AND resource = payment_refunds.payment_id)
      WHERE refunded_micros > 0 AND gross_micros = refunded_micros AND reported_micros = refunded_micros
        AND NOT EXISTS (SELECT 1 FROM payment_refund_failures f WHERE f.charge_id = payment_refunds.charge_id);
    `
  },
  {
    version: 13,
    name: "payments: refunds made, by refund id",
    // src/payments.ts. A charge's refunds made are also counted refund by refund, as Stripe
    // tells them by id (refund.created, refund.updated, charge.refund.updated, a charge's
    // refunds list), since charge.refunded's previous_attributes is documented for *.updated
    // events only. A refund that failed was made first: the failures known count from here.
    // Refund events read before as ignored (a made refund booked nothing) are forgotten, as in
    // migration 10, so a resend from Stripe's dashboard counts them.
    sql: `
      CREATE TABLE payment_refunds_made (
        refund_id      TEXT PRIMARY KEY,
        charge_id      TEXT NOT NULL,
        payment_id     TEXT NOT NULL REFERENCES payments(id),
        amount_micros  INTEGER NOT NULL CHECK (amount_micros > 0)
      ) STRICT;
      CREATE INDEX payment_refunds_made_by_charge ON payment_refunds_made(charge_id);
      INSERT INTO payment_refunds_made (refund_id, charge_id, payment_id, amount_micros)
        SELECT refund_id, charge_id, payment_id, amount_micros FROM payment_refund_failures;
      DELETE FROM payment_events
      WHERE outcome = 'ignored' AND type IN ('refund.created', 'charge.refund.updated', 'refund.updated');
    `
  },
  {
    version: 14,
    name: "API keys: the order of revocations",
    // src/api/store.ts (`revokeKey`). An account keeps its newest revoked keys, and "newest"
    // must be the order they were revoked in: `revoked_at` ties within a millisecond, and
    // ranked by row on a tie, the key just revoked could be the one pruned. Each revocation
    // takes the account's next number; keys revoked before take theirs in (revoked_at, rowid)
    // order, the best guess there is.
    sql: `
      ALTER TABLE api_keys ADD COLUMN revoked_seq INTEGER CHECK (revoked_seq IS NULL OR revoked_seq > 0);
      UPDATE api_keys SET revoked_seq = ranked.n
      FROM (SELECT rowid AS r, row_number() OVER (PARTITION BY account ORDER BY revoked_at, rowid) AS n FROM api_keys WHERE revoked_at IS NOT NULL) AS ranked
      WHERE api_keys.rowid = ranked.r;
      CREATE INDEX api_keys_by_revocation ON api_keys(account, revoked_seq) WHERE revoked_seq IS NOT NULL;
    `
  },
  {
    version: 15,
    name: "clock mark: the latest instant the database holds, and up to which rows",
    // src/ledger/store.ts (`latestInstant`). A live clock never starts before the latest
    // instant the database holds (src/clock.ts `notBefore`). Every row of the journal, the
    // ledger, the transitions and the notifications up to the ids marked here is at or before
    // `at`, so the latest instant is the larger of `at` and the rows after the mark: a scan of
    // what was written since, not of the whole history. The first live start after this
    // migration scans everything once.
    sql: `
      CREATE TABLE clock_mark (
        id               INTEGER PRIMARY KEY CHECK (id = 1),
        journal_seq      INTEGER NOT NULL,
        ledger_id        INTEGER NOT NULL,
        transition_id    INTEGER NOT NULL,
        notification_id  INTEGER NOT NULL,
        at               INTEGER NOT NULL
      ) STRICT;
      INSERT INTO clock_mark (id, journal_seq, ledger_id, transition_id, notification_id, at) VALUES (1, 0, 0, 0, 0, 0);
    `
  },
  {
    version: 16,
    name: "idempotency: the payment a top-up's key began, before its answer",
    // src/api/http.ts (`idempotentAsync`). A top-up with an Idempotency-Key records the key with
    // its payment row, in the same transaction, before the provider is called (status 0: no
    // answer yet). A retry after a crash that lost the answer answers that payment, never a
    // second one.
    sql: `
      ALTER TABLE api_idempotency ADD COLUMN payment TEXT;
    `
  },
  {
    version: 17,
    name: "payments: disputes (chargebacks), by dispute id",
    // src/payments.ts. A dispute's funds withdrawn from, and reinstated to, the merchant's
    // balance at the provider, each the largest the provider has told (so a resend or a second
    // event type of one dispute books nothing more); `disputed_micros` is what the charge's
    // dispute rows (card `refund` rows) add up to, negated, at most the payment less what was
    // refunded of it.
    sql: `
      CREATE TABLE payment_disputes (
        dispute_id         TEXT PRIMARY KEY,
        charge_id          TEXT NOT NULL,
        payment_id         TEXT NOT NULL REFERENCES payments(id),
        withdrawn_micros   INTEGER NOT NULL DEFAULT 0 CHECK (withdrawn_micros >= 0),
        reinstated_micros  INTEGER NOT NULL DEFAULT 0 CHECK (reinstated_micros >= 0),
        status             TEXT,
        reason             TEXT,
        updated_at         INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX payment_disputes_by_charge ON payment_disputes(charge_id);
      ALTER TABLE payment_refunds ADD COLUMN disputed_micros INTEGER NOT NULL DEFAULT 0 CHECK (disputed_micros >= 0);
    `
  },
  {
    version: 18,
    name: "auto-recharge: the backoff outlives the settings",
    // src/payments.ts. The decline backoff (and the wait after a failure of the provider's) is
    // the account's: turning auto-recharge off keeps it here, and saving the same card again
    // takes it back, so deleting and saving the settings again does not charge a declining
    // card at once. A different card starts afresh (docs/POLICY.md); a success forgets it.
    sql: `
      CREATE TABLE auto_recharge_backoff (
        account          TEXT PRIMARY KEY REFERENCES accounts(id),
        payment_method   TEXT NOT NULL,
        declines         INTEGER NOT NULL CHECK (declines >= 0),
        last_decline_at  INTEGER,
        retry_at         INTEGER
      ) STRICT;
    `
  },
  {
    version: 19,
    name: "accounts: emails stored decomposed, composed (NFC)",
    // src/api/routes/accounts.ts (`normalEmail`). Emails have been stored composed (Unicode NFC:
    // `e` + U+0301 is `é`) since the sign-up and invite routes compose them, but one stored
    // before in decomposed form stayed so: signing up with the address it shows made a second
    // account that passed for the first in a team's member list, and an invite to it (now
    // composed) was 403 invite_email_mismatch. Each is composed here (`ecolink_nfc`,
    // `registerMigrationFunctions`). When two users' emails are one address once composed,
    // neither is merged into the other nor is the migration failed (each has its own accounts, keys and
    // memberships; which person owns the address is not ours to guess): the user already
    // composed keeps it, else the one who signed up first (created_at, then row) takes it, and
    // every other keeps its email as stored, still signing in by its keys, and is journaled
    // (`email_not_composed`: the user, its email, the composed form and the user who holds it)
    // for an operator to settle. A pending invite is composed with its address, except one sent
    // to exactly such a user's stored email, which stays theirs to accept.
    sql: `
      UPDATE api_users SET email = ecolink_nfc(email)
      WHERE email <> ecolink_nfc(email)
        AND NOT EXISTS (SELECT 1 FROM api_users o WHERE o.email = ecolink_nfc(api_users.email))
        AND NOT EXISTS (
          SELECT 1 FROM api_users o
          WHERE o.rowid <> api_users.rowid AND o.email <> ecolink_nfc(o.email) AND ecolink_nfc(o.email) = ecolink_nfc(api_users.email)
            AND (o.created_at, o.rowid) < (api_users.created_at, api_users.rowid)
        );
      INSERT INTO journal (at, kind, payload)
        SELECT coalesce((SELECT max(at) FROM journal), 0), 'email_not_composed',
               json_object('user', u.id, 'email', u.email, 'composed', ecolink_nfc(u.email), 'held_by', (SELECT o.id FROM api_users o WHERE o.email = ecolink_nfc(u.email)))
        FROM api_users u WHERE u.email <> ecolink_nfc(u.email) ORDER BY u.created_at, u.rowid;
      UPDATE api_invites SET email = ecolink_nfc(email)
      WHERE email <> ecolink_nfc(email) AND NOT EXISTS (SELECT 1 FROM api_users u WHERE u.email = api_invites.email);
    `
  },
  {
    version: 20,
    name: "resources: the format of each stored snapshot",
    // src/snapshots.ts. The format of the actor snapshot in the row (`SNAPSHOT_VERSION` of the
    // engine that wrote it). Rows written before are 0: every engine before this one wrote the
    // contexts as its machines had them, with no format, and they are upgraded when read.
    sql: `
      ALTER TABLE resources ADD COLUMN snapshot_version INTEGER NOT NULL DEFAULT 0 CHECK (snapshot_version >= 0);
    `
  }
]

/**
 * SQL functions the migrations use, registered on the connection before they run: SQLite has
 * no Unicode normalisation of its own. Deterministic, so a migration reads the same on every
 * replica.
 */
export const registerMigrationFunctions = (db: Database.Database): void => {
  db.function("ecolink_nfc", { deterministic: true }, (text: unknown) => (typeof text === "string" ? text.normalize("NFC") : text))
}

/** A database a newer engine migrated (a rollback onto its file): refused, as `npm start` refuses a bad flag. */
export class SchemaTooNew extends Error {
  override readonly name = "SchemaTooNew"
}

/** Applies every migration newer than the database's version. Returns the new version. */
export const migrate = (db: Database.Database): number => {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL) STRICT`)
  const current = (db.prepare(`SELECT coalesce(max(version), 0) AS v FROM schema_migrations`).get() as { v: number }).v
  const known = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0
  if (current > known) {
    throw new SchemaTooNew(`database schema version ${current} is newer than this engine knows (${known}); refusing to run`)
  }
  registerMigrationFunctions(db)
  for (const m of MIGRATIONS) {
    if (m.version <= current) continue
    db.transaction(() => {
      db.exec(m.sql)
      db.prepare(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`).run(m.version, m.name)
    })()
  }
  return known
}
