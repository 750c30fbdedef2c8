//! The output gate: generated text is held back until a sentence (or a long enough clause)
//! is complete, checked together with the sentences before it (the look-back window), and
//! only then released. A block ends the stream: nothing of the blocked sentence, nor
//! anything after it, is ever released.
//!
//! This is the one sentence-by-sentence hook of the answer stream; other per-sentence checks
//! (grounding) plug into it through [`Gate::with_check`].

use std::sync::Arc;
use std::time::Instant;

use crate::{Context, Direction, Guard, Verdict};

/// What the gate lets through.
#[derive(Debug, Clone)]
pub enum GateEvent {
    /// Checked text, ready to show.
    Release(String),
    /// A sentence failed; the stream ends here.
    Blocked(Box<Verdict>),
}

/// What an extra per-sentence check decides about a sentence.
#[derive(Debug, Clone)]
pub enum SentenceOutcome {
    /// Show it.
    Pass,
    /// Show it, and list it in [`Gate::flagged`].
    Flag,
    /// Leave it out and go on with the next sentence (counted in [`Gate::dropped`]).
    Drop,
    /// End the stream, as a guard block does.
    Block(Box<Verdict>),
}

/// An extra per-sentence check: gets the sentence and the released window before it. Runs
/// after the guard (only on sentences the guard let through), with or without a guard.
pub type SentenceCheck = Box<dyn FnMut(&str, &str) -> SentenceOutcome + Send>;

/// Holds the current sentence of an answer until it has been checked.
pub struct Gate {
    /// `None`: the guardrails are off and text passes as it comes.
    guard: Option<Arc<dyn Guard>>,
    lang: String,
    sources: Vec<String>,
    secrets: Vec<String>,
    held: String,
    window: Vec<String>,
    released: String,
    blocked: bool,
    extra: Vec<SentenceCheck>,
    /// Sentences an extra check left out, and those it flagged (shown, but listed).
    pub dropped: usize,
    pub flagged: Vec<String>,
    /// Time spent checking, and sentences checked (for metrics).
    pub check_us: u64,
    pub sentences: usize,
    /// When the first text was held, and when the first text was released.
    first_held: Option<Instant>,
    pub first_hold_ms: Option<f64>,
}

impl Gate {
    /// `sources`: the texts shown to the model (personal data in them may be repeated);
    /// `secrets`: text that must never appear in an answer (the system prompt).
    pub fn new(guard: Option<Arc<dyn Guard>>, lang: &str, sources: Vec<String>, secrets: Vec<String>) -> Self {
        Self {
            guard,
            lang: lang.to_string(),
            sources,
            secrets,
            held: String::new(),
            window: Vec::new(),
            released: String::new(),
            blocked: false,
            extra: Vec::new(),
            dropped: 0,
            flagged: Vec::new(),
            check_us: 0,
            sentences: 0,
            first_held: None,
            first_hold_ms: None,
        }
    }

    pub fn with_check(mut self, check: SentenceCheck) -> Self {
        self.extra.push(check);
        self
    }

    /// Everything released so far.
    pub fn released(&self) -> &str {
        &self.released
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Add generated text; returns what may be shown now (or the block).
    pub fn push(&mut self, piece: &str) -> Vec<GateEvent> {
        if self.blocked {
            return Vec::new();
        }
        if self.guard.is_none() && self.extra.is_empty() {
            self.released.push_str(piece);
            return (!piece.is_empty()).then(|| GateEvent::Release(piece.to_string())).into_iter().collect();
        }
        if self.first_held.is_none() && !piece.is_empty() {
            self.first_held = Some(Instant::now());
        }
        self.held.push_str(piece);
        let mut out = Vec::new();
        let max_hold = self
            .guard
            .as_ref()
            .map(|g| g.policy().output.max_hold_chars)
            .unwrap_or(crate::policy::OutputSettings::default().max_hold_chars);
        while let Some(cut) = boundary(&self.held, max_hold) {
            let sentence: String = self.held[..cut].to_string();
            self.held.drain(..cut);
            match self.check(&sentence) {
                Some(ev @ GateEvent::Blocked(_)) => {
                    out.push(ev);
                    return out;
                }
                Some(ev) => out.push(ev),
                None => {}
            }
        }
        out
    }

    /// Generation stopped at its token limit: the sentence it was writing is unfinished, and
    /// an unfinished sentence is not shown (it is counted as dropped).
    pub fn cut(&mut self) {
        if !self.held.trim().is_empty() && !self.released.trim().is_empty() {
            self.held.clear();
            self.dropped += 1;
        }
    }

    /// The end of generation: the rest is checked like a sentence.
    pub fn finish(&mut self) -> Vec<GateEvent> {
        if self.blocked || self.held.is_empty() {
            return Vec::new();
        }
        let rest = std::mem::take(&mut self.held);
        self.check(&rest).into_iter().collect()
    }

    fn check(&mut self, sentence: &str) -> Option<GateEvent> {
        let t = Instant::now();
        let lookback = self.guard.as_ref().map(|g| g.policy().output.lookback_sentences).unwrap_or(1);
        let before = self.window[self.window.len().saturating_sub(lookback)..].concat();
        let mut verdict = None;
        if let Some(guard) = self.guard.clone() {
            let ctx = Context {
                lang: Some(&self.lang),
                vector: None,
                states: None,
                lm_state: None,
                sources: &self.sources,
                secrets: &self.secrets,
            };
            // The sentence alone (its language, its personal data), then with the window
            // before it (an expression split across sentences).
            let mut v = guard.check(Direction::Output, sentence, &ctx);
            if !v.blocked() && !before.is_empty() {
                let joined = format!("{before}{sentence}");
                let w = guard.check(Direction::Output, &joined, &Context { lang: None, ..ctx.clone() });
                if w.blocked() {
                    v = w;
                }
            }
            if v.blocked() {
                verdict = Some(Box::new(v));
            }
        }
        let mut outcome = SentenceOutcome::Pass;
        if verdict.is_none() {
            for check in &mut self.extra {
                match check(sentence, &before) {
                    SentenceOutcome::Pass => {}
                    SentenceOutcome::Block(v) => {
                        verdict = Some(v);
                        break;
                    }
                    o => outcome = o,
                }
                if matches!(outcome, SentenceOutcome::Drop) {
                    break;
                }
            }
        }
        self.check_us += t.elapsed().as_micros() as u64;
        self.sentences += 1;
        if let Some(v) = verdict {
            self.blocked = true;
            return Some(GateEvent::Blocked(v));
        }
        match outcome {
            SentenceOutcome::Drop => {
                self.dropped += 1;
                return None;
            }
            SentenceOutcome::Flag => self.flagged.push(sentence.trim().to_string()),
            _ => {}
        }
        if self.first_hold_ms.is_none() {
            self.first_hold_ms = self.first_held.map(|t| t.elapsed().as_secs_f64() * 1e3);
        }
        self.window.push(sentence.to_string());
        if self.window.len() > 8 {
            self.window.remove(0);
        }
        self.released.push_str(sentence);
        (!sentence.is_empty()).then(|| GateEvent::Release(sentence.to_string()))
    }
}

/// `text` cut into sentences (each with its terminator and trailing space), as the gate
/// cuts a stream.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(cut) = boundary(rest, usize::MAX) {
        if cut == 0 {
            break;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Where the first complete sentence of `text` ends (byte index after its terminator and any
/// closing brackets or spaces), or where a clause ends once the text is long, or `max_hold`
/// characters when nothing ends sooner. `None`: keep holding.
fn boundary(text: &str, max_hold: usize) -> Option<usize> {
    let mut chars = text.char_indices().peekable();
    let mut count = 0usize;
    let mut clause: Option<usize> = None;
    while let Some((i, c)) = chars.next() {
        count += 1;
        let next = chars.peek().map(|&(_, n)| n);
        let end = match c {
            '。' | '！' | '？' | '\n' => true,
            '!' | '?' => next.is_none_or(|n| n.is_whitespace() || !n.is_ascii()),
            // "2.4" and "e.g." stay inside a sentence; a period before a space ends one.
            '.' => next.is_some_and(char::is_whitespace),
            _ => false,
        };
        if end {
            // Take closing quotes and brackets and following spaces with the sentence.
            let mut j = i + c.len_utf8();
            for (k, n) in text[j..].char_indices() {
                if matches!(n, '」' | '』' | ')' | '）' | '"' | '\'' | ']' | ' ') {
                    continue;
                }
                j += k;
                return Some(j);
            }
            return Some(text.len());
        }
        if matches!(c, '、' | ',' | '，' | '；' | ';') && count >= 40 {
            clause = Some(i + c.len_utf8());
        }
        if count >= max_hold {
            return Some(clause.unwrap_or(i + c.len_utf8()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        assert_eq!(boundary("申請してください。次に", 200), Some("申請してください。".len()));
        assert_eq!(boundary("Version 2.4 is out. Next", 200), Some("Version 2.4 is out. ".len()));
        assert_eq!(boundary("Version 2.4 is", 200), None);
        assert_eq!(boundary("「はい」と答えます。」x", 200), Some("「はい」と答えます。」".len()));
        assert_eq!(boundary("line one\nline two", 200), Some("line one\n".len()));
        assert_eq!(boundary("abcdefghij", 5), Some(5));
    }

    fn blocked() -> Box<Verdict> {
        Box::new(Verdict {
            direction: Direction::Output,
            action: crate::Action::Block,
            findings: Vec::new(),
            redacted: None,
            took_us: 0,
        })
    }

    #[test]
    fn a_sentence_check_drops_flags_and_blocks_without_a_guard() {
        let mut gate = Gate::new(None, "en", Vec::new(), Vec::new()).with_check(Box::new(|s, _| {
            if s.contains("80") {
                SentenceOutcome::Drop
            } else if s.contains("maybe") {
                SentenceOutcome::Flag
            } else if s.contains("secret") {
                SentenceOutcome::Block(blocked())
            } else {
                SentenceOutcome::Pass
            }
        }));
        let mut shown = String::new();
        for piece in ["The hall seats ", "60. It seats 80. It is ", "maybe blue. ", "Done."] {
            for ev in gate.push(piece) {
                if let GateEvent::Release(t) = ev {
                    shown.push_str(&t);
                }
            }
        }
        for ev in gate.finish() {
            if let GateEvent::Release(t) = ev {
                shown.push_str(&t);
            }
        }
        assert_eq!(shown, "The hall seats 60. It is maybe blue. Done.");
        assert_eq!(gate.released(), shown);
        assert_eq!((gate.dropped, gate.flagged.clone()), (1, vec!["It is maybe blue.".to_string()]));
        // A block ends the stream there.
        let mut gate = Gate::new(None, "en", Vec::new(), Vec::new()).with_check(Box::new(|s, _| {
            if s.contains("secret") {
                SentenceOutcome::Block(blocked())
            } else {
                SentenceOutcome::Pass
            }
        }));
        let evs = gate.push("Fine. The secret is x. More. ");
        assert!(matches!(evs.last(), Some(GateEvent::Blocked(_))));
        assert!(gate.push("Again. ").is_empty());
        assert_eq!(gate.released(), "Fine. ");
    }
}
