/**
 * The secrets port: the API's only source of randomness (key secrets, invite secrets, ids,
 * the request-id prefix). Production uses the operating system's CSPRNG; tests inject a
 * deterministic port so every id and key in an answer is known in advance.
 *
 * Keys look like `eco_<key id>_<secret>`: the key id (12 base32 characters) finds the row, the
 * secret (32 random bytes, base64url) is compared against the stored SHA-256 in constant time.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"

export interface SecretsPort {
  /** `n` bytes of unpredictable randomness. */
  randomBytes(n: number): Buffer
}

export const cryptoSecrets: SecretsPort = { randomBytes: (n) => randomBytes(n) }

const BASE32 = "abcdefghijklmnopqrstuvwxyz234567"

/** `length` characters of lowercase base32 (5 random bits each). */
export const base32 = (secrets: SecretsPort, length: number): string => {
  const bytes = secrets.randomBytes(length)
  let out = ""
  for (let i = 0; i < length; i++) out += BASE32[bytes[i]! & 31]
  return out
}

/** A fresh identifier: a prefix naming what it is, then 12 base32 characters (60 bits). */
export const newId = (secrets: SecretsPort, prefix: string): string => `${prefix}${base32(secrets, ID_CHARS)}`

export const ID_CHARS = 12
export const KEY_ID_CHARS = 12
export const SECRET_BYTES = 32
/** base64url of 32 bytes, without padding. */
export const SECRET_CHARS = 43

export const newSecret = (secrets: SecretsPort): string => secrets.randomBytes(SECRET_BYTES).toString("base64url")

export const sha256 = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest()

/** Constant-time comparison of two SHA-256 digests (always 32 bytes, so lengths never leak). */
export const sameDigest = (a: Buffer, b: Buffer): boolean => a.length === b.length && timingSafeEqual(a, b)

const KEY_RE = new RegExp(`^eco_([a-z2-7]{${KEY_ID_CHARS}})_([A-Za-z0-9_-]{${SECRET_CHARS}})$`)

export const formatApiKey = (key_id: string, secret: string): string => `eco_${key_id}_${secret}`

/** Splits a presented key into its id and secret; null when it is not shaped like one. */
export const parseApiKey = (presented: string): { readonly key_id: string; readonly secret: string } | null => {
  const m = KEY_RE.exec(presented)
  return m === null ? null : { key_id: m[1]!, secret: m[2]! }
}

/** The part of a key that may be shown again after creation: `eco_<key id>_…`. */
export const keyPrefix = (key_id: string): string => `eco_${key_id}_`

/**
 * A deterministic port for tests and demos: bytes from SHA-256 of (seed, counter). Never use
 * it where a secret must be unguessable.
 */
export const seededSecrets = (seed: string): SecretsPort => {
  let counter = 0
  return {
    randomBytes: (n) => {
      const chunks: Buffer[] = []
      let have = 0
      while (have < n) {
        const chunk = createHash("sha256").update(`${seed}:${counter++}`).digest()
        chunks.push(chunk)
        have += chunk.length
      }
      return Buffer.concat(chunks).subarray(0, n)
    }
  }
}
