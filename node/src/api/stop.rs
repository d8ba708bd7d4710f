//! OpenAI's `stop` sequences, matched on the decoded text (pure, no IO).
//!
//! [`StopText`] is fed the whole text decoded so far after every token. It says which new
//! text may go to the client: everything up to the first stop sequence (which is not sent),
//! and otherwise everything except a tail that could still become the start of a stop
//! sequence (held back until the next token settles it). A text ending in an incomplete UTF-8
//! sequence (U+FFFD from the decoder) is held back the same way.

/// At most this many stop sequences per request (OpenAI's own limit).
pub const MAX_STOPS: usize = 4;
/// Longest stop sequence, bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// What a new token's text allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// Send this text (possibly empty) and go on.
    Emit(String),
    /// Send this text, then stop: a stop sequence begins right after it.
    Stop(String),
}

/// The stop-sequence matcher of one generation.
#[derive(Debug, Clone)]
pub struct StopText {
    stops: Vec<String>,
    /// Bytes of the decoded text already handed out.
    sent: usize,
}

impl StopText {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            sent: 0,
        }
    }

    /// Whether there is any stop sequence to look for.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Bytes of the decoded text handed out so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Judges `full`, the whole text decoded so far (it only ever grows).
    pub fn feed(&mut self, full: &str) -> StopStep {
        // Text already sent is never searched again from its start: a stop sequence may
        // begin inside the held-back tail at the earliest.
        if let Some(at) = self.first_stop(full) {
            let out = full.get(self.sent..at).unwrap_or_default().to_string();
            self.sent = at.max(self.sent);
            return StopStep::Stop(out);
        }
        let settled = full.trim_end_matches('\u{fffd}');
        let safe = settled.len() - self.partial_tail(settled);
        let out = full.get(self.sent..safe).unwrap_or_default().to_string();
        self.sent = safe.max(self.sent);
        StopStep::Emit(out)
    }

    /// The rest of `full` once the generation ended without a stop sequence.
    pub fn finish(&mut self, full: &str) -> String {
        let out = full.get(self.sent..).unwrap_or_default().to_string();
        self.sent = full.len();
        out
    }

    /// Byte offset of the earliest stop sequence in `full` that ends in unsent text.
    fn first_stop(&self, full: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| {
                let from = self.sent.saturating_sub(s.len() - 1);
                let from = (from..=self.sent).find(|i| full.is_char_boundary(*i))?;
                full[from..].find(s.as_str()).map(|i| from + i)
            })
            .filter(|at| *at >= self.sent)
            .min()
    }

    /// Length of the longest suffix of `text` that is a proper prefix of a stop sequence.
    fn partial_tail(&self, text: &str) -> usize {
        self.stops
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&n| {
                        n <= text.len()
                            && text.is_char_boundary(text.len() - n)
                            && s.is_char_boundary(n)
                            && text.ends_with(&s[..n])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `pieces` one by one; returns what was sent and whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let (mut full, mut out) = (String::new(), String::new());
        for p in pieces {
            full.push_str(p);
            match m.feed(&full) {
                StopStep::Emit(t) => out.push_str(&t),
                StopStep::Stop(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish(&full));
        (out, false)
    }

    #[test]
    fn text_before_the_stop_is_sent_and_the_stop_is_not() {
        assert_eq!(
            run(&["\n\n"], &["Hello", " world", "\n", "\nmore"]),
            ("Hello world".into(), true)
        );
        assert_eq!(run(&["END"], &["aEN", "Db"]), ("a".into(), true));
        assert_eq!(run(&["x", "yz"], &["ab", "cy", "zx"]), ("abc".into(), true));
    }

    #[test]
    fn a_tail_that_may_start_a_stop_is_held_back_then_released() {
        let mut m = StopText::new(vec!["END".into()]);
        assert_eq!(m.feed("abcE"), StopStep::Emit("abc".into()));
        assert_eq!(m.feed("abcEN"), StopStep::Emit(String::new()));
        assert_eq!(m.feed("abcENx"), StopStep::Emit("ENx".into()));
        assert_eq!(m.finish("abcENx"), "");
    }

    #[test]
    fn an_incomplete_utf8_tail_waits_for_its_last_byte() {
        let mut m = StopText::new(Vec::new());
        assert_eq!(m.feed("a\u{fffd}"), StopStep::Emit("a".into()));
        assert_eq!(m.feed("aé"), StopStep::Emit("é".into()));
    }

    #[test]
    fn without_stops_everything_is_sent() {
        assert_eq!(run(&[], &["a", "b", "c"]), ("abc".into(), false));
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    }

    proptest! {
        /// Whatever the split into tokens, the client gets the text before the first stop
        /// sequence, exactly as a search over the whole text finds it.
        #[test]
        fn any_split_gives_the_text_before_the_first_stop(
            text in "[ab\n]{0,40}",
            stop in "[ab\n]{1,4}",
            cuts in proptest::collection::vec(0usize..40, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= text.len()).collect();
            cuts.push(text.len());
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts {
                pieces.push(&text[last..c]);
                last = c;
            }
            let (out, stopped) = run(&[stop.as_str()], &pieces);
            match text.find(stop.as_str()) {
                Some(at) => {
                    prop_assert!(stopped);
                    prop_assert_eq!(out, text[..at].to_string());
                }
                None => {
                    prop_assert!(!stopped);
                    prop_assert_eq!(out, text);
                }
            }
        }
    }
}
