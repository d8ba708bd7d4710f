//! The compact BPE model (`shoal_model::bpe`) against the `tokenizers` crate's own `BPE` on the
//! same `tokenizer.json`: token ids, token texts and offsets of every encoding, decoding with
//! and without special tokens, and the vocabulary both ways. On small hand-written tokenizers
//! that reach every branch of the merge loop (ties between equal ranks, a pair listed twice,
//! the older `"a b"` merge form, unknown characters fused or not, byte fallback with a byte
//! missing, `ignore_merges`), on a model the compact form does not take (WordLevel, which must
//! load through the crate), and on Gemma-3-270M's tokenizer (262144 tokens, 514906 merges;
//! skipped when not fetched, see `support/gemma_files.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gemma_files.rs"]
mod gemma_files;
use gemma_files::gemma_files;

use serde_json::json;
use shoal_model::bpe::{ShoalModel, TokenizerCore, load};
use tokenizers::Model;

/// Texts covering words, numbers, code, whitespace runs, scripts, emoji with modifiers,
/// characters outside any vocabulary, and special-token strings.
const TEXTS: &[&str] = &[
    "The capital of France is",
    "",
    " ",
    "a",
    "Hello, world! How are you doing today? I'm fine, thanks.",
    "    indented    with   runs of spaces\n\n\n\tand tabs\t\t",
    "fn main() { let x: Vec<u32> = (0..10).map(|i| i * 2).collect(); println!(\"{x:?}\"); }",
    "3.14159265358979 + 2.71828 = 5.85987; 1,000,000 x 42",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم! שלום עולם",
    "👋🏽 🇫🇷 👨‍👩‍👧‍👦 ✨🚀",
    "\u{10FFFD}\u{E000}\u{0}\u{7}\u{1F}x\u{FFFF}",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>already here<eos> and <pad> <unk> <mask>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abcabcabc abcd dcba cabbage bad ebb abba zz zab",
];

fn crate_tokenizer(text: &str) -> tokenizers::Tokenizer {
    text.parse().unwrap()
}

/// Encodes and decodes every text both ways and asserts the same result.
fn assert_same(ours: &TokenizerCore, theirs: &tokenizers::Tokenizer, texts: &[&str]) {
    for text in texts {
        for special in [true, false] {
            let a = ours.encode(*text, special).unwrap();
            let b = theirs.encode(*text, special).unwrap();
            assert_eq!(a.get_ids(), b.get_ids(), "ids of {text:?}");
            assert_eq!(a.get_tokens(), b.get_tokens(), "tokens of {text:?}");
            assert_eq!(a.get_offsets(), b.get_offsets(), "offsets of {text:?}");
            for skip in [true, false] {
                assert_eq!(
                    ours.decode(a.get_ids(), skip).unwrap(),
                    theirs.decode(b.get_ids(), skip).unwrap(),
                    "decoding {text:?}"
                );
            }
        }
    }
}

/// Every id's text and back, both ways, for `ids`.
fn assert_same_vocab(ours: &TokenizerCore, theirs: &tokenizers::Tokenizer, ids: &[u32]) {
    assert_eq!(
        ours.get_vocab_size(true),
        theirs.get_vocab_size(true),
        "vocabulary size"
    );
    for &id in ids {
        let t = theirs.id_to_token(id);
        assert_eq!(ours.id_to_token(id), t, "text of id {id}");
        if let Some(t) = t {
            assert_eq!(ours.token_to_id(&t), theirs.token_to_id(&t), "id of {t:?}");
        }
    }
}

fn is_compact(t: &TokenizerCore) -> bool {
    matches!(t.get_model(), ShoalModel::Compact(_))
}

/// A small BPE `tokenizer.json` (whitespace split, no normalizer or decoder) with `merges` as
/// given, the model settings in `model`, and the merges listed before the vocabulary when
/// `first_merges`.
fn small_bpe(merges: serde_json::Value, model: serde_json::Value, first_merges: bool) -> String {
    let mut vocab = serde_json::Map::new();
    let tokens = [
        "<unk>", "<s>", "a", "b", "c", "d", "e", "ab", "bc", "abc", "ca", "cab", "aa", "aaa",
        "aaaa", "cd", "abcd", "ba", "bb", "<0x7A>", "<0xC3>",
    ];
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert((*t).to_owned(), json!(i));
    }
    let mut settings = json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": "<unk>",
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": false,
        "byte_fallback": false,
        "ignore_merges": false,
    });
    for (k, v) in model.as_object().unwrap() {
        settings[k] = v.clone();
    }
    // The vocabulary before the merges, as the crate writes them (`json!` sorts keys).
    let settings = settings.to_string();
    let (vocab, merges) = (json!(vocab).to_string(), merges.to_string());
    let model = if first_merges {
        format!(
            r#"{},"merges":{merges},"vocab":{vocab}}}"#,
            &settings[..settings.len() - 1]
        )
    } else {
        format!(
            r#"{},"vocab":{vocab},"merges":{merges}}}"#,
            &settings[..settings.len() - 1]
        )
    };
    let outer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
    })
    .to_string();
    format!(r#"{},"model":{model}}}"#, &outer[..outer.len() - 1])
}

/// Pairs with equal-rank ties, a pair listed twice (the later rank wins), chains.
fn small_merges() -> serde_json::Value {
    json!([
        ["a", "a"],
        ["a", "b"],
        ["b", "c"],
        ["aa", "aa"],
        ["c", "a"],
        ["ab", "c"],
        ["ca", "b"],
        ["a", "aa"],
        ["c", "d"],
        ["abc", "d"],
        ["b", "a"],
        ["a", "b"],
        ["b", "b"],
    ])
}

const SMALL_TEXTS: &[&str] = &[
    "abc",
    "abcd cab aaaa aaa aaaaa aaaaaaa",
    "ababab bcbcbc cacaca abba bbbb",
    "xyz abc",
    "xxab xaxbx",
    "zz z",
    "éab ü",
    "<s>abc<s> a<s>b",
    "ca cab cabcd dcba e",
];

#[test]
fn small_tokenizers_match_the_crate() {
    let cases = [
        ("plain", small_merges(), json!({})),
        ("fuse_unk", small_merges(), json!({"fuse_unk": true})),
        (
            "byte_fallback",
            small_merges(),
            json!({"byte_fallback": true}),
        ),
        (
            "byte_fallback fuse_unk",
            small_merges(),
            json!({"byte_fallback": true, "fuse_unk": true}),
        ),
        (
            "ignore_merges",
            small_merges(),
            json!({"ignore_merges": true}),
        ),
        ("no unk", small_merges(), json!({"unk_token": null})),
        (
            "legacy merges",
            json!([
                "#version: 0.2",
                "a a",
                "a b",
                "b c",
                "aa aa",
                "c a",
                "ab c",
                "ca b"
            ]),
            json!({}),
        ),
    ];
    for (name, merges, model) in cases {
        let text = small_bpe(merges, model, false);
        let ours = load(&text).unwrap();
        assert!(is_compact(&ours), "{name}: compact model expected");
        let theirs = crate_tokenizer(&text);
        assert_same(&ours, &theirs, SMALL_TEXTS);
        assert_same_vocab(&ours, &theirs, &(0..25).collect::<Vec<_>>());
    }
}

#[test]
fn other_models_load_through_the_crate() {
    // Dropout and a subword prefix are not taken by the compact form, nor a file whose merges
    // come before its vocabulary (read in one pass, the merges need the ids). No merges with
    // dropout and the prefix: the crate's own answers are then deterministic and defined.
    for (merges, model, first_merges) in [
        (json!([]), json!({"dropout": 0.5}), false),
        (json!([]), json!({"continuing_subword_prefix": "##"}), false),
        (small_merges(), json!({}), true),
    ] {
        let text = small_bpe(merges, model, first_merges);
        let ours = load(&text).unwrap();
        assert!(!is_compact(&ours), "{text}");
        assert_same(&ours, &crate_tokenizer(&text), SMALL_TEXTS);
    }
    let word_level = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1, "world": 2},
                  "unk_token": "<unk>"},
    })
    .to_string();
    let ours = load(&word_level).unwrap();
    assert!(!is_compact(&ours));
    assert_same(
        &ours,
        &crate_tokenizer(&word_level),
        &["hello world", "hello there"],
    );
}

#[test]
fn gemma_tokenizer_matches_the_crate() {
    let Some((_, path)) = gemma_files("tokenizer_compact") else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let ours = load(&text).unwrap();
    assert!(is_compact(&ours), "Gemma's BPE should load compact");
    let theirs = crate_tokenizer(&text);
    assert_same(&ours, &theirs, TEXTS);
    // A longer text: every text above, joined, repeated.
    let long = TEXTS.join(" \n").repeat(4);
    assert_same(&ours, &theirs, &[&long]);
    let n = theirs.get_vocab_size(true) as u32;
    let ids: Vec<u32> = (0..n).step_by(97).chain(n - 300..n + 2).collect();
    assert_same_vocab(&ours, &theirs, &ids);
    assert_eq!(ours.get_model().get_vocab_size(), 262144);
}
