/**
 * The simulated world's model server: deterministic completion text and embeddings, with
 * token counts that are real for the text answered (the same text always counts the same).
 *
 * Token counting approximates a BPE tokenizer (cl100k) without its vocabulary: the text is
 * split by the cl100k pre-tokenizer pattern (words with their leading space, up to 3 digits,
 * runs of punctuation, whitespace), and a piece counts 1 for digits, ⌈chars / 8⌉ for whitespace,
 * and for a word or a run of punctuation what its characters weigh (`weighed`): ⌈letters / 6⌉
 * of the Latin alphabet, ⌈letters / 3⌉ of other alphabets (Cyrillic, Greek, Arabic, …), one
 * token per character of the scripts a byte-level vocabulary barely merges (Han, kana, Hangul,
 * Thai, the Indic scripts, …), ⌈chars / 4⌉ of ASCII punctuation and one per other symbol
 * (emoji included). Chat prompts add OpenAI's documented framing: 3 tokens per message (+1 for
 * a `name`) and 3 for the reply's priming.
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

/**
 * Scripts whose characters cl100k spends about a token each on (its vocabulary holds few of
 * their merges): counted one token per character. Before, a word of them counted ⌈letters / 6⌉
 * like English, and a sentence of Chinese, written without spaces, is one word: a prompt in
 * Chinese or Japanese was billed 4 to 6 times less than its tokens.
 */
const DENSE_SCRIPT_RE =
  /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\p{Script=Bopomofo}\p{Script=Yi}\p{Script=Thai}\p{Script=Lao}\p{Script=Khmer}\p{Script=Myanmar}\p{Script=Tibetan}\p{Script=Devanagari}\p{Script=Bengali}\p{Script=Gurmukhi}\p{Script=Gujarati}\p{Script=Oriya}\p{Script=Tamil}\p{Script=Telugu}\p{Script=Kannada}\p{Script=Malayalam}\p{Script=Sinhala}\p{Script=Ethiopic}]/gu
/** The Latin letters English-trained merges cover: Basic Latin to Latin Extended-B (not fullwidth or other look-alikes). */
const LATIN_COMMON_MAX = 0x024f
const LATIN_LETTERS_PER_TOKEN = 6
/** Letters of other alphabets (Cyrillic, Greek, Armenian, Hebrew, Arabic, …) and Latin look-alikes past Extended-B. */
const ALPHABET_LETTERS_PER_TOKEN = 3
const ASCII_PUNCTUATION_PER_TOKEN = 4
const ASCII_ONLY_RE = /^[\x00-\x7f]*$/

/**
 * Code points in `s`: a surrogate pair is one, and a lone surrogate (JSON's "\udc00" decodes to
 * one) is one too. Skipping every low surrogate, paired or not, counted a prompt of lone ones
 * as nothing: free, whatever its length.
 */
const codePoints = (s: string): number => {
  let n = 0
  for (let i = 0; i < s.length; i++) {
    const unit = s.charCodeAt(i)
    const paired = unit >= 0xdc00 && unit <= 0xdfff && i > 0 && s.charCodeAt(i - 1) >= 0xd800 && s.charCodeAt(i - 1) <= 0xdbff
    if (!paired) n++
  }
  return n
}

/** Code units of `s` at or below `max` (for a `max` below the surrogates, the characters). */
const unitsUpTo = (s: string, max: number): number => {
  let n = 0
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) <= max) n++
  return n
}

/**
 * A word's or a punctuation run's tokens, by what its characters weigh. A word: ⌈Latin letters
 * / 6⌉ + ⌈other letters / 3⌉ + one per letter of a dense script. A punctuation run: ⌈ASCII / 4⌉
 * + one per other character (an emoji, a combining vowel sign, `—`). A pure ASCII piece takes
 * the short way. Counted with `replace` and plain loops: a regular expression tried on each
 * character took 0.3 s for a 1 MB prompt.
 */
const weighed = (body: string, letters: boolean): number => {
  if (ASCII_ONLY_RE.test(body)) return Math.ceil(body.length / (letters ? LATIN_LETTERS_PER_TOKEN : ASCII_PUNCTUATION_PER_TOKEN))
  if (!letters) {
    const ascii = unitsUpTo(body, 0x7f)
    return Math.ceil(ascii / ASCII_PUNCTUATION_PER_TOKEN) + codePoints(body) - ascii
  }
  const alphabetic = body.replace(DENSE_SCRIPT_RE, "")
  const dense = codePoints(body) - codePoints(alphabetic)
  const latin = unitsUpTo(alphabetic, LATIN_COMMON_MAX)
  return Math.ceil(latin / LATIN_LETTERS_PER_TOKEN) + Math.ceil((codePoints(alphabetic) - latin) / ALPHABET_LETTERS_PER_TOKEN) + dense
}

export const countTokens = (text: string): number => {
  let n = 0
  for (const m of text.matchAll(PIECE_RE)) {
    const piece = m[0]
    const body = piece.trimStart()
    if (body.length === 0) n += Math.ceil(piece.length / WHITESPACE_CHARS_PER_TOKEN)
    else if (/^\p{N}+$/u.test(body) || CONTRACTION_RE.test(body)) n += 1
    else n += weighed(body, /^\p{L}+$/u.test(body))
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
