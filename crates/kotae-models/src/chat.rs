//! How a generator wants its input: the tokenizer, the model's own chat template and its
//! stop tokens. Shared (read-only) between request threads, which build and measure prompts,
//! and the worker that runs the model.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// End-of-turn tokens used by the model families we know; whichever of them the vocabulary
/// has are stop tokens, besides the declared end-of-sequence token (as llama.cpp does).
const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>", "<|end|>", "</s>"];

/// Tokenizer + chat template + stop tokens of one generator.
pub struct PromptFormat {
    tokenizer: Tokenizer,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    template: String,
    stop_ids: BTreeSet<u32>,
    context_length: usize,
    non_japanese_han: OnceLock<Vec<u32>>,
    /// The text of every special or added token (`<|im_end|>`, `</s>`…), longest first.
    control: Vec<String>,
}

impl std::fmt::Debug for PromptFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptFormat")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("stop_ids", &self.stop_ids)
            .field("context_length", &self.context_length)
            .finish()
    }
}

impl PromptFormat {
    /// `template` is the model's Jinja chat template (from GGUF metadata or
    /// `tokenizer_config.json`); models without one cannot chat and are rejected.
    pub fn new(
        tokenizer: Tokenizer,
        template: Option<&str>,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        context_length: usize,
        model: &str,
    ) -> Result<Self> {
        let template = template.ok_or_else(|| {
            Error::invalid(
                model,
                "the model has no chat template (tokenizer.chat_template); it cannot be used for chat",
            )
        })?;
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| Error::invalid(model, format!("chat template does not parse: {e}")))?;
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let bos_token = token(bos_id);
        let eos_token = token(eos_id);
        let mut stop_ids: BTreeSet<u32> = eos_id.into_iter().collect();
        stop_ids.extend(END_OF_TURN.iter().filter_map(|t| tokenizer.token_to_id(t)));
        let mut control: Vec<String> = tokenizer
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && !t.content.trim().is_empty())
            .map(|t| t.content.clone())
            .chain(END_OF_TURN.iter().map(|t| t.to_string()))
            .chain([bos_token.clone(), eos_token.clone()])
            .filter(|t| t.chars().count() >= 2)
            .collect();
        control.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        control.dedup();
        Ok(Self {
            tokenizer,
            env,
            bos_token,
            eos_token,
            bos_id,
            eos_id,
            template: template.to_string(),
            stop_ids,
            context_length,
            non_japanese_han: OnceLock::new(),
            control,
        })
    }

    /// The conversation rendered by the model's template, ending with the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_with(messages, true)
    }

    /// A finished conversation (its last message included, no new turn opened): what a
    /// training example looks like.
    pub fn render_conversation(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_with(messages, false)
    }

    fn render_with(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| Error::Template(format!("{e:#}")))
    }

    /// `text` (a user's message, a document, an earlier answer) made unable to produce a
    /// control token: every special or added token's text in it is broken with a zero-width
    /// space after its first character, so the tokenizer reads it as plain characters. The
    /// template's own tokens, rendered around the text, stay real.
    pub fn neutralize(&self, text: &str) -> String {
        if !self.control.iter().any(|t| text.contains(t.as_str())) {
            return text.to_string();
        }
        let mut out = text.to_string();
        for t in &self.control {
            if out.contains(t.as_str()) {
                let first = t.chars().next().map(char::len_utf8).unwrap_or(0);
                let broken = format!("{}\u{200b}{}", &t[..first], &t[first..]);
                out = out.replace(t.as_str(), &broken);
            }
        }
        out
    }

    /// Token ids of a rendered prompt (special tokens in the text are matched whole; nothing
    /// is added: the template writes `bos_token` itself where the model wants it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode_fast(text, false)?.get_ids().to_vec())
    }

    /// Number of tokens of `text`.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode_fast(text, false)?.len())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(ids, true)?)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Beginning- and end-of-sequence tokens as text (empty when the model has none).
    pub fn special_tokens(&self) -> (&str, &str) {
        (&self.bos_token, &self.eos_token)
    }

    /// The Jinja chat template.
    pub fn chat_template(&self) -> &str {
        &self.template
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    pub fn stop_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.stop_ids.iter().copied()
    }

    /// Tokens whose text holds a Han character that Japanese does not use (outside JIS X 0208
    /// and its Windows extensions, e.g. the Simplified 东 for 東). Masking them keeps a
    /// Chinese-heavy model from leaking Chinese characters into Japanese answers.
    pub fn non_japanese_han_ids(&self) -> &[u32] {
        self.non_japanese_han.get_or_init(|| {
            (0..self.tokenizer.get_vocab_size(true) as u32)
                .filter(|&id| self.tokenizer.decode(&[id], false).is_ok_and(|t| t.chars().any(is_non_japanese_han)))
                .collect()
        })
    }

    /// Longest sequence (prompt + answer) the model handles.
    pub fn context_length(&self) -> usize {
        self.context_length
    }
}

/// A CJK ideograph that cannot be written in Shift_JIS (Windows-31J), i.e. not Japanese.
pub fn is_non_japanese_han(c: char) -> bool {
    let han = matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F);
    if !han {
        return false;
    }
    let mut buf = [0u8; 4];
    let (_, _, unmappable) = encoding_rs::SHIFT_JIS.encode(c.encode_utf8(&mut buf));
    unmappable
}

/// Turns a growing list of token ids into text pieces, never splitting a UTF-8 character
/// that spans several byte-level tokens.
#[derive(Debug, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    prev: usize,
    current: usize,
}

impl TextStream {
    /// The text that pushing `id` would release, without pushing it.
    pub fn peek(&self, fmt: &PromptFormat, id: u32) -> Result<Option<String>> {
        let before = fmt.decode(&self.tokens[self.prev..self.current])?;
        let mut ids = self.tokens[self.prev..].to_vec();
        ids.push(id);
        let text = fmt.decode(&ids)?;
        Ok((text.len() > before.len() && !text.ends_with('\u{FFFD}') && text.is_char_boundary(before.len()))
            .then(|| text[before.len()..].to_string()))
    }

    pub fn push(&mut self, fmt: &PromptFormat, id: u32) -> Result<Option<String>> {
        let piece = self.peek(fmt, id)?;
        self.tokens.push(id);
        if piece.is_some() {
            self.prev = self.current;
            self.current = self.tokens.len();
        }
        Ok(piece)
    }
}

/// Holds back text that might be the start of a stop string, and cuts at the first one.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), text: String::new(), emitted: 0 }
    }

    /// Add generated text; returns what can be shown now and whether a stop string was hit.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let tail = &self.text[self.emitted..];
        if let Some(cut) = self.stops.iter().filter_map(|s| tail.find(s.as_str())).min() {
            let out = tail[..cut].to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        // Keep back the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1).chain(std::iter::once((s.len(), ' '))) {
                if i <= tail.len() && tail.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let upto = self.text.len() - keep;
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        (out, false)
    }

    /// Whatever was held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

/// Whether appending `piece` to `text` repeats a run of `n` characters that `text` already
/// holds: character n-gram blocking, which works for Japanese (no spaces, tokens of one to
/// four characters) where token n-grams do not. Runs without a letter, digit or ideograph
/// (rules, dots, table borders) may repeat.
/// Whether `piece` would open the text (nothing but space written before it) with a bracket.
pub fn opens_with_bracket(text: &str, piece: &str) -> bool {
    text.trim().is_empty() && matches!(piece.trim_start().chars().next(), Some('[' | '［'))
}

pub fn repeats_chars(text: &str, piece: &str, n: usize) -> bool {
    if n == 0 || piece.is_empty() {
        return false;
    }
    let prior: Vec<char> = text.chars().collect();
    let all: Vec<char> = prior.iter().copied().chain(piece.chars()).collect();
    if all.len() <= n {
        return false;
    }
    let prior_s: String = prior.iter().collect();
    (prior.len() + 1..=all.len()).filter(|&end| end >= n).any(|end| {
        let gram = &all[end - n..end];
        gram.iter().any(|c| c.is_alphanumeric()) && prior_s.contains(&gram.iter().collect::<String>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_runs_are_not_repeated() {
        let text = "産休は出産予定日の6週間前から取得できます。";
        // The model starts the same clause again: blocked once 8 characters would repeat.
        assert!(repeats_chars(text, "産休は出産予定日の", 8));
        assert!(!repeats_chars(text, "申請は", 8));
        // A new piece that only continues fresh text is fine, and short runs may repeat.
        assert!(!repeats_chars("有給休暇は", "3営業日前", 8));
        assert!(!repeats_chars("有給休暇は10日。", "有給休暇", 8));
        // Runs without letters (rules, dots) may repeat; 0 turns the check off.
        assert!(!repeats_chars("--------\n", "--------", 8));
        assert!(!repeats_chars(text, text, 0));
    }

    #[test]
    fn only_the_opening_bracket_is_caught() {
        assert!(opens_with_bracket("", "[1"));
        assert!(opens_with_bracket(" \n", " ［"));
        assert!(!opens_with_bracket("", "有給"));
        assert!(!opens_with_bracket("有給休暇は10日です", "[1]"));
        assert!(!opens_with_bracket("", ""));
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn japanese_han() {
        for c in ['東', '京', '経', '費', '申', '請', '鬱', '髙'] {
            assert!(!is_non_japanese_han(c), "{c}");
        }
        for c in ['东', '经', '费', '请', '们'] {
            assert!(is_non_japanese_han(c), "{c}");
        }
        assert!(!is_non_japanese_han('a') && !is_non_japanese_han('あ') && !is_non_japanese_han('々'));
    }

    #[test]
    fn stop_strings() {
        assert_eq!(run(&[], &["ab", "cd"]), ("abcd".into(), false));
        assert_eq!(run(&["\nUser:"], &["hello", "\nUs", "er:", " x"]), ("hello".into(), true));
        assert_eq!(run(&["\nUser:"], &["hello", "\nUs", "ed"]), ("hello\nUsed".into(), false));
        assert_eq!(run(&["END"], &["aEN", "Dz"]), ("a".into(), true));
        assert_eq!(run(&["終わり"], &["答え終", "わり"]), ("答え".into(), true));
    }
}
