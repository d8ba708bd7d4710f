//! A compact byte-pair-encoding model for the `tokenizers` crate's pipeline, and the loading of
//! a `tokenizer.json` around it.
//!
//! The crate's own `BPE` keeps its vocabulary as two hash maps of owned strings (text to id and
//! id to text) and its merges as a third map: for Gemma-3's 262144 tokens and 514906 merges
//! that is about 70 MB of live heap, more than 90 MB resident after the parse's fragmentation
//! (`tests/gemma_rss.rs`). [`CompactBpe`] holds the same model in a few flat arrays: every
//! token's bytes in one buffer, a span per id, an open-addressing table of ids keyed by the
//! text's hash, and the merges sorted by pair (15.8 MB of heap for Gemma-3). It implements the
//! crate's [`Model`] trait with the crate's own merge order (lowest rank first, leftmost
//! first among equal ranks; byte fallback and unknown-token fusing as the crate does them), so
//! the crate's normalizer, pre-tokenizer, added vocabulary, post-processor and decoder run
//! around it unchanged. `tests/tokenizer_compact.rs` checks ids, offsets and decoding against
//! the crate's `BPE` on the fetched Gemma tokenizer.
//!
//! [`load`] reads `tokenizer.json` in three passes over the text: the model's settings, then
//! its vocabulary and merges straight into the flat arrays (never building the crate's maps),
//! then everything else with the crate's own types. A model the compact form does not cover
//! (not BPE, dropout, a subword prefix or suffix, ids that are not `0..n`, merges listed
//! before the vocabulary) is loaded by the crate as before ([`ShoalModel::Crate`]).

use std::borrow::Cow;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::BpeTrainer;
use tokenizers::{
    AddedToken, DecoderWrapper, Model, ModelWrapper, NormalizerWrapper, PaddingParams,
    PostProcessorWrapper, PreTokenizerWrapper, Token, TokenizerImpl, TruncationParams,
};

/// The tokenizer type [`load`] builds: the crate's pipeline around [`ShoalModel`].
pub type TokenizerCore = TokenizerImpl<
    ShoalModel,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

type TokResult<T> = tokenizers::Result<T>;

/// The model inside a [`TokenizerCore`]: the compact BPE when the file's model allows it, the
/// crate's own model otherwise.
pub enum ShoalModel {
    /// See [`CompactBpe`].
    Compact(CompactBpe),
    /// Whatever the crate built from the file.
    Crate(ModelWrapper),
}

impl Model for ShoalModel {
    type Trainer = TrainerWrapper;

    fn tokenize(&self, sequence: &str) -> TokResult<Vec<Token>> {
        match self {
            Self::Compact(m) => m.tokenize(sequence),
            Self::Crate(m) => m.tokenize(sequence),
        }
    }
    fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Compact(m) => m.token_to_id(token),
            Self::Crate(m) => m.token_to_id(token),
        }
    }
    fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Self::Compact(m) => m.id_to_token(id),
            Self::Crate(m) => m.id_to_token(id),
        }
    }
    fn get_vocab(&self) -> HashMap<String, u32> {
        match self {
            Self::Compact(m) => m.get_vocab(),
            Self::Crate(m) => m.get_vocab(),
        }
    }
    fn get_vocab_size(&self) -> usize {
        match self {
            Self::Compact(m) => m.get_vocab_size(),
            Self::Crate(m) => m.get_vocab_size(),
        }
    }
    fn save(&self, folder: &Path, prefix: Option<&str>) -> TokResult<Vec<PathBuf>> {
        match self {
            Self::Compact(m) => m.save(folder, prefix),
            Self::Crate(m) => m.save(folder, prefix),
        }
    }
    fn get_trainer(&self) -> TrainerWrapper {
        match self {
            Self::Compact(m) => m.get_trainer(),
            Self::Crate(m) => m.get_trainer(),
        }
    }
}

/// Marks an empty slot of [`CompactBpe::slots`].
const EMPTY: u32 = u32::MAX;

/// A BPE model without dropout, subword prefix or suffix, in flat arrays.
pub struct CompactBpe {
    /// Every token's bytes, in the file's order.
    text: Vec<u8>,
    /// Per id: start and length of its text in `text`.
    spans: Vec<(u32, u32)>,
    /// Open-addressing (linear probing) table of ids, indexed by [`hash`] of the token's text
    /// masked to the table's power-of-two size (at least twice the vocabulary).
    slots: Vec<u32>,
    /// Merge pairs `(left << 32) | right`, sorted; a pair listed twice keeps its last rank,
    /// as the crate's map does.
    merge_keys: Vec<u64>,
    /// Per entry of `merge_keys`: its rank (position in the file's list) and the merged id.
    merge_vals: Vec<(u32, u32)>,
    /// The unknown token's text and id, if the file names one.
    unk: Option<(String, u32)>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    /// Per byte value: the id of its `<0xAB>` token, when byte fallback is on.
    byte_ids: Vec<Option<u32>>,
}

/// FNV-1a over the bytes.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One symbol of a word being merged (the crate's `Symbol`): a token id, its byte length
/// (0 once merged into its left neighbour) and its neighbours' positions.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge at `pos`; the heap pops the lowest rank first, then the lowest position.
#[derive(PartialEq, Eq)]
struct Candidate {
    rank: u32,
    pos: usize,
    new_id: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl CompactBpe {
    fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let (start, len) = *self.spans.get(id as usize)?;
        self.text.get(start as usize..(start + len) as usize)
    }

    fn token_str(&self, id: u32) -> Option<&str> {
        // Every span was pushed from a `str`, whole.
        std::str::from_utf8(self.token_bytes(id)?).ok()
    }

    fn lookup(&self, token: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = hash(token) as usize & mask;
        loop {
            let id = self.slots[i];
            if id == EMPTY {
                return None;
            }
            if self.token_bytes(id) == Some(token) {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let key = (u64::from(left) << 32) | u64::from(right);
        let i = self.merge_keys.binary_search(&key).ok()?;
        Some(self.merge_vals[i])
    }

    /// The symbols of `word` before merging: one per character (its id, or its bytes' ids
    /// under byte fallback, or the unknown token, fused over a run when `fuse_unk`).
    fn symbols(&self, word: &str) -> TokResult<Vec<Symbol>> {
        let mut out: Vec<Symbol> = Vec::with_capacity(word.len());
        let push = |out: &mut Vec<Symbol>, id: u32, len: usize| {
            let n = out.len();
            if let Some(last) = out.last_mut() {
                last.next = Some(n);
            }
            out.push(Symbol {
                id,
                len,
                prev: n.checked_sub(1),
                next: None,
            });
        };
        let mut unk: Option<(u32, usize)> = None;
        for (i, c) in word.char_indices() {
            let s = &word[i..i + c.len_utf8()];
            if let Some(id) = self.lookup(s.as_bytes()) {
                if let Some((uid, ulen)) = unk.take() {
                    push(&mut out, uid, ulen);
                }
                push(&mut out, id, s.len());
                continue;
            }
            if self.byte_fallback {
                let bytes: Option<Vec<u32>> =
                    s.bytes().map(|b| self.byte_ids[b as usize]).collect();
                if let Some(bytes) = bytes {
                    // The crate adds these without flushing a pending unknown token first.
                    for id in bytes {
                        push(&mut out, id, 1);
                    }
                    continue;
                }
            }
            if let Some((_, unk_id)) = &self.unk {
                unk = match unk {
                    Some((uid, ulen)) if self.fuse_unk => Some((uid, ulen + s.len())),
                    Some((uid, ulen)) => {
                        push(&mut out, uid, ulen);
                        Some((*unk_id, s.len()))
                    }
                    None => Some((*unk_id, s.len())),
                };
            }
        }
        if let Some((uid, ulen)) = unk {
            push(&mut out, uid, ulen);
        }
        Ok(out)
    }

    /// Applies the merges to `symbols` in rank order (the crate's `Word::merge_all`).
    fn merge_all(&self, symbols: &mut Vec<Symbol>) {
        let mut queue: BinaryHeap<Candidate> = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(pos, w)| {
                self.merge(w[0].id, w[1].id)
                    .map(|(rank, new_id)| Candidate { rank, pos, new_id })
            })
            .collect();
        while let Some(top) = queue.pop() {
            let here = symbols[top.pos];
            let Some(next_pos) = here.next else {
                continue;
            };
            if here.len == 0 {
                continue;
            }
            let right = symbols[next_pos];
            // A stale candidate: one of its symbols has merged since.
            if self.merge(here.id, right.id).map(|m| m.1) != Some(top.new_id) {
                continue;
            }
            symbols[top.pos].id = top.new_id;
            symbols[top.pos].len += right.len;
            symbols[top.pos].next = right.next;
            symbols[next_pos].len = 0;
            if let Some(after) = right.next {
                symbols[after].prev = Some(top.pos);
            }
            let current = symbols[top.pos];
            if let Some(prev) = current.prev
                && let Some((rank, new_id)) = self.merge(symbols[prev].id, current.id)
            {
                queue.push(Candidate {
                    rank,
                    pos: prev,
                    new_id,
                });
            }
            if let Some(next) = current.next
                && let Some((rank, new_id)) = self.merge(current.id, symbols[next].id)
            {
                queue.push(Candidate {
                    rank,
                    pos: top.pos,
                    new_id,
                });
            }
        }
        symbols.retain(|s| s.len != 0);
    }
}

impl Model for CompactBpe {
    type Trainer = TrainerWrapper;

    fn tokenize(&self, sequence: &str) -> TokResult<Vec<Token>> {
        if sequence.is_empty() {
            return Ok(Vec::new());
        }
        if self.ignore_merges
            && let Some(id) = self.lookup(sequence.as_bytes())
        {
            return Ok(vec![Token::new(
                id,
                sequence.to_owned(),
                (0, sequence.len()),
            )]);
        }
        let mut symbols = self.symbols(sequence)?;
        self.merge_all(&mut symbols);
        let mut pos = 0;
        symbols
            .iter()
            .map(|s| {
                let value = self
                    .token_str(s.id)
                    .ok_or_else(|| format!("token id {} has no text", s.id))?;
                let offsets = (pos, pos + s.len);
                pos += s.len;
                Ok(Token::new(s.id, value.to_owned(), offsets))
            })
            .collect()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lookup(token.as_bytes())
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.token_str(id).map(str::to_owned)
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.spans.len() as u32)
            .filter_map(|id| Some((self.token_str(id)?.to_owned(), id)))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.spans.len()
    }

    /// Writes `vocab.json` and `merges.txt` as the crate's `BPE` does.
    fn save(&self, folder: &Path, prefix: Option<&str>) -> TokResult<Vec<PathBuf>> {
        let name = |file: &str| match prefix {
            Some(p) => folder.join(format!("{p}-{file}")),
            None => folder.join(file),
        };
        let vocab: serde_json::Map<String, serde_json::Value> = (0..self.spans.len() as u32)
            .filter_map(|id| Some((self.token_str(id)?.to_owned(), id.into())))
            .collect();
        let vocab_path = name("vocab.json");
        std::fs::write(&vocab_path, serde_json::to_string(&vocab)?)?;
        let mut merges: Vec<(u32, u64)> = self
            .merge_keys
            .iter()
            .zip(&self.merge_vals)
            .map(|(k, (rank, _))| (*rank, *k))
            .collect();
        merges.sort_unstable();
        let mut text = String::from("#version: 0.2\n");
        for (_, key) in merges {
            let (a, b) = ((key >> 32) as u32, key as u32);
            let (Some(a), Some(b)) = (self.token_str(a), self.token_str(b)) else {
                continue;
            };
            text.push_str(&format!("{a} {b}\n"));
        }
        let merges_path = name("merges.txt");
        std::fs::write(&merges_path, text)?;
        Ok(vec![vocab_path, merges_path])
    }

    fn get_trainer(&self) -> TrainerWrapper {
        TrainerWrapper::BpeTrainer(BpeTrainer::default())
    }
}

/// The model's settings (first pass; the vocabulary and merges are skipped unread).
#[derive(Deserialize)]
struct ModelHead {
    #[serde(rename = "type")]
    kind: Option<String>,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    fuse_unk: bool,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
}

#[derive(Deserialize)]
struct HeadFile {
    model: ModelHead,
}

/// Everything but the model, with the crate's own types (third pass).
#[derive(Deserialize)]
struct RestFile {
    version: Option<String>,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: Option<PreTokenizerWrapper>,
    post_processor: Option<PostProcessorWrapper>,
    decoder: Option<DecoderWrapper>,
    truncation: Option<TruncationParams>,
    padding: Option<PaddingParams>,
}

#[derive(Deserialize)]
struct CrateModelFile {
    model: ModelWrapper,
}

/// A JSON string, borrowed from the text when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads `{"model": {"vocab": .., "merges": ..}}` into a [`CompactBpe`] (second pass); `None`
/// when the vocabulary's ids are not `0..n` or the merges come first.
struct CompactSeed<'a>(&'a ModelHead);

/// The vocabulary being read: text, and per id its span.
#[derive(Default)]
struct VocabParts {
    text: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

impl<'de> DeserializeSeed<'de> for CompactSeed<'_> {
    type Value = Option<CompactBpe>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CompactSeed<'_> {
    type Value = Option<CompactBpe>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a BPE model")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model: Option<CompactBpe> = None;
        let mut merged = false;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "vocab" => {
                    let parts = map.next_value_seed(VocabSeed)?;
                    model = parts.and_then(|p| CompactBpe::from_vocab(p, self.0));
                }
                "merges" => match model.as_mut() {
                    Some(m) => {
                        map.next_value_seed(MergesSeed(m))?;
                        merged = true;
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        return drain(map);
                    }
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match model {
            Some(mut m) if merged => {
                m.sort_merges();
                Ok(Some(m))
            }
            _ => Ok(None),
        }
    }
}

/// Skips the rest of a map and answers `None`.
fn drain<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<CompactBpe>, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(None)
}

struct VocabSeed;

impl<'de> DeserializeSeed<'de> for VocabSeed {
    type Value = Option<VocabParts>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for VocabSeed {
    type Value = Option<VocabParts>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of token to id")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut v = VocabParts::default();
        let mut ok = true;
        while let Some((token, id)) = map.next_entry::<Text<'de>, u32>()? {
            let id = id as usize;
            if v.spans.len() <= id {
                if id > (1 << 26) {
                    ok = false;
                    continue;
                }
                v.spans.resize(id + 1, (u32::MAX, 0));
            }
            if v.spans[id].0 != u32::MAX {
                ok = false; // two tokens with one id
            }
            let (Ok(start), Ok(len)) = (u32::try_from(v.text.len()), u32::try_from(token.0.len()))
            else {
                ok = false;
                continue;
            };
            v.text.extend_from_slice(token.0.as_bytes());
            v.spans[id] = (start, len);
        }
        let dense = v.spans.iter().all(|s| s.0 != u32::MAX);
        Ok((ok && dense && !v.spans.is_empty()).then_some(v))
    }
}

struct MergesSeed<'a>(&'a mut CompactBpe);

impl<'de> DeserializeSeed<'de> for MergesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

/// One merge: `["a", "b"]`, or the older `"a b"`.
enum MergeEntry<'de> {
    Pair(Text<'de>, Text<'de>),
    Line(Text<'de>),
}

impl<'de> Deserialize<'de> for MergeEntry<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MergeEntry<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge: a pair of strings or \"a b\"")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MergeEntry::Line(Text(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MergeEntry::Line(Text(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let a: Text<'de> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: Text<'de> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(MergeEntry::Pair(a, b))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Visitor<'de> for MergesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of merges")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let m = self.0;
        let mut rank: u32 = 0;
        let mut joined = String::new();
        while let Some(entry) = seq.next_element::<MergeEntry<'de>>()? {
            let (a, b) = match &entry {
                MergeEntry::Pair(a, b) => (a.0.as_ref(), b.0.as_ref()),
                MergeEntry::Line(l) if l.0.starts_with("#version") => continue,
                MergeEntry::Line(l) => {
                    let mut parts = l.0.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => (a, b),
                        _ => {
                            return Err(de::Error::custom(format!(
                                "merge {} is not two tokens",
                                rank + 1
                            )));
                        }
                    }
                }
            };
            let id = |t: &str| {
                m.lookup(t.as_bytes())
                    .ok_or_else(|| de::Error::custom(format!("merge token {t:?} not in vocab")))
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let (a, b, new_id) = (id(a)?, id(b)?, id(&joined)?);
            m.merge_keys.push((u64::from(a) << 32) | u64::from(b));
            m.merge_vals.push((rank, new_id));
            rank += 1;
        }
        Ok(())
    }
}

impl CompactBpe {
    /// The model from a read vocabulary and the file's settings; `None` for settings the
    /// compact form does not cover.
    fn from_vocab(v: VocabParts, head: &ModelHead) -> Option<CompactBpe> {
        let size = (v.spans.len() * 2).next_power_of_two();
        let mut m = CompactBpe {
            text: v.text,
            spans: v.spans,
            slots: vec![EMPTY; size],
            merge_keys: Vec::new(),
            merge_vals: Vec::new(),
            unk: None,
            fuse_unk: head.fuse_unk,
            byte_fallback: head.byte_fallback,
            ignore_merges: head.ignore_merges,
            byte_ids: Vec::new(),
        };
        m.text.shrink_to_fit();
        for id in 0..m.spans.len() as u32 {
            let bytes = m.token_bytes(id)?;
            let mut i = hash(bytes) as usize & (size - 1);
            // A text listed twice under two ids: the crate's map keeps one of them; the
            // compact form does not guess which.
            while m.slots[i] != EMPTY {
                if m.token_bytes(m.slots[i])? == bytes {
                    return None;
                }
                i = (i + 1) & (size - 1);
            }
            m.slots[i] = id;
        }
        m.unk = head
            .unk_token
            .as_ref()
            .map(|u| m.lookup(u.as_bytes()).map(|id| (u.clone(), id)))
            .unwrap_or(None);
        if head.unk_token.is_some() && m.unk.is_none() {
            return None; // the crate errors on the first unknown character; keep its path
        }
        m.byte_ids = (0..=255u8)
            .map(|b| m.lookup(format!("<{b:#04X}>").as_bytes()))
            .collect();
        Some(m)
    }

    /// Sorts the merges by pair; of a pair listed twice the last (highest rank) stays.
    fn sort_merges(&mut self) {
        let mut order: Vec<u32> = (0..self.merge_keys.len() as u32).collect();
        order.sort_unstable_by_key(|&i| {
            (self.merge_keys[i as usize], self.merge_vals[i as usize].0)
        });
        let mut keys = Vec::with_capacity(order.len());
        let mut vals: Vec<(u32, u32)> = Vec::with_capacity(order.len());
        for i in order {
            let (k, v) = (self.merge_keys[i as usize], self.merge_vals[i as usize]);
            if keys.last() == Some(&k) {
                if let Some(last) = vals.last_mut() {
                    *last = v;
                }
            } else {
                keys.push(k);
                vals.push(v);
            }
        }
        self.merge_keys = keys;
        self.merge_vals = vals;
    }
}

/// Loads a `tokenizer.json` text (see the module docs).
pub fn load(text: &str) -> TokResult<TokenizerCore> {
    let head: HeadFile = serde_json::from_str(text)?;
    let h = &head.model;
    let compact_ok = h.kind.as_deref() == Some("BPE")
        && h.dropout.is_none_or(|d| d == 0.0)
        && h.continuing_subword_prefix.is_none()
        && h.end_of_word_suffix.is_none();
    let mut model = None;
    if compact_ok {
        let mut de = serde_json::Deserializer::from_str(text);
        model = OuterSeed(h).deserialize(&mut de)?.map(ShoalModel::Compact);
    }
    let model = match model {
        Some(m) => m,
        None => ShoalModel::Crate(serde_json::from_str::<CrateModelFile>(text)?.model),
    };
    let rest: RestFile = serde_json::from_str(text)?;
    if let Some(v) = &rest.version
        && v != "1.0"
    {
        return Err(format!("Unknown tokenizer version '{v}'").into());
    }
    let mut t = TokenizerImpl::new(model);
    t.with_normalizer(rest.normalizer)
        .with_pre_tokenizer(rest.pre_tokenizer)
        .with_post_processor(rest.post_processor)
        .with_decoder(rest.decoder)
        .with_padding(rest.padding);
    t.with_truncation(rest.truncation)?;
    t.add_tokens(&rest.added_tokens);
    Ok(t)
}

/// The outer object of the second pass: finds `"model"` and reads it with [`CompactSeed`].
struct OuterSeed<'a>(&'a ModelHead);

impl<'de> DeserializeSeed<'de> for OuterSeed<'_> {
    type Value = Option<CompactBpe>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OuterSeed<'_> {
    type Value = Option<CompactBpe>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tokenizer.json object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.0 == "model" {
                model = map.next_value_seed(CompactSeed(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(model)
    }
}
