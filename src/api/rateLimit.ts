/**
 * A store for @fastify/rate-limit that counts on the engine's clock instead of reading the
 * wall clock itself: fixed windows per caller (an account, the operator, or the client address
 * of a request without a valid key). On the live clock it behaves as the plugin's own store;
 * on a virtual clock the tests get exact `retry-after` values.
 *
 * Windows are held in two bounded maps: one for callers with a key, one for client addresses.
 * When a map is full the window started longest ago is forgotten (its count starts again), so
 * requests from many addresses, which cost nothing to make, can only flush each other's
 * windows, never an account's.
 */
import type { EngineClock } from "../clock.js"

/** Windows counted at once per map (callers with a key; client addresses). */
export const RATE_LIMIT_KEYS_MAX = 100_000

/**
 * A client address with its port, or in brackets, as some proxies write it: `192.0.2.1:5678`,
 * `[2001:db8::1]:5678`, `[2001:db8::1]`.
 */
const WITH_PORT_RE = /^(?:(\d{1,3}(?:\.\d{1,3}){3})|\[([0-9a-f:.%]+)\]):\d{1,5}$|^\[([0-9a-f:.%]+)\]$/i

/**
 * An IPv4 client of a dual-stack socket, as Node names it (`::ffff:192.0.2.1`), with the port
 * a proxy may have written after it.
 */
const IPV4_MAPPED_RE = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})(?::\d{1,5})?$/i

/** The hextets of one side of an IPv6 `::`; an embedded IPv4 address counts as two. */
const hextetsOf = (part: string): string[] => (part === "" ? [] : part.split(":").flatMap((h) => (h.includes(".") ? ["0", "0"] : [h])))

/** The first 64 bits of an IPv6 address (`2001:db8:0:1`), the network one subscriber is given. */
const ipv6Network = (ip: string): string => {
  const [head = "", tail] = ip.split("%")[0]!.split("::")
  const left = hextetsOf(head)
  const right = tail === undefined ? [] : hextetsOf(tail)
  const all = tail === undefined ? left : [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right]
  return all.slice(0, 4).map((h) => parseInt(h, 16).toString(16)).join(":")
}

/**
 * The store's key for a request without a valid key: its client address; for IPv6, its /64.
 * A subscriber is given a whole /64 (2^64 addresses): a budget per address was no budget.
 */
export const addressKey = (given: string): string => {
  // A proxy that writes the client's port into X-Forwarded-For (`--trust-proxy`): the port
  // is not the client, and read as IPv6 each port was a budget of its own.
  const withPort = WITH_PORT_RE.exec(given)
  const ip = withPort === null ? given : (withPort[1] ?? withPort[2] ?? withPort[3]!)
  const mapped = IPV4_MAPPED_RE.exec(ip)
  if (mapped !== null) return `ip:${mapped[1]}`
  return ip.includes(":") ? `ip:${ipv6Network(ip)}::/64` : `ip:${ip}`
}

interface Window {
  current: number
  started_at: number
}

type Callback = (err: Error | null, res: { current: number; ttl: number }) => void

export const clockRateLimitStore = (clock: EngineClock) =>
  class ClockRateLimitStore {
    private readonly callers = new Map<string, Window>()
    private readonly addresses = new Map<string, Window>()

    private windowsOf(key: string): Map<string, Window> {
      return key.startsWith("ip:") ? this.addresses : this.callers
    }

    incr(key: string, cb: Callback, timeWindow: number): void {
      const now = clock.now()
      const windows = this.windowsOf(key)
      let w = windows.get(key)
      if (w === undefined || w.started_at + timeWindow <= now) {
        // Deleted and set again, so the map's order stays the order the windows started in.
        if (w !== undefined) windows.delete(key)
        if (windows.size >= RATE_LIMIT_KEYS_MAX) windows.delete(windows.keys().next().value!)
        w = { current: 0, started_at: now }
        windows.set(key, w)
      }
      w.current++
      cb(null, { current: w.current, ttl: w.started_at + timeWindow - now })
    }

    read(key: string, cb: Callback, timeWindow: number): void {
      const now = clock.now()
      const w = this.windowsOf(key).get(key)
      if (w === undefined || w.started_at + timeWindow <= now) cb(null, { current: 0, ttl: 0 })
      else cb(null, { current: w.current, ttl: w.started_at + timeWindow - now })
    }

    child(): ClockRateLimitStore {
      return new ClockRateLimitStore()
    }
  }
