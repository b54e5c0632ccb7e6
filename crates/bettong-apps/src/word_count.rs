//! Word count, as Wallaroo's Python example: every framed message is UTF-8 text; each word gets
//! a running count, emitted as the unframed line `word => count\n` every time the word is seen.
//!
//! Splitting follows the Python example (reference §9): split on `\n`, lowercase the line,
//! strip space and ASCII punctuation from both ends, split on single spaces, strip the same
//! characters from each piece. Unlike the Python example, empty pieces are skipped.

use bettong::codec::DecodeError;
use bettong::{Application, Pipeline, TcpSink, TcpSource};

/// The Bill of Rights, Wallaroo's word-count text: one line per message in `bench word-count`.
pub const BILL_OF_RIGHTS: &str = include_str!("bill_of_rights.txt");

/// The application's only source.
pub const SOURCE: &str = "Text";

/// Space and ASCII punctuation: what is stripped from lines and words.
const STRIP: &str = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

fn is_strip(c: char) -> bool {
    STRIP.contains(c)
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
    pub word: String,
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
    let mut words = Vec::new();
    for line in text.split('\n') {
        let line = line.to_lowercase();
        for piece in line.trim_matches(is_strip).split(' ') {
            let word = piece.trim_matches(is_strip);
            if !word.is_empty() {
                words.push(word.to_string());
            }
        }
    }
    words
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
    out.extend_from_slice(wc.word.as_bytes());
    out.extend_from_slice(b" => ");
    let mut digits = [0u8; 20];
    let mut n = wc.count;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.push(b'\n');
}

/// The word count application.
///
/// ```
/// let app = bettong_apps::word_count::application();
/// assert_eq!(app.source_names(), ["Text"]);
/// ```
pub fn application() -> Application {
    let pipeline = Pipeline::source(SOURCE, TcpSource::new(decode))
        .to_many(|text: String| split(&text))
        .name("split")
        .key_by(|word: &String| word.as_str())
        .to_state(|word: String, total: &mut WordTotal| {
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

    #[test]
    fn encodes_counts() {
        let mut out = Vec::new();
        for count in [0, 7, 10, 18_446_744_073_709_551_615] {
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
            "w => 0\nw => 7\nw => 10\nw => 18446744073709551615\n"
        );
    }
}
