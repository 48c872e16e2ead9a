//! LLaMA-3 byte-level BPE tokenizer built from GGUF tokenizer metadata.
//!
//! The tokenizer is built from the values a GGUF file carries (see [`TokenizerConfig`]);
//! this module does no file I/O. Supported: `tokenizer.ggml.model = "gpt2"` with
//! `tokenizer.ggml.pre` one of `llama-bpe`, `llama3`, `llama-v3` (LLaMA-3, BitNet b1.58 2B4T).
//!
//! Encoding follows the Hugging Face `tokenizers` pipeline of LLaMA-3's `tokenizer.json`:
//! 1. optional split on special tokens written in the text ([`Tokenizer::encode_with_special`]);
//! 2. the LLaMA-3 regex split ([`LLAMA3_PATTERN`], look-ahead branch emulated in linear time);
//! 3. byte-level mapping of each piece (`" "` -> `Ġ`, ...);
//! 4. if the mapped piece is itself a vocabulary entry it becomes that one token
//!    (LLaMA-3's `ignore_merges`), otherwise BPE merges are applied in rank order.
//!
//! Decoding is lossless at the byte level; invalid UTF-8 is replaced by U+FFFD only when
//! a `String` is produced. No "clean-up of tokenization spaces" is performed.

mod bpe;
mod bytelevel;
mod pretokenize;

pub use pretokenize::LLAMA3_PATTERN;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use bpe::Merges;
use bytelevel::ByteLevel;
use pretokenize::PreTokenizer;

/// GGUF `tokenizer.ggml.token_type` values.
pub mod token_type {
    /// Ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// Unknown-token placeholder.
    pub const UNKNOWN: i32 = 2;
    /// Control / special token (`<|eot_id|>`, ...).
    pub const CONTROL: i32 = 3;
    /// User-defined token, matched literally in text.
    pub const USER_DEFINED: i32 = 4;
    /// Unused slot.
    pub const UNUSED: i32 = 5;
    /// Raw byte token (SentencePiece style).
    pub const BYTE: i32 = 6;
}

/// Tokenizer description as stored in GGUF metadata (`tokenizer.ggml.*` keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`; `"llama-bpe"` (also `"llama3"`, `"llama-v3"`) is supported.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id, in byte-level form (`"Ġworld"`).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`, `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type` (see [`token_type`]). When absent, tokens shaped like
    /// `<|...|>` are treated as control tokens.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.chat_template` (kept for [`crate::chat::ChatTemplate::detect`]).
    pub chat_template: Option<String>,
}

/// Errors building or using a [`Tokenizer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` is not `"gpt2"`.
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` is missing or not a supported pre-tokenizer.
    UnsupportedPre(Option<String>),
    /// `tokenizer.ggml.tokens` is empty.
    EmptyVocab,
    /// The vocabulary has more entries than `u32` ids can address.
    VocabTooLarge(usize),
    /// `token_type` length differs from the number of tokens.
    TokenTypeCount { tokens: usize, types: usize },
    /// A merge is not of the form `"left right"`.
    MalformedMerge { index: usize, merge: String },
    /// A merge names a token that is not in the vocabulary.
    MergeUnknownToken { index: usize, token: String },
    /// The concatenation of a merge's two sides is not in the vocabulary.
    MergeResultUnknown { index: usize, merged: String },
    /// The vocabulary lacks the byte-level token for a byte, so some text is unencodable.
    MissingByteToken(u8),
    /// A special-token id from the metadata is outside the vocabulary.
    SpecialIdOutOfRange {
        name: &'static str,
        id: u32,
        vocab_size: usize,
    },
    /// `add_bos` was requested but there is no BOS token.
    NoBosToken,
    /// The split regex failed to compile or gave up on an input (backtracking limit).
    Regex(String),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TokenizerError::*;
        match self {
            UnsupportedModel(m) => write!(
                f,
                "unsupported tokenizer.ggml.model {m:?} (only \"gpt2\" byte-level BPE is supported)"
            ),
            UnsupportedPre(None) => write!(
                f,
                "missing tokenizer.ggml.pre (supported: {})",
                SUPPORTED_PRE.join(", ")
            ),
            UnsupportedPre(Some(p)) => write!(
                f,
                "unsupported tokenizer.ggml.pre {p:?} (supported: {})",
                SUPPORTED_PRE.join(", ")
            ),
            EmptyVocab => write!(f, "tokenizer.ggml.tokens is empty"),
            VocabTooLarge(n) => write!(f, "vocabulary of {n} tokens does not fit u32 ids"),
            TokenTypeCount { tokens, types } => write!(
                f,
                "tokenizer.ggml.token_type has {types} entries but there are {tokens} tokens"
            ),
            MalformedMerge { index, merge } => {
                write!(
                    f,
                    "merge #{index} {merge:?} is not of the form \"left right\""
                )
            }
            MergeUnknownToken { index, token } => {
                write!(f, "merge #{index} references unknown token {token:?}")
            }
            MergeResultUnknown { index, merged } => {
                write!(
                    f,
                    "merge #{index} produces {merged:?}, which is not in the vocabulary"
                )
            }
            MissingByteToken(b) => {
                write!(f, "vocabulary has no byte-level token for byte 0x{b:02X}")
            }
            SpecialIdOutOfRange {
                name,
                id,
                vocab_size,
            } => write!(
                f,
                "{name} id {id} is outside the vocabulary (size {vocab_size})"
            ),
            NoBosToken => write!(f, "a BOS token was requested but the vocabulary has none"),
            Regex(e) => write!(f, "pre-tokenizer regex error: {e}"),
        }
    }
}

impl std::error::Error for TokenizerError {}

/// Accepted `tokenizer.ggml.pre` values (all use the LLaMA-3 split pattern).
pub const SUPPORTED_PRE: &[&str] = &["llama-bpe", "llama3", "llama-v3"];

/// Names of control tokens that end generation (in addition to the EOS/EOT/EOM ids).
const STOP_TOKEN_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|im_end|>",
];

/// Bound on the BPE result cache (entries); the cache is cleared when it fills up.
const CACHE_CAPACITY: usize = 1 << 16;
/// Longer pieces (in byte-level UTF-8 bytes) are not cached.
const CACHE_MAX_PIECE: usize = 256;

/// A byte-level BPE tokenizer (LLaMA-3 flavour). Cheap to share: `Send + Sync`.
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<i32>,
    vocab: HashMap<String, u32>,
    /// Raw bytes each token decodes to (byte-level mapping undone; specials verbatim).
    token_bytes: Vec<Box<[u8]>>,
    /// Token id of each single byte.
    byte_ids: [u32; 256],
    merges: Merges,
    byte_level: ByteLevel,
    pre: PreTokenizer,
    /// Literal-matched tokens, grouped by first byte, longest first: (text, id, control?).
    specials: Vec<Vec<(Box<str>, u32, bool)>>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    add_bos: bool,
    stop: HashSet<u32>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .finish_non_exhaustive()
    }
}

fn looks_like_control(s: &str) -> bool {
    s.len() > 4 && s.starts_with("<|") && s.ends_with("|>")
}

/// The byte-level (GPT-2 style) vocabulary string of a single byte, as a byte token of a
/// `gpt2` tokenizer spells it (`b' '` is `"Ġ"`).
pub fn byte_token(b: u8) -> String {
    ByteLevel::new().char_of(b).to_string()
}

impl Tokenizer {
    /// Builds a tokenizer from GGUF tokenizer metadata.
    pub fn from_config(cfg: &TokenizerConfig) -> Result<Tokenizer, TokenizerError> {
        if cfg.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(cfg.model.clone()));
        }
        match cfg.pre.as_deref() {
            Some(p) if SUPPORTED_PRE.contains(&p) => {}
            other => return Err(TokenizerError::UnsupportedPre(other.map(str::to_owned))),
        }
        let n = cfg.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n > u32::MAX as usize - 1 {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        let types: Vec<i32> = match &cfg.token_types {
            Some(t) if t.len() != n => {
                return Err(TokenizerError::TokenTypeCount {
                    tokens: n,
                    types: t.len(),
                })
            }
            Some(t) => t.clone(),
            None => cfg
                .tokens
                .iter()
                .map(|s| {
                    if looks_like_control(s) {
                        token_type::CONTROL
                    } else {
                        token_type::NORMAL
                    }
                })
                .collect(),
        };

        // First occurrence wins for duplicate strings.
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in cfg.tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }

        let byte_level = ByteLevel::new();
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            let s = byte_level.char_of(b).to_string();
            byte_ids[b as usize] = *vocab.get(&s).ok_or(TokenizerError::MissingByteToken(b))?;
        }

        let mut merges = Merges::with_capacity(cfg.merges.len());
        let mut merged = String::new();
        for (index, m) in cfg.merges.iter().enumerate() {
            let (l, r) = m
                .split_once(' ')
                .filter(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains(' '))
                .ok_or_else(|| TokenizerError::MalformedMerge {
                    index,
                    merge: m.clone(),
                })?;
            let lookup = |t: &str| {
                vocab
                    .get(t)
                    .copied()
                    .ok_or_else(|| TokenizerError::MergeUnknownToken {
                        index,
                        token: t.to_owned(),
                    })
            };
            let (li, ri) = (lookup(l)?, lookup(r)?);
            merged.clear();
            merged.push_str(l);
            merged.push_str(r);
            let mi = *vocab
                .get(&merged)
                .ok_or_else(|| TokenizerError::MergeResultUnknown {
                    index,
                    merged: merged.clone(),
                })?;
            // n merges fit in u32 for any realistic vocabulary; saturate otherwise.
            merges.insert(li, ri, u32::try_from(index).unwrap_or(u32::MAX), mi);
        }

        let check = |name: &'static str, id: Option<u32>| match id {
            Some(i) if i as usize >= n => Err(TokenizerError::SpecialIdOutOfRange {
                name,
                id: i,
                vocab_size: n,
            }),
            _ => Ok(id),
        };
        let by_name = |s: &str| vocab.get(s).copied();
        let bos = check("bos", cfg.bos_token_id)?.or_else(|| by_name("<|begin_of_text|>"));
        let eos = check("eos", cfg.eos_token_id)?.or_else(|| by_name("<|end_of_text|>"));
        let eot = check("eot", cfg.eot_token_id)?.or_else(|| by_name("<|eot_id|>"));
        let eom = check("eom", cfg.eom_token_id)?.or_else(|| by_name("<|eom_id|>"));

        let mut token_bytes = Vec::with_capacity(n);
        let mut buf = Vec::new();
        for (t, &ty) in cfg.tokens.iter().zip(&types) {
            buf.clear();
            if ty == token_type::CONTROL || ty == token_type::USER_DEFINED {
                buf.extend_from_slice(t.as_bytes());
            } else {
                byte_level.decode_into(t, &mut buf);
            }
            token_bytes.push(buf.clone().into_boxed_slice());
        }

        let mut specials: Vec<Vec<(Box<str>, u32, bool)>> = vec![Vec::new(); 256];
        for (i, (t, &ty)) in cfg.tokens.iter().zip(&types).enumerate() {
            let control = ty == token_type::CONTROL;
            if (control || ty == token_type::USER_DEFINED) && !t.is_empty() {
                // Duplicate strings: only the id the vocabulary maps to is matched.
                if vocab.get(t) == Some(&(i as u32)) {
                    specials[t.as_bytes()[0] as usize].push((t.as_str().into(), i as u32, control));
                }
            }
        }
        for group in &mut specials {
            group.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }

        let mut stop: HashSet<u32> = [eos, eot, eom].into_iter().flatten().collect();
        for name in STOP_TOKEN_NAMES {
            if let Some(&id) = vocab.get(*name) {
                if types[id as usize] == token_type::CONTROL {
                    stop.insert(id);
                }
            }
        }

        let pre = PreTokenizer::llama3().map_err(TokenizerError::Regex)?;

        Ok(Tokenizer {
            tokens: cfg.tokens.clone(),
            types,
            vocab,
            token_bytes,
            byte_ids,
            merges,
            byte_level,
            pre,
            specials,
            bos,
            eos,
            eot,
            eom,
            add_bos: cfg.add_bos_token.unwrap_or(true),
            stop,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Encodes `text`; special-token strings in the text are treated as plain text.
    /// Prepends BOS when `add_bos` (error if there is none).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with_special(text, add_bos, false)
    }

    /// Encodes `text`. With `parse_special`, control tokens written in the text (e.g.
    /// `<|eot_id|>`) become their ids; user-defined tokens are always matched literally.
    /// At one position the longest matching token wins.
    pub fn encode_with_special(
        &self,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            out.push(self.bos.ok_or(TokenizerError::NoBosToken)?);
        }
        let bytes = text.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let found = self.specials[bytes[i] as usize]
                .iter()
                .find(|(s, _, control)| {
                    (parse_special || !control) && bytes[i..].starts_with(s.as_bytes())
                });
            match found {
                Some((s, id, _)) => {
                    // Specials start at a char boundary (their first byte is a lead byte
                    // or ASCII, as they are valid UTF-8), so slicing is safe.
                    self.encode_plain(&text[start..i], &mut out)?;
                    out.push(*id);
                    i += s.len();
                    start = i;
                }
                None => i += 1,
            }
        }
        self.encode_plain(&text[start..], &mut out)?;
        Ok(out)
    }

    /// Encodes text with no special-token handling.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let mut mapped = String::new();
        let mut ids = Vec::new();
        self.pre
            .split(text, |piece| {
                mapped.clear();
                self.byte_level.encode_into(piece.as_bytes(), &mut mapped);
                if let Some(&id) = self.vocab.get(&mapped) {
                    out.push(id);
                    return;
                }
                let cacheable = mapped.len() <= CACHE_MAX_PIECE;
                if cacheable {
                    if let Some(hit) = self.cache_lock().get(&mapped) {
                        out.extend_from_slice(hit);
                        return;
                    }
                }
                ids.clear();
                ids.extend(piece.bytes().map(|b| self.byte_ids[b as usize]));
                let from = out.len();
                self.merges.apply(&ids, out);
                if cacheable {
                    let mut cache = self.cache_lock();
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                    cache.insert(mapped.clone(), out[from..].to_vec());
                }
            })
            .map_err(TokenizerError::Regex)
    }

    /// The BPE cache. A poisoned lock only means another thread panicked while holding it;
    /// the map is still a valid cache, so keep using it.
    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u32>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decodes ids to text, keeping special tokens as their text (`<|eot_id|>`).
    /// Invalid UTF-8 becomes U+FFFD; unknown ids decode to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// Decodes ids to text; with `skip_special`, control tokens produce no text.
    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> String {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            buf.extend_from_slice(self.piece_bytes(id, skip_special));
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The bytes token `id` stands for (empty for a skipped control token, U+FFFD for an
    /// id outside the vocabulary).
    pub fn piece_bytes(&self, id: u32, skip_special: bool) -> &[u8] {
        match self.token_bytes.get(id as usize) {
            Some(b) => {
                if skip_special && self.types[id as usize] == token_type::CONTROL {
                    &[]
                } else {
                    b
                }
            }
            None => "\u{FFFD}".as_bytes(),
        }
    }

    /// BOS id (`<|begin_of_text|>`), from metadata or found by name.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// EOS id (`<|end_of_text|>`), from metadata or found by name.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn id (`<|eot_id|>`), from metadata or found by name.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// End-of-message id (`<|eom_id|>`), from metadata or found by name.
    pub fn eom_id(&self) -> Option<u32> {
        self.eom
    }

    /// Whether BOS should be added by default (`tokenizer.ggml.add_bos_token`, default true).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// Ids that end generation: EOS, EOT, EOM and control tokens named `<|eot_id|>`,
    /// `<|eom_id|>`, `<|end_of_text|>`, `<|endoftext|>`, `<|im_end|>`.
    pub fn stop_ids(&self) -> HashSet<u32> {
        self.stop.clone()
    }

    /// Whether `id` is a stop id (see [`Tokenizer::stop_ids`]).
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop.contains(&id)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The vocabulary string of `id` (byte-level form, e.g. `"Ġworld"`).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary string (byte-level form), if present.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// GGUF token type of `id` (see [`token_type`]).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.types.get(id as usize).copied()
    }

    /// Whether `id` is a control (special) token.
    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(token_type::CONTROL)
    }
}

/// Incremental decoder for generated tokens: feed one id at a time, get back the text that
/// became complete. Bytes of a UTF-8 sequence split across byte tokens are held back until
/// the sequence is complete; invalid bytes become U+FFFD. The concatenation of all
/// [`StreamDecoder::push`] results plus [`StreamDecoder::finish`] equals
/// [`Tokenizer::decode_with`] of the same ids.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    skip_special: bool,
}

impl StreamDecoder {
    /// New decoder; with `skip_special`, control tokens produce no text.
    pub fn new(skip_special: bool) -> Self {
        StreamDecoder {
            pending: Vec::new(),
            skip_special,
        }
    }

    /// Adds token `id` and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.pending
            .extend_from_slice(tokenizer.piece_bytes(id, self.skip_special));
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &after[bad.min(after.len())..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let len = self.pending.len();
        self.pending.drain(..len - keep);
        out
    }

    /// Flushes held-back bytes (an unfinished UTF-8 sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Whether bytes are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
