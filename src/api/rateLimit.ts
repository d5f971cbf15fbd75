/**
 * A store for @fastify/rate-limit that counts on the engine's clock instead of reading the
 * wall clock itself: fixed windows per key (an API key's id, or the client address for
 * requests without a valid key), in a bounded map. On the live clock it behaves as the
 * plugin's own store; on a virtual clock the tests get exact `retry-after` values.
 */
import type { EngineClock } from "../clock.js"

/** Keys counted at once; the least recently started window is forgotten first. */
export const RATE_LIMIT_KEYS_MAX = 100_000

interface Window {
  current: number
  started_at: number
}

type Callback = (err: Error | null, res: { current: number; ttl: number }) => void

export const clockRateLimitStore = (clock: EngineClock) =>
  class ClockRateLimitStore {
    private readonly windows = new Map<string, Window>()

    incr(key: string, cb: Callback, timeWindow: number): void {
      const now = clock.now()
      let w = this.windows.get(key)
      if (w === undefined || w.started_at + timeWindow <= now) {
        if (w !== undefined) this.windows.delete(key)
        if (this.windows.size >= RATE_LIMIT_KEYS_MAX) this.windows.delete(this.windows.keys().next().value!)
        w = { current: 0, started_at: now }
        this.windows.set(key, w)
      }
      w.current++
      cb(null, { current: w.current, ttl: w.started_at + timeWindow - now })
    }

    read(key: string, cb: Callback, timeWindow: number): void {
      const now = clock.now()
      const w = this.windows.get(key)
      if (w === undefined || w.started_at + timeWindow <= now) cb(null, { current: 0, ttl: 0 })
      else cb(null, { current: w.current, ttl: w.started_at + timeWindow - now })
    }

    child(): ClockRateLimitStore {
      return new ClockRateLimitStore()
    }
  }
