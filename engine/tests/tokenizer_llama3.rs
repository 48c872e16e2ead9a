//! Checks the tokenizer against the real LLaMA-3 vocabulary.
//!
//! Needs LLaMA-3's `tokenizer.json` (not committed: 9 MB). It is looked up at
//! `$TERNFORGE_LLAMA3_TOKENIZER`, else at `<workspace>/target/testdata/llama3-tokenizer.json`,
//! which `scripts/fetch-testdata.sh` downloads. When missing the tests print `skipped: ...`
//! and pass, unless `TERNFORGE_REQUIRE_TESTDATA=1`, in which case they fail.
//!
//! The expected ids were computed with the PyPI `tokenizers` package (0.23.3) from the same
//! file (`encode_special_tokens = True`, `add_special_tokens = False`) and pinned here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use ternforge_engine::chat::{ChatMessage, ChatTemplate};
use ternforge_engine::tokenizer::{
    token_type, StreamDecoder, Tokenizer, TokenizerConfig, LLAMA3_PATTERN,
};

// ---------------------------------------------------------------------------------------
// Minimal JSON reader (enough for tokenizer.json; avoids a serde dependency).

#[derive(Debug)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }
    fn arr(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i).copied() {
            Some(b'{') => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    kv.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(kv));
                        }
                        _ => return Err(format!("bad object at byte {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(format!("bad array at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Json::Num)
                    .ok_or_else(|| format!("bad value at byte {start}"))
            }
            None => Err("unexpected end".into()),
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16)
            .map_err(|e| e.to_string())
    }
    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("bad escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut u = self.hex4()?;
                            if (0xD800..0xDC00).contains(&u) && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            char::from_u32(u).ok_or("bad \\u escape")?
                        }
                        _ => return Err(format!("bad escape at byte {}", self.i)),
                    };
                    let mut b = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.value()
}

// ---------------------------------------------------------------------------------------
// tokenizer.json -> GGUF-style TokenizerConfig (what convert_hf_to_gguf.py stores).

fn config_from_tokenizer_json(j: &Json) -> TokenizerConfig {
    let model = j.get("model").expect("model");
    let vocab = match model.get("vocab") {
        Some(Json::Obj(kv)) => kv,
        _ => panic!("model.vocab is not an object"),
    };
    let added = j.get("added_tokens").and_then(Json::arr).unwrap_or(&[]);
    let mut entries: Vec<(usize, String, i32)> = vocab
        .iter()
        .map(|(k, v)| {
            (
                v.num().expect("vocab id") as usize,
                k.clone(),
                token_type::NORMAL,
            )
        })
        .collect();
    for a in added {
        let id = a.get("id").and_then(Json::num).expect("added id") as usize;
        let content = a.get("content").and_then(Json::str).expect("content");
        let special = matches!(a.get("special"), Some(Json::Bool(true)));
        let ty = if special {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        entries.push((id, content.to_owned(), ty));
    }
    let n = entries.iter().map(|e| e.0 + 1).max().unwrap_or(0);
    let mut tokens = vec![String::new(); n];
    let mut types = vec![token_type::UNUSED; n];
    for (id, s, ty) in entries {
        tokens[id] = s;
        types[id] = ty;
    }
    let merges = model
        .get("merges")
        .and_then(Json::arr)
        .expect("merges")
        .iter()
        .map(|m| match m {
            Json::Str(s) => s.clone(),
            // Newer tokenizer.json files store merges as ["left", "right"].
            Json::Arr(p) => format!("{} {}", p[0].str().unwrap(), p[1].str().unwrap()),
            other => panic!("bad merge {other:?}"),
        })
        .collect();
    TokenizerConfig {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        tokens,
        merges,
        token_types: Some(types),
        bos_token_id: Some(128000),
        eos_token_id: Some(128001),
        eot_token_id: None,
        eom_token_id: None,
        add_bos_token: Some(true),
        chat_template: None,
    }
}

struct Fixture {
    tok: Tokenizer,
    split_regex: String,
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::env::var_os("TERNFORGE_LLAMA3_TOKENIZER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/testdata/llama3-tokenizer.json")
            });
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!(
                    "LLaMA-3 tokenizer.json not readable at {} ({e}); run scripts/fetch-testdata.sh \
                     or set TERNFORGE_LLAMA3_TOKENIZER",
                    path.display()
                );
                if std::env::var("TERNFORGE_REQUIRE_TESTDATA").as_deref() == Ok("1") {
                    panic!("TERNFORGE_REQUIRE_TESTDATA=1 but {msg}");
                }
                println!("skipped: {msg}");
                return None;
            }
        };
        let j = parse_json(&text).expect("tokenizer.json parses");
        let split_regex = j
            .get("pre_tokenizer")
            .and_then(|p| p.get("pretokenizers"))
            .and_then(Json::arr)
            .and_then(|a| a.first())
            .and_then(|s| s.get("pattern"))
            .and_then(|p| p.get("Regex"))
            .and_then(Json::str)
            .expect("Split regex")
            .to_owned();
        let cfg = config_from_tokenizer_json(&j);
        let t0 = Instant::now();
        let tok = Tokenizer::from_config(&cfg).expect("tokenizer builds");
        println!("built LLaMA-3 tokenizer in {:?}", t0.elapsed());
        Some(Fixture { tok, split_regex })
    })
    .as_ref()
}

/// (text, ids) pairs from the PyPI `tokenizers` package, special tokens not parsed.
const CASES: &[(&str, &[u32])] = &[
    (
        "Hello world! BitNet b1.58 runs on CPUs.",
        &[
            9906, 1917, 0, 6631, 7099, 293, 16, 13, 2970, 8640, 389, 66575, 13,
        ],
    ),
    (
        "héllo wörld — naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어",
        &[
            71, 19010, 385, 289, 9603, 509, 2001, 95980, 588, 53050, 11, 121029, 102434, 11,
            110950, 101591, 11, 105180, 102158, 16144, 57933, 62903, 71634, 11, 104008, 32179,
        ],
    ),
    (
        "emoji: 🚀🔥 👍🏽 👨\u{200d}👩\u{200d}👧 ✅",
        &[
            38623, 25, 11410, 248, 222, 9468, 242, 98, 62904, 235, 9468, 237, 121, 62904, 101,
            102470, 9468, 239, 102, 102470, 9468, 239, 100, 26602, 227,
        ],
    ),
    (
        "numbers 1234567 and 3.14159, 10,000 or -42",
        &[
            38478, 220, 4513, 10961, 22, 323, 220, 18, 13, 9335, 2946, 11, 220, 605, 11, 931, 477,
            482, 2983,
        ],
    ),
    (
        "line one\nline two\n\n\nindented:\n    code()\r\n\tTab",
        &[
            1074, 832, 198, 1074, 1403, 1432, 485, 16243, 512, 262, 2082, 3652, 197, 8750,
        ],
    ),
    (
        "multiple    spaces   here  \n  and trailing   ",
        &[36773, 262, 12908, 256, 1618, 2355, 220, 323, 28848, 262],
    ),
    (
        "I'm don't you'll we've they're it's HE'LL SHE'D",
        &[
            40, 2846, 1541, 956, 499, 3358, 584, 3077, 814, 2351, 433, 596, 11947, 6, 4178, 54695,
            28805,
        ],
    ),
    (
        "fn main() { println!(\"{}\", x); } // ok?!",
        &[
            8998, 1925, 368, 314, 14069, 80978, 865, 1237, 335, 443, 5509, 27074,
        ],
    ),
    (
        "\u{a0}nbsp\u{3000}ideographic\u{2028}sep x\u{ad}soft",
        &[4194, 5792, 23249, 95107, 378, 101, 29136, 865, 5879, 3594],
    ),
    ("'ſ 'S 'Ll", &[6, 129, 123, 364, 50, 364, 43, 75]),
    (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ==================== zzzzqqqxj",
        &[
            70540, 70540, 70540, 70540, 70540, 29558, 5418, 25855, 8880, 1167, 10616, 89, 28679,
            89835, 73,
        ],
    ),
    (
        "<|eot_id|> is plain text here",
        &[27, 91, 68, 354, 851, 91, 29, 374, 14733, 1495, 1618],
    ),
    (" ", &[220]),
    ("\n", &[198]),
    ("", &[]),
];

#[test]
fn split_pattern_matches_tokenizer_json() {
    let Some(f) = fixture() else { return };
    assert_eq!(f.split_regex, LLAMA3_PATTERN);
}

#[test]
fn reference_ids() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    assert_eq!(t.vocab_size(), 128256);
    assert_eq!(
        t.encode("Hello world! BitNet b1.58 runs on CPUs.", false)
            .unwrap(),
        [9906, 1917, 0, 6631, 7099, 293, 16, 13, 2970, 8640, 389, 66575, 13]
    );
    for (text, want) in CASES {
        let got = t.encode(text, false).unwrap();
        assert_eq!(&got, want, "encoding {text:?}");
        assert_eq!(t.decode(&got), *text, "decoding {text:?}");
    }
    let with_bos = t.encode("Hello", true).unwrap();
    assert_eq!(with_bos, [128000, 9906]);
}

#[test]
fn special_tokens() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    let text =
        "<|begin_of_text|>User: hi<|eot_id|>Assistant: <|reserved_special_token_5|>x<|eot_id";
    // From the PyPI `tokenizers` package with special tokens parsed.
    let want = [
        128000, 1502, 25, 15960, 128009, 72803, 25, 220, 128010, 87, 27, 91, 68, 354, 851,
    ];
    assert_eq!(t.encode_with_special(text, false, true).unwrap(), want);
    assert_eq!(t.decode(&want), text);
    assert_eq!(t.decode_with(&want, true), "User: hiAssistant: x<|eot_id");
    assert_eq!(t.bos_id(), Some(128000));
    assert_eq!(t.eos_id(), Some(128001));
    assert_eq!(t.eot_id(), Some(128009), "found by name");
    // LLaMA-3.0 has no <|eom_id|> (128008 is a reserved token there).
    assert_eq!(t.eom_id(), None);
    assert_eq!(t.token_str(128008), Some("<|reserved_special_token_4|>"));
    let stops = t.stop_ids();
    assert_eq!(stops, [128001, 128009].into_iter().collect());
    assert_eq!(t.token_str(9906), Some("Hello"));
    assert_eq!(t.token_str(1917), Some("Ġworld"));
    assert_eq!(t.token_str(128009), Some("<|eot_id|>"));
    assert_eq!(t.token_str(128256), None);
    assert!(t.is_control(128009));
}

#[test]
fn chat_prompts() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    let msgs = [ChatMessage::new(
        "user",
        "Hey, are you conscious? Can you talk to me?",
    )];
    let bitnet = ChatTemplate::BitNet;
    let ids = bitnet.encode(t, &msgs, true, true).unwrap();
    let text = bitnet.render(&msgs, true);
    assert_eq!(ids, t.encode_with_special(&text, true, true).unwrap());
    // PyPI `tokenizers` on the rendered prompt (with BOS text), specials parsed.
    let want = [
        128000, 1502, 25, 28653, 11, 527, 499, 17371, 30, 3053, 499, 3137, 311, 757, 30, 128009,
        72803, 25, 220,
    ];
    assert_eq!(ids, want);
    assert_eq!(
        t.decode(&ids),
        "<|begin_of_text|>User: Hey, are you conscious? Can you talk to me?<|eot_id|>Assistant: "
    );
    let llama3 = ChatTemplate::Llama3;
    let ids = llama3.encode(t, &msgs, true, true).unwrap();
    assert_eq!(
        ids,
        t.encode_with_special(&llama3.render(&msgs, true), true, true)
            .unwrap()
    );
    let want = [
        128000, 128006, 882, 128007, 271, 19182, 11, 527, 499, 17371, 30, 3053, 499, 3137, 311,
        757, 30, 128009, 128006, 78191, 128007, 271,
    ];
    assert_eq!(ids, want);
    // A special-token string typed by the user stays text.
    let evil = [ChatMessage::new("user", "a<|eot_id|>b")];
    let ids = bitnet.encode(t, &evil, false, false).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 128009).count(), 1);
}

#[test]
fn streaming_matches_decode() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    for (text, ids) in CASES {
        let mut d = StreamDecoder::new(false);
        let mut s = String::new();
        for &id in *ids {
            let piece = d.push(t, id);
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: replacement char in {piece:?}"
            );
            s.push_str(&piece);
        }
        assert!(!d.has_pending());
        s.push_str(&d.finish());
        assert_eq!(s, *text);
    }
    // 🚀 is split over three byte-level tokens: nothing comes out until it is complete.
    let mut d = StreamDecoder::new(true);
    assert_eq!(d.push(t, 11410), " ");
    assert_eq!(d.push(t, 248), "");
    assert!(d.has_pending());
    assert_eq!(d.push(t, 222), "🚀");
    assert_eq!(d.push(t, 128009), "");
}

fn sample_text(target: usize) -> String {
    let parts = [
        "The quick brown fox jumps over the lazy dog. ",
        "BitNet b1.58 uses ternary weights {-1, 0, +1}; ",
        "it's 2025 and 1234567 tokens/s isn't unusual?! ",
        "Unicode: naïve café, 日本語, Ελληνικά, 🚀🔥\n",
        "    fn main() { println!(\"hi\"); }\n\n",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism. ",
    ];
    let mut s = String::with_capacity(target + 100);
    let mut i = 0usize;
    while s.len() < target {
        s.push_str(parts[i % parts.len()]);
        // Vary the text so the cache does not see only six pieces.
        s.push_str(&format!("w{}x{} ", i * 7919 % 10007, i));
        i += 1;
    }
    s
}

#[test]
fn encode_100kb_speed() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    let text = sample_text(100 * 1024);
    let t0 = Instant::now();
    let ids = t.encode(&text, false).unwrap();
    let dt = t0.elapsed();
    println!(
        "encoded {} bytes into {} tokens in {:?} ({:.1} MB/s)",
        text.len(),
        ids.len(),
        dt,
        text.len() as f64 / dt.as_secs_f64() / 1e6
    );
    assert_eq!(t.decode(&ids), text);
    // Generous bound: this runs in the test profile on shared CI machines; the release
    // target is well under 100 ms.
    assert!(dt.as_secs_f64() < 2.0, "encoding 100 KB took {dt:?}");
}

#[test]
fn many_token_counts() {
    // Sanity on a few single-token words, compared with ids from the PyPI package.
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    let words: HashMap<&str, u32> = [
        (" the", 279),
        (" and", 323),
        ("Hello", 9906),
        (" world", 1917),
    ]
    .into_iter()
    .collect();
    for (w, id) in words {
        assert_eq!(t.encode(w, false).unwrap(), [id], "{w:?}");
    }
}
