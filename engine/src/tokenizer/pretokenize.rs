//! Pre-tokenizer: splits text into pieces before byte-level BPE.

use fancy_regex::Regex;

/// The LLaMA-3 split pattern (`tokenizer.ggml.pre` = `llama-bpe`), identical to the `Split`
/// pre-tokenizer in LLaMA-3's `tokenizer.json`. The `\s+(?!\S)` branch leaves the last
/// whitespace character of a run in front of a word so it can join that word (`"  x"` ->
/// `" "`, `" x"`).
///
/// The tokenizer does not run this pattern directly: a backtracking engine needs stack
/// proportional to a whitespace run for the look-ahead (fancy-regex gives up on ~1 MB of
/// spaces). It runs the pattern without the `\s+(?!\S)` branch (no look-around, so
/// linear-time automata) and emulates that branch afterwards; tests check the two agree.
pub const LLAMA3_PATTERN: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// [`LLAMA3_PATTERN`] without the `\s+(?!\S)` branch.
pub(crate) const LLAMA3_PATTERN_NO_LOOKAHEAD: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

/// LLaMA-3 pre-tokenizer.
pub(crate) struct PreTokenizer {
    re: Regex,
}

impl PreTokenizer {
    pub(crate) fn llama3() -> Result<Self, String> {
        let re = Regex::new(LLAMA3_PATTERN_NO_LOOKAHEAD).map_err(|e| e.to_string())?;
        Ok(PreTokenizer { re })
    }

    /// Calls `f` with every piece of `text`, in order; the pieces concatenate to `text`.
    ///
    /// Emulation of `\s+(?!\S)`: in the full pattern a whitespace-only match without
    /// `\r`/`\n` can only come from the last two branches, and then it is the maximal
    /// whitespace run at that position. If that run is followed by a non-space character
    /// and has at least two characters, the look-ahead branch matches all but its last
    /// character (which then starts the next match); otherwise the whole run matches.
    pub(crate) fn split<F: FnMut(&str)>(&self, text: &str, mut f: F) -> Result<(), String> {
        let mut pos = 0;
        while pos < text.len() {
            let m = match self
                .re
                .find_from_pos(text, pos)
                .map_err(|e| e.to_string())?
            {
                Some(m) => m,
                None => break,
            };
            if m.start() > pos {
                // Not reachable with this pattern (it matches every character), kept so
                // no input text is ever dropped.
                f(&text[pos..m.start()]);
            }
            let piece = m.as_str();
            let mut end = m.end();
            if end < text.len()
                && piece
                    .chars()
                    .all(|c| c.is_whitespace() && c != '\r' && c != '\n')
            {
                if let Some((last, _)) = piece.char_indices().last() {
                    if last > 0 {
                        end = m.start() + last;
                    }
                }
            }
            if end == m.start() {
                // Empty match: impossible with this pattern; step over one char to progress.
                end = text[end..]
                    .chars()
                    .next()
                    .map_or(text.len(), |c| end + c.len_utf8());
            }
            f(&text[m.start()..end]);
            pos = end;
        }
        if pos < text.len() {
            f(&text[pos..]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<String> {
        let p = PreTokenizer::llama3().unwrap();
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
        assert_eq!(pieces(" "), [" "]);
        assert_eq!(pieces("\u{3000}\u{3000}x"), ["\u{3000}", "\u{3000}x"]);
    }

    /// Splits with the exact pattern (look-ahead run by fancy-regex's backtracking VM).
    fn reference(re: &Regex, text: &str) -> Vec<String> {
        re.find_iter(text)
            .map(|m| m.unwrap().as_str().to_string())
            .collect()
    }

    #[test]
    fn emulation_matches_lookahead_pattern() {
        let pool: Vec<char> =
            " \t\n\r\u{a0}\u{3000}\u{2028}\u{85}\u{b}aZé日1٣'sStTmMlLdD.,!-(\"🚀\u{200d}"
                .chars()
                .collect();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let exact = Regex::new(LLAMA3_PATTERN).unwrap();
        let p = PreTokenizer::llama3().unwrap();
        for _ in 0..20000 {
            let len = next(24);
            let text: String = (0..len).map(|_| pool[next(pool.len())]).collect();
            let mut got = Vec::new();
            p.split(&text, |s| got.push(s.to_string())).unwrap();
            assert_eq!(got, reference(&exact, &text), "splitting {text:?}");
        }
    }

    #[test]
    fn long_whitespace_run() {
        let text = format!("{}x", " ".repeat(1 << 20));
        let p = pieces(&text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].len(), (1 << 20) - 1);
        assert_eq!(p[1], " x");
    }
}
