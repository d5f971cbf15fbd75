/**
 * Spies on every wall-clock and randomness source (Date.now, performance.now, `new Date()`,
 * Math.random, Node's timers) and notes each call whose caller is our engine code (src/,
 * machines/, sim/), wherever the checkout lives. XState, Effect, the HTTP client and the test
 * servers may read the wall clock; our code may not (DESIGN.md "Time").
 */
import { join } from "node:path"

const ROOT = join(import.meta.dirname, "..")
const OUR_DIRS = ["src", "machines", "sim"].map((d) => `${join(ROOT, d)}/`)
const isOurs = (frame: string): boolean => OUR_DIRS.some((d) => frame.includes(d)) && !frame.includes("node_modules")

const real = {
  now: Date.now,
  perf: performance.now.bind(performance),
  random: Math.random,
  setTimeout: globalThis.setTimeout,
  setInterval: globalThis.setInterval,
  setImmediate: globalThis.setImmediate,
  Date: globalThis.Date
}

/**
 * Replaces the sources with spies; returns the list the calls from our code go into. The wall
 * clock reads `shift_ms` later than it is (a run "ten years from now").
 */
export const spyOnWallClock = (shift_ms = 0): string[] => {
  const calls: string[] = []
  const note = (what: string) => {
    const caller = (new Error().stack ?? "").split("\n")[3] ?? ""
    if (isOurs(caller)) calls.push(`${what} ${caller.trim()}`)
  }
  Date.now = () => (note("Date.now"), real.now() + shift_ms)
  performance.now = () => (note("performance.now"), real.perf())
  Math.random = () => (note("Math.random"), real.random())
  globalThis.setTimeout = ((...a: Parameters<typeof setTimeout>) => (note("setTimeout"), real.setTimeout(...a))) as typeof setTimeout
  globalThis.setInterval = ((...a: Parameters<typeof setInterval>) => (note("setInterval"), real.setInterval(...a))) as typeof setInterval
  globalThis.setImmediate = ((...a: Parameters<typeof setImmediate>) => (note("setImmediate"), real.setImmediate(...a))) as typeof setImmediate
  globalThis.Date = new Proxy(real.Date, {
    construct(target, args: unknown[]) {
      if (args.length === 0) note("new Date()")
      return args.length === 0 ? new target(real.now() + shift_ms) : new target(...(args as [number]))
    }
  })
  return calls
}

/** Puts every source back (an `afterEach`). */
export const restoreWallClock = (): void => {
  Date.now = real.now
  performance.now = real.perf
  Math.random = real.random
  globalThis.setTimeout = real.setTimeout
  globalThis.setInterval = real.setInterval
  globalThis.setImmediate = real.setImmediate
  globalThis.Date = real.Date
}
