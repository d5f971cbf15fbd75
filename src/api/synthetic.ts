/**
 * The simulated world's model server: deterministic completion text and embeddings, with
 * token counts that are real for the text answered (the same text always counts the same).
 *
 * Token counting approximates a BPE tokenizer (cl100k) without its vocabulary: the text is
 * split by the cl100k pre-tokenizer pattern (words with their leading space, up to 3 digits,
 * runs of punctuation, whitespace), and a piece counts ⌈letters / 6⌉ tokens for a word, 1 for
 * digits, ⌈chars / 8⌉ for whitespace, ⌈chars / 4⌉ for punctuation. Chat prompts add OpenAI's
 * documented framing: 3 tokens per message (+1 for a `name`) and 3 for the reply's priming.
 *
 * Completions: the text is words from a fixed lexicon, chosen by SHA-256 of (model, prompt);
 * each word counts one token, so `max_tokens` words end it with `finish_reason: "length"`,
 * and a shorter natural length (8 to 31 words, from the same hash) ends it with `"stop"`.
 */
import { createHash } from "node:crypto"

const PIECE_RE = /'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu
/**
 * A contraction piece ('s, 'll, …), one token. Only the whole piece: a run of punctuation that
 * merely starts with an apostrophe is punctuation (a 1 MB prompt `'!!!…` counted 1 token).
 */
const CONTRACTION_RE = /^'(?:[sdmt]|ll|ve|re)$/
/**
 * Whitespace characters per token. A run of whitespace is one piece whatever its length; counted
 * 1 token, a 1 MB prompt of spaces was billed 8 tokens. Eight keeps what prose and indented code
 * hold (a newline, a blank line, an indent of 8) at one token, as BPE merges them.
 */
const WHITESPACE_CHARS_PER_TOKEN = 8

export const countTokens = (text: string): number => {
  let n = 0
  for (const m of text.matchAll(PIECE_RE)) {
    const piece = m[0]
    const body = piece.trimStart()
    if (body.length === 0) n += Math.ceil(piece.length / WHITESPACE_CHARS_PER_TOKEN)
    else if (/^\p{N}+$/u.test(body) || CONTRACTION_RE.test(body)) n += 1
    else if (/^\p{L}+$/u.test(body)) n += Math.ceil([...body].length / 6)
    else n += Math.ceil([...body].length / 4)
  }
  return n
}

/** Per message framing and reply priming (OpenAI's cookbook rule for chat models). */
export const TOKENS_PER_MESSAGE = 3
export const TOKENS_PER_NAME = 1
export const TOKENS_REPLY_PRIMING = 3

export interface ChatMessage {
  readonly role: string
  readonly content: string
  readonly name?: string
}

export const chatPromptTokens = (messages: ReadonlyArray<ChatMessage>): number =>
  messages.reduce((n, m) => n + TOKENS_PER_MESSAGE + countTokens(m.role) + countTokens(m.content) + (m.name === undefined ? 0 : TOKENS_PER_NAME + countTokens(m.name)), 0) +
  TOKENS_REPLY_PRIMING

/** The default and largest completion length, in tokens. */
export const COMPLETION_TOKENS_DEFAULT = 16
export const COMPLETION_TOKENS_MAX = 4_096
const NATURAL_WORDS_MIN = 8
const NATURAL_WORDS_SPAN = 24

/** Words of at most 6 letters: each counts exactly one token, with or without its leading space. */
const LEXICON = [
  "the", "node", "model", "answer", "token", "simple", "green", "energy", "river", "light",
  "signal", "engine", "ledger", "steady", "result", "cloud", "vector", "prompt", "small", "quick",
  "bright", "region", "stream", "value", "budget", "credit", "fair", "clear", "solar", "wind",
  "grid", "calm"
] as const

const digest = (...parts: ReadonlyArray<string>): Buffer => {
  const h = createHash("sha256")
  for (const p of parts) h.update(p).update("\u0000")
  return h.digest()
}

export interface Completion {
  /** The words, in order; the text is their concatenation. */
  readonly pieces: ReadonlyArray<string>
  readonly text: string
  readonly tokens: number
  readonly finish_reason: "stop" | "length"
}

/** Deterministic text for `prompt`: each piece is one word (and one token). */
export const complete = (model: string, prompt: string, max_tokens: number | undefined): Completion => {
  const h = digest("completion", model, prompt)
  const natural = NATURAL_WORDS_MIN + (h[0]! % NATURAL_WORDS_SPAN)
  const limit = Math.min(max_tokens ?? COMPLETION_TOKENS_DEFAULT, COMPLETION_TOKENS_MAX)
  const words = Math.min(natural, limit)
  const pieces: string[] = []
  let block = h
  for (let i = 0; i < words; i++) {
    if (i > 0 && i % block.length === 0) block = digest("completion", model, prompt, String(i / block.length))
    const word = LEXICON[block[i % block.length]! % LEXICON.length]!
    pieces.push(i === 0 ? word[0]!.toUpperCase() + word.slice(1) : ` ${word}`)
  }
  const text = pieces.join("")
  return { pieces, text, tokens: countTokens(text), finish_reason: natural > limit ? "length" : "stop" }
}

export const EMBEDDING_DIMENSIONS_DEFAULT = 16
export const EMBEDDING_DIMENSIONS_MAX = 256

/** A deterministic unit vector for `input`, as float32 values. */
export const embed = (model: string, input: string, dimensions: number): number[] => {
  const raw: number[] = []
  for (let block = 0; raw.length < dimensions; block++) {
    const h = digest("embedding", model, input, String(block))
    for (let i = 0; i + 1 < h.length && raw.length < dimensions; i += 2) raw.push((h.readUInt16BE(i) / 65535) * 2 - 1)
  }
  const norm = Math.sqrt(raw.reduce((s, x) => s + x * x, 0)) || 1
  return raw.map((x) => Math.fround(x / norm))
}

/** OpenAI's `encoding_format: "base64"`: the float32 values, little-endian, base64. */
export const embeddingBase64 = (vector: ReadonlyArray<number>): string => Buffer.from(new Float32Array(vector).buffer).toString("base64")
