//! Tokenizer tests on a small hand-made vocabulary (always run, no test data needed).

use ternforge_engine::chat::{ChatMessage, ChatTemplate};
use ternforge_engine::tokenizer::{
    token_type, StreamDecoder, Tokenizer, TokenizerConfig, TokenizerError,
};

/// Byte-level character of byte `b` (GPT-2 table, written out independently of the crate).
fn byte_char(b: u8) -> char {
    let direct = |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
    if direct(b) {
        char::from(b)
    } else {
        let n = (0..b).filter(|&x| !direct(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }
}

const MERGES: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ Ġ", "Ã ©",
    "1 2", "l o",
];

const BOS: u32 = 300;
const EOS: u32 = 301;
const EOT: u32 = 302;
const EOM: u32 = 303;
const IM_END: u32 = 304;
const TOOL: u32 = 305;
const XYZ: u32 = 306;

/// Ids 0..256 are the byte tokens (id == byte), then one token per merge result, padding up
/// to 300, then specials.
fn config() -> TokenizerConfig {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    for m in MERGES {
        let (l, r) = m.split_once(' ').unwrap();
        let t = format!("{l}{r}");
        if !tokens.contains(&t) {
            tokens.push(t);
        }
    }
    while tokens.len() < 300 {
        tokens.push(format!("<pad{}>", tokens.len()));
    }
    tokens.extend(
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|im_end|>",
            "<tool>",
            "Ġxyz",
        ]
        .map(String::from),
    );
    let mut types = vec![token_type::NORMAL; tokens.len()];
    for id in [BOS, EOS, EOT, EOM, IM_END] {
        types[id as usize] = token_type::CONTROL;
    }
    types[TOOL as usize] = token_type::USER_DEFINED;
    TokenizerConfig {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        tokens,
        merges: MERGES.iter().map(|s| s.to_string()).collect(),
        token_types: Some(types),
        bos_token_id: Some(BOS),
        eos_token_id: Some(EOS),
        eot_token_id: None,
        eom_token_id: None,
        add_bos_token: Some(true),
        chat_template: None,
    }
}

fn tok() -> Tokenizer {
    Tokenizer::from_config(&config()).unwrap()
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_id(s)
        .unwrap_or_else(|| panic!("{s:?} not in vocab"))
}

#[test]
fn merges_and_split() {
    let t = tok();
    let hello = id(&t, "hello");
    let world = id(&t, "Ġworld");
    assert_eq!(t.encode("hello world", false).unwrap(), [hello, world]);
    // Two spaces: the first stays alone, the second joins the word.
    assert_eq!(
        t.encode("hello  world", false).unwrap(),
        [hello, b' ' as u32, world]
    );
    // Merges apply inside one piece, repeatedly.
    assert_eq!(t.encode("hellohello", false).unwrap(), [hello, hello]);
    // Rank order: "l l" (rank 1) beats "l o" (rank 12).
    assert_eq!(t.encode("llo", false).unwrap(), [id(&t, "ll"), b'o' as u32]);
    assert_eq!(t.encode("olo", false).unwrap(), [b'o' as u32, id(&t, "lo")]);
    // Trailing whitespace run stays whole and merges.
    assert_eq!(t.encode("  ", false).unwrap(), [id(&t, "ĠĠ")]);
    // Digits: groups of three, then merges inside the group.
    assert_eq!(
        t.encode("1234", false).unwrap(),
        [id(&t, "12"), b'3' as u32, b'4' as u32]
    );
    // Contractions split off.
    assert_eq!(
        t.encode("he'll", false).unwrap(),
        [id(&t, "he"), b'\'' as u32, id(&t, "ll")]
    );
    assert_eq!(t.encode("", false).unwrap(), Vec::<u32>::new());
}

#[test]
fn whole_piece_in_vocab_wins() {
    // LLaMA-3 `ignore_merges`: " xyz" is a vocabulary entry, although no merge builds it.
    let t = tok();
    assert_eq!(t.encode(" xyz", false).unwrap(), [XYZ]);
    assert_eq!(
        t.encode("xyz", false).unwrap(),
        [b'x' as u32, b'y' as u32, b'z' as u32]
    );
}

#[test]
fn byte_level_mapping() {
    let t = tok();
    assert_eq!(t.encode("\n", false).unwrap(), [10]);
    assert_eq!(t.encode("\t", false).unwrap(), [9]);
    // é = C3 A9 merges to one token; ü = C3 BC stays two byte tokens.
    assert_eq!(t.encode("é", false).unwrap(), [id(&t, "Ã©")]);
    assert_eq!(t.encode("ü", false).unwrap(), [0xC3, 0xBC]);
    assert_eq!(t.encode("🚀", false).unwrap(), [0xF0, 0x9F, 0x9A, 0x80]);
    assert_eq!(t.token_str(b' ' as u32), Some("Ġ"));
    assert_eq!(t.token_str(10), Some("Ċ"));
    assert_eq!(t.decode(&[0xC3, 0xBC]), "ü");
}

#[test]
fn special_tokens() {
    let t = tok();
    let text = "a<|eot_id|>b";
    let plain = t.encode(text, false).unwrap();
    assert!(!plain.contains(&EOT));
    assert_eq!(t.decode(&plain), text);
    assert_eq!(
        t.encode_with_special(text, false, true).unwrap(),
        [b'a' as u32, EOT, b'b' as u32]
    );
    assert_eq!(
        t.encode_with_special("<|eot_id|><|eot_id|>", true, true)
            .unwrap(),
        [BOS, EOT, EOT]
    );
    // User-defined tokens are always matched.
    assert_eq!(
        t.encode("x<tool>y", false).unwrap(),
        [b'x' as u32, TOOL, b'y' as u32]
    );
    // Unterminated special: plain text.
    assert!(!t
        .encode_with_special("<|eot_id|", false, true)
        .unwrap()
        .contains(&EOT));
    // Multi-byte text around specials.
    assert_eq!(
        t.encode_with_special("é<|eom_id|>é", false, true).unwrap(),
        [id(&t, "Ã©"), EOM, id(&t, "Ã©")]
    );
}

#[test]
fn ids_and_stop_set() {
    let t = tok();
    assert_eq!(t.bos_id(), Some(BOS));
    assert_eq!(t.eos_id(), Some(EOS));
    assert_eq!(t.eot_id(), Some(EOT), "found by name");
    assert_eq!(t.eom_id(), Some(EOM), "found by name");
    assert!(t.add_bos_token());
    assert_eq!(t.stop_ids(), [EOS, EOT, EOM, IM_END].into_iter().collect());
    assert!(t.is_stop(IM_END) && !t.is_stop(BOS) && !t.is_stop(TOOL));
    assert_eq!(t.vocab_size(), 307);
    assert_eq!(t.token_str(EOT), Some("<|eot_id|>"));
    assert_eq!(t.token_str(307), None);
    assert_eq!(t.token_type(TOOL), Some(token_type::USER_DEFINED));
    assert!(t.is_control(EOT) && !t.is_control(TOOL));

    // Explicit metadata ids win over names.
    let mut cfg = config();
    cfg.eot_token_id = Some(IM_END);
    let t = Tokenizer::from_config(&cfg).unwrap();
    assert_eq!(t.eot_id(), Some(IM_END));

    // Without token types, <|...|> tokens are control tokens.
    let mut cfg = config();
    cfg.token_types = None;
    let t = Tokenizer::from_config(&cfg).unwrap();
    assert!(t.is_control(EOT) && !t.is_control(TOOL));
    assert_eq!(
        t.encode_with_special("<|eot_id|>", false, true).unwrap(),
        [EOT]
    );
}

#[test]
fn bos_handling() {
    let t = tok();
    assert_eq!(t.encode("hello", true).unwrap(), [BOS, id(&t, "hello")]);
    let mut cfg = config();
    cfg.bos_token_id = None;
    cfg.tokens[BOS as usize] = "<|something_else|>".into();
    cfg.add_bos_token = Some(false);
    let t = Tokenizer::from_config(&cfg).unwrap();
    assert_eq!(t.bos_id(), None);
    assert!(!t.add_bos_token());
    assert_eq!(t.encode("x", true), Err(TokenizerError::NoBosToken));
    assert_eq!(t.encode("x", false).unwrap(), [b'x' as u32]);
}

#[test]
fn decode_options() {
    let t = tok();
    let ids = [BOS, id(&t, "hello"), EOT, TOOL];
    assert_eq!(t.decode(&ids), "<|begin_of_text|>hello<|eot_id|><tool>");
    assert_eq!(t.decode_with(&ids, true), "hello<tool>");
    assert_eq!(t.decode(&[u32::MAX, 1000]), "\u{FFFD}\u{FFFD}");
    assert_eq!(t.decode(&[0xFF]), "\u{FFFD}");
    assert_eq!(t.decode(&[]), "");
}

/// Small xorshift generator for reproducible pseudo-random inputs.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn roundtrip_random_text() {
    let t = tok();
    let pool: Vec<char> = "hello world xyz 0123456789 \n\r\t\u{a0}\u{3000}'sTéü€🚀日本<|eot_id|>"
        .chars()
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2000 {
        let len = rng.below(40);
        let s: String = (0..len).map(|_| pool[rng.below(pool.len())]).collect();
        let ids = t.encode(&s, false).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
        assert_eq!(t.decode(&ids), s);
        let ids = t.encode_with_special(&s, true, true).unwrap();
        assert_eq!(ids[0], BOS);
        assert_eq!(t.decode(&ids[1..]), s);
    }
}

#[test]
fn stream_holds_back_incomplete_utf8() {
    let t = tok();
    let mut d = StreamDecoder::new(false);
    // € = E2 82 AC as three byte tokens.
    assert_eq!(d.push(&t, 0xE2), "");
    assert!(d.has_pending());
    assert_eq!(d.push(&t, 0x82), "");
    assert_eq!(d.push(&t, 0xAC), "€");
    assert!(!d.has_pending());
    assert_eq!(d.push(&t, id(&t, "hello")), "hello");
    // Invalid byte: replaced at once.
    assert_eq!(d.push(&t, 0xFF), "\u{FFFD}");
    // A sequence broken by an ASCII byte.
    assert_eq!(d.push(&t, 0xE2), "");
    assert_eq!(d.push(&t, b'A' as u32), "\u{FFFD}A");
    // A special token inside a sequence.
    assert_eq!(d.push(&t, 0xF0), "");
    assert_eq!(d.push(&t, EOT), "\u{FFFD}<|eot_id|>");
    // Unfinished at the end.
    assert_eq!(d.push(&t, 0xF0), "");
    assert_eq!(d.push(&t, 0x9F), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(d.finish(), "");

    // Skipped specials produce nothing.
    let mut d = StreamDecoder::new(true);
    assert_eq!(d.push(&t, BOS), "");
    assert_eq!(d.push(&t, XYZ), " xyz");
}

#[test]
fn stream_equals_decode() {
    let t = tok();
    let mut rng = Rng(12345);
    for skip in [false, true] {
        for _ in 0..1000 {
            let len = rng.below(30);
            // Mostly continuation/lead bytes, some specials and out-of-range ids.
            let ids: Vec<u32> = (0..len)
                .map(|_| match rng.below(10) {
                    0 => EOT,
                    1 => 999,
                    2 => b'a' as u32,
                    _ => 0x80 + rng.below(0x78) as u32,
                })
                .collect();
            let mut d = StreamDecoder::new(skip);
            let mut s: String = ids.iter().map(|&i| d.push(&t, i)).collect();
            s.push_str(&d.finish());
            assert_eq!(s, t.decode_with(&ids, skip), "ids {ids:?}");
        }
    }
}

#[test]
fn construction_errors() {
    use TokenizerError::*;
    let build = |f: &dyn Fn(&mut TokenizerConfig)| {
        let mut cfg = config();
        f(&mut cfg);
        Tokenizer::from_config(&cfg).err()
    };
    assert_eq!(
        build(&|c| c.model = "llama".into()),
        Some(UnsupportedModel("llama".into()))
    );
    assert_eq!(build(&|c| c.pre = None), Some(UnsupportedPre(None)));
    assert_eq!(
        build(&|c| c.pre = Some("qwen2".into())),
        Some(UnsupportedPre(Some("qwen2".into())))
    );
    assert_eq!(build(&|c| c.pre = Some("llama3".into())), None);
    assert_eq!(
        build(&|c| {
            c.tokens.clear();
            c.token_types = None;
        }),
        Some(EmptyVocab)
    );
    assert_eq!(
        build(&|c| c.token_types = Some(vec![1; 3])),
        Some(TokenTypeCount {
            tokens: 307,
            types: 3
        })
    );
    assert_eq!(
        build(&|c| c.merges.push("abc".into())),
        Some(MalformedMerge {
            index: 13,
            merge: "abc".into()
        })
    );
    assert_eq!(
        build(&|c| c.merges.push("a b c".into())),
        Some(MalformedMerge {
            index: 13,
            merge: "a b c".into()
        })
    );
    assert_eq!(
        build(&|c| c.merges.insert(0, "q nope".into())),
        Some(MergeUnknownToken {
            index: 0,
            token: "nope".into()
        })
    );
    assert_eq!(
        build(&|c| c.merges.push("x y".into())),
        Some(MergeResultUnknown {
            index: 13,
            merged: "xy".into()
        })
    );
    assert_eq!(
        build(&|c| c.tokens[10] = "newline?".into()),
        Some(MissingByteToken(10))
    );
    assert_eq!(
        build(&|c| c.eos_token_id = Some(307)),
        Some(SpecialIdOutOfRange {
            name: "eos",
            id: 307,
            vocab_size: 307
        })
    );
    // Messages are readable.
    let e = build(&|c| c.merges.push("x y".into())).unwrap();
    assert_eq!(
        e.to_string(),
        "merge #13 produces \"xy\", which is not in the vocabulary"
    );
    assert!(UnsupportedPre(None).to_string().contains("llama-bpe"));
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    let t = tok();
    let want = t.encode("hello world hellohello", false).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..200 {
                    assert_eq!(t.encode("hello world hellohello", false).unwrap(), want);
                }
            });
        }
    });
}

#[test]
fn long_inputs_do_not_fail() {
    let t = tok();
    for s in [
        " ".repeat(100_000),
        format!("{}x", " ".repeat(100_000)),
        "=".repeat(100_000),
        "l".repeat(100_001),
        "\n".repeat(50_000),
        "<|eot_id|>".repeat(10_000),
    ] {
        let ids = t.encode_with_special(&s, false, true).unwrap();
        assert_eq!(t.decode(&ids), s);
    }
    // "lll..." merges pairwise into "ll" tokens.
    let ids = t.encode(&"l".repeat(101), false).unwrap();
    assert_eq!(ids.len(), 51);
    assert_eq!(ids[50], b'l' as u32);
}

#[test]
fn chat_encode_keeps_user_text_plain() {
    let t = tok();
    let msgs = [ChatMessage::new("user", "hello<|eot_id|>")];
    let ids = ChatTemplate::BitNet.encode(&t, &msgs, true, true).unwrap();
    assert_eq!(ids[0], BOS);
    assert_eq!(ids.iter().filter(|&&i| i == EOT).count(), 1);
    assert_eq!(
        t.decode(&ids),
        "<|begin_of_text|>User: hello<|eot_id|><|eot_id|>Assistant: "
    );
    // Without user-typed specials, equal to encoding the rendered text with specials parsed.
    // (LLaMA-3's header tokens are not in this vocabulary; see tokenizer_llama3.rs.)
    let msgs = [
        ChatMessage::new("system", "s"),
        ChatMessage::new("user", "hello world"),
        ChatMessage::new("assistant", "é 12"),
    ];
    let tpl = ChatTemplate::BitNet;
    let text = tpl.render(&msgs, true);
    assert_eq!(
        tpl.encode(&t, &msgs, true, false).unwrap(),
        t.encode_with_special(&text, false, true).unwrap()
    );
}
