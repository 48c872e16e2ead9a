//! Pre-tokenizer: splits text into pieces before byte-level BPE.

use fancy_regex::Regex;

/// The LLaMA-3 split pattern (`tokenizer.ggml.pre` = `llama-bpe`), identical to the `Split`
/// pre-tokenizer in LLaMA-3's `tokenizer.json`. The `\s+(?!\S)` branch leaves the last
/// whitespace character of a run in front of a word so it can join that word (`"  x"` ->
/// `" "`, `" x"`), which is why a look-around capable engine is needed.
pub const LLAMA3_PATTERN: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// Compiled split regex.
pub(crate) struct PreTokenizer {
    re: Regex,
}

impl PreTokenizer {
    pub(crate) fn new(pattern: &str) -> Result<Self, String> {
        let re = Regex::new(pattern).map_err(|e| e.to_string())?;
        Ok(PreTokenizer { re })
    }

    /// Calls `f` with every piece of `text`, in order. Text between matches (which the
    /// LLaMA-3 pattern never leaves, but a pattern might) is passed as its own piece, so
    /// the pieces always concatenate back to `text`.
    pub(crate) fn split<F: FnMut(&str)>(&self, text: &str, mut f: F) -> Result<(), String> {
        let mut last = 0;
        for m in self.re.find_iter(text) {
            let m = m.map_err(|e| e.to_string())?;
            if m.start() > last {
                f(&text[last..m.start()]);
            }
            if m.end() > m.start() {
                f(m.as_str());
            }
            last = m.end();
        }
        if last < text.len() {
            f(&text[last..]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<String> {
        let p = PreTokenizer::new(LLAMA3_PATTERN).unwrap();
        let mut v = Vec::new();
        p.split(text, |s| v.push(s.to_string())).unwrap();
        v
    }

    #[test]
    fn llama3_split() {
        assert_eq!(
            pieces("Hello world! BitNet b1.58 runs."),
            ["Hello", " world", "!", " BitNet", " b", "1", ".", "58", " runs", "."]
        );
        // Contractions are case-insensitive and split off.
        assert_eq!(pieces("I'm DON'T"), ["I", "'m", " DON", "'T"]);
        // Digits in groups of at most three, never with a leading space.
        assert_eq!(pieces("x 1234567"), ["x", " ", "123", "456", "7"]);
        // Whitespace runs: the last space joins the following word.
        assert_eq!(pieces("a   b"), ["a", "  ", " b"]);
        // Trailing whitespace stays whole.
        assert_eq!(pieces("a   "), ["a", "   "]);
        // Newlines: whitespace up to and including the newline run is one piece.
        assert_eq!(pieces("a \n\n  b"), ["a", " \n\n", " ", " b"]);
        // Punctuation takes one optional leading space and trailing newlines.
        assert_eq!(pieces("x ...\n\ny"), ["x", " ...\n\n", "y"]);
        // A non-letter/non-digit char may prefix a letter run.
        assert_eq!(pieces("(abc) $x"), ["(abc", ")", " $", "x"]);
        assert_eq!(pieces("héllo wörld 日本語"), ["héllo", " wörld", " 日本語"]);
        assert_eq!(pieces(""), Vec::<String>::new());
    }
}
