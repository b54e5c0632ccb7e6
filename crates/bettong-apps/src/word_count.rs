//! Word count, as Wallaroo's Python example: every framed message is UTF-8 text; each word gets
//! a running count, emitted as the unframed line `word => count\n` every time the word is seen.
//!
//! Splitting follows the Python example (reference §9): split on `\n`, lowercase the line,
//! strip space and ASCII punctuation from both ends, split on single spaces, strip the same
//! characters from each piece. Unlike the Python example, empty pieces are skipped.

use std::num::NonZeroU64;

use crate::pieces::{load16, short, whole};
use bettong::codec::DecodeError;
use bettong::{Application, Key, Pipeline, TcpSink, TcpSource};

/// The Bill of Rights, Wallaroo's word-count text: one line per message in `bench word-count`.
pub const BILL_OF_RIGHTS: &str = include_str!("bill_of_rights.txt");

/// The application's only source.
pub const SOURCE: &str = "Text";

/// ASCII punctuation (the 32 characters `u8::is_ascii_punctuation` names, the same set the
/// Python example strips besides the space): what is stripped from the ends of words. One byte each, never part of a longer UTF-8 sequence, so the splitter works on bytes.
const fn is_strip(b: u8) -> bool {
    b.is_ascii_punctuation()
}

/// A word's running count, the state entity of each word.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WordTotal {
    /// Times the word has been seen.
    pub count: u64,
}

/// One output: a word and its count so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordCount {
    /// The word.
    pub word: Word,
    /// How many times it has been seen, this one included.
    pub count: u64,
}

/// Decodes a frame as UTF-8 text.
///
/// ```
/// use bettong_apps::word_count::decode;
/// assert_eq!(decode(b"Hello").unwrap(), "Hello");
/// assert!(decode(&[0xff, 0xfe]).is_err());
/// ```
pub fn decode(payload: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(payload)
        .map(str::to_owned)
        .map_err(|e| DecodeError::new(format!("word count: payload is not UTF-8 ({e})")))
}

/// Splits text into words by the rules above.
///
/// ```
/// use bettong_apps::word_count::split;
/// assert_eq!(split("The cat's  hat!\n(\"Don't\")"), ["the", "cat's", "hat", "don't"]);
/// ```
pub fn split(text: &str) -> Vec<String> {
    Words::new(text.to_string()).map(String::from).collect()
}

/// Bytes a [`Word`] holds without allocating. 22 keeps a `Word` as small as a `String` (24
/// bytes); the longest word of the Bill of Rights has 15.
const INLINE: usize = 22;

/// One word: held inline when it has at most 22 bytes, on the heap otherwise.
///
/// Why not a `String`: mimalloc's aligned allocation (what its Rust allocator calls for every
/// `String`) and the free once the count was encoded came to about 70 of the 621 instructions
/// per output of `bench word-count` on 1 shard (callgrind of the source task; figures in the
/// commit that made this type).
///
/// ```
/// use bettong_apps::word_count::Word;
/// let w = Word::from("rights");
/// assert_eq!(w.as_str(), "rights");
/// assert_eq!(Word::from("x".repeat(40).as_str()).as_str().len(), 40);
/// ```
#[derive(Clone)]
pub struct Word(Repr);

/// A `Word`: 24 bytes with no tag of its own, since an inline word's `hi` is never zero and a
/// heap word is told by a zero there (the compiler puts the `Box<str>` in `lo`'s bytes).
#[derive(Clone)]
enum Repr {
    Inline(Inline),
    Heap(Box<str>),
}

/// An inline word, in two pieces that are each written with one store: `lo` with one 16-byte
/// store, `hi` with one 8-byte store. The engine moves a `Word` (inside a message, out of the
/// state operator) in pieces of those sizes at those offsets, and a load that straddles two
/// smaller stores cannot take its bytes from them: it waits until they reach the cache. With
/// a length byte and 22 bytes written as three overlapping 8-byte pieces, the moves in
/// `StateOp::data` had 40% of its samples (perf, cpu-clock, `bench word-count --shards 1`).
///
/// Invariant: in memory order the 24 bytes are the word's bytes, zeros up to byte 22, and the
/// length plus one (1 to 23) in byte 23, so `hi` is never zero, the bytes `..len` are the text
/// (copied whole from a `&str`, so valid UTF-8), and two inline words are equal exactly when
/// their `lo` and `hi` are.
#[derive(Clone, Copy, PartialEq, Eq, bytemuck::NoUninit)]
#[repr(C)]
struct Inline {
    lo: [u8; 16],
    hi: NonZeroU64,
}

impl Inline {
    /// The word whose first 16 bytes are `lo` and whose bytes 16..22 are the low 6 bytes of
    /// `hi` (little-endian values), already zero after its `len` (at most [`INLINE`]) bytes.
    #[inline(always)]
    fn new(lo: u128, hi: u64, len: usize) -> Inline {
        let hi = hi | ((len as u64 + 1) << 56);
        Inline {
            lo: whole(lo),
            // Stored in memory order (the little-endian bytes of `hi`). Never zero: its last
            // byte is the length plus one, so the fallback is never taken.
            hi: NonZeroU64::new(u64::from_ne_bytes(hi.to_le_bytes())).unwrap_or(NonZeroU64::MAX),
        }
    }

    /// The 24 bytes in memory order (see the invariant).
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        bytemuck::bytes_of(self)
    }

    /// The word's length.
    #[inline(always)]
    fn len(&self) -> usize {
        // Byte 23 in memory order: the last of `hi`'s bytes as stored.
        usize::from(self.hi.get().to_ne_bytes()[7].saturating_sub(1))
    }

    /// The word's bytes 0..16 and 16..22 as little-endian values (zeros after the word).
    #[inline(always)]
    fn pieces(&self) -> (u128, u64) {
        let hi = u64::from_le_bytes(self.hi.get().to_ne_bytes());
        (u128::from_le_bytes(self.lo), hi & HI_WORD_BYTES)
    }
}

/// The bits of `hi` (as a little-endian value) that hold word bytes 16..22.
const HI_WORD_BYTES: u64 = (1 << 48) - 1;

impl Word {
    /// The word as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(w) => {
                let b = w.bytes().get(..w.len()).unwrap_or_default();
                // SAFETY: the `Inline` invariant: the bytes `..len` were copied whole from a
                // `&str` (`Word::from` and `Word::cut` are the only constructors), so they are
                // valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Heap(s) => s,
        }
    }

    /// The word `text[start..end]` (a range on char boundaries). When `text` has
    /// [`INLINE`] bytes from `start` on, they are loaded as two fixed-size pieces (no call to
    /// `memcpy`, no zeroing) and masked to the word's length.
    #[inline]
    fn cut(text: &str, start: usize, end: usize) -> Word {
        let len = end - start;
        match text.as_bytes().get(start..start + INLINE) {
            Some(block) if len <= INLINE => {
                let mut hi = [0u8; 8];
                hi.copy_from_slice(&block[INLINE - 8..]);
                // Bytes 14..22 shifted down to 16..22.
                let hi = u64::from_le_bytes(hi) >> 16;
                let (mlo, mhi) = MASKS[len];
                Word(Repr::Inline(Inline::new(
                    load16(&block[..16]) & mlo,
                    hi & mhi,
                    len,
                )))
            }
            _ => Word::from(&text[start..end]),
        }
    }
}

/// For each word length up to [`INLINE`], the masks that keep the word's bytes of `lo` and of
/// `hi` (as little-endian values) and clear the rest.
static MASKS: [(u128, u64); INLINE + 1] = {
    let mut masks = [(0u128, 0u64); INLINE + 1];
    let mut len = 0;
    while len <= INLINE {
        masks[len].0 = if len >= 16 {
            u128::MAX
        } else {
            (1u128 << (8 * len)) - 1
        };
        masks[len].1 = if len > 16 {
            (1u64 << (8 * (len - 16))) - 1
        } else {
            0
        };
        len += 1;
    }
    masks
};

impl From<&str> for Word {
    #[inline]
    fn from(s: &str) -> Word {
        // `cut` comes here for the words that end a text (fewer than 22 bytes left after them),
        // so at least once a line: the pieces are made in registers (`pieces::short`), as the
        // rest of the type's are, not loaded from a stack copy of the word's own length. No
        // measurable change at that rate (callgrind per line 11297 -> 11284).
        let b = s.as_bytes();
        if b.len() <= INLINE {
            let (lo, hi) = match b.split_at_checked(16) {
                Some((lo, hi)) => (load16(lo), short(hi) as u64),
                None => (short(b), 0),
            };
            Word(Repr::Inline(Inline::new(lo, hi, b.len())))
        } else {
            Word(Repr::Heap(s.into()))
        }
    }
}

impl From<Word> for String {
    fn from(w: Word) -> String {
        w.as_str().to_string()
    }
}

impl std::ops::Deref for Word {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Two inline words compare as their two pieces (the length is in `hi`); a word's form follows
/// from its length (inline up to 22 bytes, heap beyond), so an inline and a heap word always
/// differ.
///
/// Why: `Word` is the state map's key (`key_by` hands the map the `Word` itself, not its
/// `&str`). As `&str`, hashing the word's bytes and the `memcmp` call that compared it with the
/// entry found cost about 50 of the 553 instructions per output of `bench word-count` on
/// 1 shard (callgrind of the source task: `hash_one` 26.7, `memcmp` and slice compare 23).
impl PartialEq for Word {
    #[inline(always)]
    fn eq(&self, other: &Word) -> bool {
        match (&self.0, &other.0) {
            (Repr::Inline(x), Repr::Inline(y)) => x == y,
            (Repr::Heap(x), Repr::Heap(y)) => x == y,
            _ => false,
        }
    }
}

impl Eq for Word {}

/// Consistent with `eq`: an inline word hashes its two pieces (the zero padding makes them a
/// function of the text), a heap word its text.
impl std::hash::Hash for Word {
    #[inline(always)]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Inline(w) => {
                let (lo, hi) = w.pieces();
                state.write_u64(lo as u64);
                state.write_u64((lo >> 64) as u64);
                state.write_u64(hi);
            }
            Repr::Heap(s) => s.hash(state),
        }
    }
}

/// The key a word's state is kept under: placed (key group, shard) by the same stable hash as
/// its text, so state and checkpoints are where a `&str` key put them.
impl Key for Word {
    fn stable_hash(&self) -> u64 {
        self.as_str().stable_hash()
    }
}

/// Written as its text: a checkpoint holds the same bytes as for a `String` key.
impl serde::Serialize for Word {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Word {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
        Ok(Word::from(String::deserialize(d)?.as_str()))
    }
}

impl PartialEq<&str> for Word {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The words of a text by the rules above, one [`Word`] each, as an iterator that owns the
/// text: the pipeline's `to_many` takes it as it is, with no `Vec` per line.
///
/// The rules come down to: pieces between spaces and newlines, ASCII punctuation stripped from
/// both ends of each, empty ones skipped, lowercased. Stripping a line first changes nothing
/// (its end pieces are stripped anyway), and neither does lowercasing before splitting: no
/// character lowercases to a space, a newline or ASCII punctuation, and a line break or space
/// ends the context of Greek final sigma. So the text is lowercased whole, once, before it is
/// split: an ASCII text in place (a loop the compiler vectorises), any other into a new
/// `String`. Lowercasing each word as it was cut cost 43 instructions per word of
/// `bench word-count` (callgrind, 1 shard); in place over the line, about 3.
///
/// Why: `split` lowercased each line into a new `String`, found punctuation with `str::contains`
/// per character and collected into a `Vec` per line (`benches/word_split.rs`).
///
/// ```
/// use bettong_apps::word_count::Words;
/// let w: Vec<String> = Words::new("Ünïcode, ASCII!".to_string()).map(String::from).collect();
/// assert_eq!(w, ["ünïcode", "ascii"]);
/// ```
pub struct Words {
    text: String,
    /// Where the next piece starts looking, in bytes.
    at: usize,
}

impl Words {
    /// The words of `text`.
    pub fn new(mut text: String) -> Words {
        if text.is_ascii() {
            text.make_ascii_lowercase();
        } else {
            text = text.to_lowercase();
        }
        Words { text, at: 0 }
    }
}

/// What each byte is to the splitter: a piece ends at a space or a newline ([`SEP`]); ASCII
/// punctuation ([`STRIP`]) is cut from the ends of a piece; everything else, non-ASCII bytes
/// included, is part of a word ([`WORD`]).
const WORD: u8 = 0;
const STRIP: u8 = 1;
const SEP: u8 = 2;
static CLASS: [u8; 256] = {
    let mut class = [WORD; 256];
    let mut b = 0;
    while b < 256 {
        if b == b' ' as usize || b == b'\n' as usize {
            class[b] = SEP;
        } else if is_strip(b as u8) {
            class[b] = STRIP;
        }
        b += 1;
    }
    class
};

impl Iterator for Words {
    type Item = Word;

    /// One pass over the bytes with a table lookup each: skip separators and punctuation up
    /// to the first word byte, then run to the next separator, remembering the last word byte.
    /// That is the rules above (a piece of punctuation only is skipped; a piece's inner
    /// punctuation stays). Why: finding the separator, then the first and the last kept byte
    /// with three scans cost 195 instructions per word of `bench word-count` (callgrind,
    /// 1 shard, allocation not counted).
    ///
    /// Inlined into the operator's loop over the words: called, it saved six registers and
    /// returned the `Word` through memory, about 20 of its 106 instructions per word (the
    /// whole frame path 516.9 -> 497.7 per output with the block splitter, 519.6 -> 503.2
    /// with this one).
    #[inline]
    fn next(&mut self) -> Option<Word> {
        let bytes = self.text.as_bytes();
        let mut i = self.at;
        while i < bytes.len() && CLASS[bytes[i] as usize] != WORD {
            i += 1;
        }
        if i >= bytes.len() {
            self.at = bytes.len();
            return None;
        }
        let first = i;
        let mut end = i + 1;
        i += 1;
        while i < bytes.len() {
            match CLASS[bytes[i] as usize] {
                WORD => end = i + 1,
                SEP => break,
                _ => {}
            }
            i += 1;
        }
        self.at = i;
        // `first` and `end` are next to ASCII bytes (or the text's ends), so on char
        // boundaries: a word byte after an ASCII byte starts a character.
        Some(Word::cut(&self.text, first, end))
    }
}

/// Writes `word => count\n`.
///
/// ```
/// use bettong_apps::word_count::{encode, WordCount};
/// let mut out = Vec::new();
/// encode(&WordCount { word: "rights".into(), count: 3 }, &mut out);
/// assert_eq!(out, b"rights => 3\n");
/// ```
pub fn encode(wc: &WordCount, out: &mut Vec<u8>) {
    match &wc.word.0 {
        Repr::Inline(w) if wc.count < TAIL_IN_REGISTER => encode_in_registers(w, wc.count, out),
        _ => encode_in_memory(wc, out),
    }
}

/// Counts below this have at most 11 digits, so " => ", the digits and "\n" fit in 16 bytes.
const TAIL_IN_REGISTER: u64 = 100_000_000_000;

/// An inline word and a count below [`TAIL_IN_REGISTER`]: the word's bytes go out as a
/// 48-byte block of whole 16-byte pieces (zeros after the word), the tail is stored over the
/// block at the word's end with one 16-byte store, and the line is cut back to its length.
/// [`encode_in_memory`] built the tail with 1- and 2-byte stores and copied it in 16-byte
/// loads, which straddled them (failed store-to-load forwards: half of `encode`'s samples,
/// perf, cpu-clock, `bench word-count --shards 1`).
#[inline(always)]
fn encode_in_registers(word: &Inline, count: u64, out: &mut Vec<u8>) {
    let (tail, tail_len) = tail_bits(count);
    let len = word.len().min(INLINE);
    // The word's bytes 0..16 and 16..22 (zeros after the word: the `Inline` invariant).
    let (w0, hi) = word.pieces();
    let w1 = u128::from(hi);
    let mut block = [0u8; 48];
    block[..16].copy_from_slice(&whole(w0));
    block[16..32].copy_from_slice(&whole(w1));
    let start = out.len();
    out.extend_from_slice(&block);
    // Over zeros: the block holds nothing after the word's `len` bytes (at most 22, so the
    // tail's 16 bytes end within the block).
    out[start + len..start + len + 16].copy_from_slice(&whole(tail));
    out.truncate(start + len + tail_len);
}

/// " => ", the count's digits and "\n" as one little-endian value, and their length (at most
/// 16: `count` is below [`TAIL_IN_REGISTER`]). The digits are made two at a time from the
/// right, each pair shifted in below the ones made before it.
#[inline(always)]
fn tail_bits(count: u64) -> (u128, usize) {
    let pair = |r: usize| u128::from(u16::from_le_bytes([DIGIT_PAIRS[r], DIGIT_PAIRS[r + 1]]));
    let mut n = count;
    let mut digits = 0u128;
    let mut d = 0;
    while n >= 100 {
        digits = digits << 16 | pair((n % 100) as usize * 2);
        n /= 100;
        d += 2;
    }
    if n >= 10 {
        digits = digits << 16 | pair(n as usize * 2);
        d += 2;
    } else {
        digits = digits << 8 | u128::from(b'0' + n as u8);
        d += 1;
    }
    let arrow = u128::from(u32::from_le_bytes(*b" => "));
    (
        arrow | digits << 32 | u128::from(b'\n') << (32 + 8 * d),
        5 + d,
    )
}

/// Any word and count: the tail built in a stack buffer.
fn encode_in_memory(wc: &WordCount, out: &mut Vec<u8>) {
    // Everything after the word (" => ", at most 20 digits, "\n") is built back to front in
    // one stack buffer, two digits per division. Why: the digit-by-digit loop and five
    // appends, each checking the capacity, cost 162 instructions per output of
    // `bench word-count` (callgrind, 1 shard); this is fewer than half of that.
    //
    // The tail ends at byte 32 of a 64-byte buffer, so the 32 bytes from wherever it starts
    // can be moved as one block. An inline word and its tail are put together in a stack
    // line as two fixed-size blocks and the whole line is appended, then cut back to its
    // length: fixed-size copies are a few register moves, where appending the word and the
    // tail as slices of their own lengths made two `memcpy` calls, 31 of the 117 instructions
    // per output that `encode` cost (callgrind, 1 shard, with the grown `Vec` path).
    const END: usize = 32;
    let mut tail = [0u8; 2 * END];
    let mut i = END - 1;
    tail[i] = b'\n';
    let mut n = wc.count;
    while n >= 100 {
        let r = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        tail[i..i + 2].copy_from_slice(&DIGIT_PAIRS[r..r + 2]);
    }
    if n >= 10 {
        let r = n as usize * 2;
        i -= 2;
        tail[i..i + 2].copy_from_slice(&DIGIT_PAIRS[r..r + 2]);
    } else {
        i -= 1;
        tail[i] = b'0' + n as u8;
    }
    i -= 4;
    tail[i..i + 4].copy_from_slice(b" => ");
    match &wc.word.0 {
        Repr::Inline(w) => {
            let len = w.len().min(INLINE);
            let mut line = [0u8; INLINE + END];
            line[..INLINE].copy_from_slice(&w.bytes()[..INLINE]);
            line[len..len + END].copy_from_slice(&tail[i..i + END]);
            let end = out.len() + len + END - i;
            out.extend_from_slice(&line);
            out.truncate(end);
        }
        Repr::Heap(word) => {
            out.reserve(word.len() + END - i);
            out.extend_from_slice(word.as_bytes());
            out.extend_from_slice(&tail[i..END]);
        }
    }
}

/// "00", "01", … "99": the decimal digits of every number below 100.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// The word count application.
///
/// ```
/// let app = bettong_apps::word_count::application();
/// assert_eq!(app.source_names(), ["Text"]);
/// ```
pub fn application() -> Application {
    let pipeline = Pipeline::source(SOURCE, TcpSource::new(decode))
        .to_many(Words::new)
        .name("split")
        .key_by(|word: &Word| word)
        .to_state(|word: Word, total: &mut WordTotal| {
            total.count += 1;
            Some(WordCount {
                word,
                count: total.count,
            })
        })
        .name("count words")
        .to_sink("Counts", TcpSink::new(encode));
    Application::new("word count", pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_punctuation_and_skips_empty_words() {
        assert_eq!(split("  --  "), Vec::<String>::new());
        assert_eq!(split("a  b"), ["a", "b"]);
        assert_eq!(
            split("Congress shall make no law;\nrespecting"),
            ["congress", "shall", "make", "no", "law", "respecting"]
        );
        assert_eq!(split("ÉTAT-civil."), ["état-civil"]);
    }

    /// The splitter gives what the rules as first written give (lowercase each line, strip
    /// space and punctuation from it, split on single spaces, strip each piece), on the Bill
    /// of Rights, on mixed text with non-ASCII letters and final sigma, and on odd spacing.
    #[test]
    fn same_words_as_the_rules_as_written() {
        fn as_written(text: &str) -> Vec<String> {
            const STRIP: &str = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
            let strip = |c: char| STRIP.contains(c);
            let mut words = Vec::new();
            for line in text.split('\n') {
                let line = line.to_lowercase();
                for piece in line.trim_matches(strip).split(' ') {
                    let word = piece.trim_matches(strip);
                    if !word.is_empty() {
                        words.push(word.to_string());
                    }
                }
            }
            words
        }
        let texts = [
            BILL_OF_RIGHTS,
            "ΟΔΟΣ. ΟΔΟΣ'Α (ΣΑΣ) Σ\nΣΑΣ, İstanbul KELVIN \u{212a} ÉTAT-civil.",
            "  a  \n\n--b--\r\n 'c' ...  \t tab",
            "",
            "\n",
            "-",
        ];
        for t in texts {
            assert_eq!(split(t), as_written(t), "{t:?}");
        }
    }

    /// Words up to 22 bytes are inline (cut as a fixed block from a longer text, or copied from
    /// a short one), longer ones on the heap; all read back whole, non-ASCII included.
    #[test]
    fn words_read_back_inline_and_on_the_heap() {
        let texts = [
            String::new(),
            "a".to_string(),
            "état-civil".to_string(),
            "x".repeat(22),
            "é".repeat(11),
            "y".repeat(23),
            "ünïcode".repeat(9),
        ];
        for text in &texts {
            let w = Word::from(text.as_str());
            assert_eq!(w.as_str(), text);
            assert_eq!(w.clone(), w);
            assert_eq!(String::from(w), *text);
            // Cut from the front of a longer text (the fixed-block path) and at its very end.
            let long = format!("{text}{}", " pad".repeat(8));
            assert_eq!(Word::cut(&long, 0, text.len()).as_str(), text);
            let tail = format!("ab {text}");
            assert_eq!(Word::cut(&tail, 3, tail.len()).as_str(), text);
        }
        assert_eq!(std::mem::size_of::<Word>(), std::mem::size_of::<String>());
        let long: Vec<String> = Words::new(format!("{} b", "Q".repeat(30)))
            .map(String::from)
            .collect();
        assert_eq!(long, ["q".repeat(30), "b".to_string()]);
    }

    /// A word cut from different texts (different bytes after it, the fixed-block cut and the
    /// copy) is one key: equal, same hash; words that differ only in length or in their last
    /// byte, and inline against heap, are not.
    #[test]
    fn words_are_keys_whatever_they_were_cut_from() {
        use std::hash::BuildHasher;
        let fixed = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
        let h = |w: &Word| fixed.hash_one(w);
        for len in 0..=30 {
            let text = "abcdefghijklmnopqrstuvwxyz0123456789"[..len].to_string();
            let plain = Word::from(text.as_str());
            for pad in [
                "",
                " ",
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                " \u{ff}\u{ff}\u{ff}\u{ff}",
            ] {
                let long = format!("--{text}{pad}");
                let cut = Word::cut(&long, 2, 2 + len);
                assert_eq!(cut, plain, "{long:?}");
                assert_eq!(h(&cut), h(&plain), "{long:?}");
                assert_eq!(cut.stable_hash(), text.as_str().stable_hash());
            }
            if len > 0 {
                let shorter = Word::from(&text[..len - 1]);
                assert_ne!(shorter, plain);
                let mut other = text.clone().into_bytes();
                other[len - 1] = b'!';
                let other = String::from_utf8(other).unwrap();
                assert_ne!(Word::from(other.as_str()), plain);
            }
        }
        assert_ne!(
            Word::from("x".repeat(22).as_str()),
            Word::from("x".repeat(23).as_str())
        );
    }

    /// Every word length, inline (the fixed-block line, appended and cut back) and heap, after
    /// bytes already in the buffer, with counts of 1 to 20 digits: as `format!` writes them.
    #[test]
    fn encodes_every_word_length_after_earlier_output() {
        let mut out = b"earlier\n".to_vec();
        let mut expected = out.clone();
        for len in 0..=40 {
            let text: String = "abcdefghij\u{e9}klmnopqrstuvwxyz0123456789"
                .chars()
                .take(len)
                .collect();
            for count in [0, 9, 10, 99, 100, 12_345, u64::MAX] {
                let word = Word::from(text.as_str());
                encode(&WordCount { word, count }, &mut out);
                expected.extend_from_slice(format!("{text} => {count}\n").as_bytes());
                assert_eq!(out, expected, "{text:?} {count}");
            }
        }
    }

    #[test]
    fn encodes_counts() {
        let mut out = Vec::new();
        for count in [0, 7, 10, 99, 100, 1_000, 12_345, 18_446_744_073_709_551_615] {
            encode(
                &WordCount {
                    word: "w".into(),
                    count,
                },
                &mut out,
            );
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "w => 0\nw => 7\nw => 10\nw => 99\nw => 100\nw => 1000\nw => 12345\n\
             w => 18446744073709551615\n"
        );
        // Every count up to 100 000, and the powers of ten around each digit count, read as
        // `format!` writes them.
        let mut counts: Vec<u64> = (0..=100_000).collect();
        for d in 1..20 {
            let p = 10u64.pow(d);
            counts.extend([p - 1, p, p + 1]);
        }
        let mut out = Vec::new();
        for count in counts {
            for text in [
                "longer-word",
                "a-word-of-exactly-22-b",
                "a-word-longer-than-inline",
            ] {
                out.clear();
                let word = Word::from(text);
                encode(&WordCount { word, count }, &mut out);
                assert_eq!(out, format!("{text} => {count}\n").as_bytes());
            }
        }
    }
}
