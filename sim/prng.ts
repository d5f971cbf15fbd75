/**
 * The simulated world's only source of randomness: a seeded xoroshiro128+ generator from
 * pure-rand (fast-check's own PRNG library). The same seed gives the same world.
 */
import { uniformInt } from "pure-rand/distribution/uniformInt"
import { xoroshiro128plus } from "pure-rand/generator/xoroshiro128plus"

/**
 * The largest seed: xoroshiro128plus takes a 32-bit integer (`seed | 0`), so the seeds from 0
 * to 2^32 − 1 are all the distinct worlds there are; a larger one would wrap onto one of them.
 */
export const PRNG_SEED_MAX = 2 ** 32 - 1

export class Prng {
  private readonly rng: ReturnType<typeof xoroshiro128plus>

  constructor(seed: number) {
    this.rng = xoroshiro128plus(seed | 0)
  }

  /** A whole number in [min, max], both included. */
  int(min: number, max: number): number {
    return uniformInt(this.rng, min, max)
  }

  /** True with probability `p` (resolution one in a million). */
  chance(p: number): boolean {
    if (p <= 0) return false
    if (p >= 1) return true
    return this.int(0, 999_999) < Math.round(p * 1_000_000)
  }
}
