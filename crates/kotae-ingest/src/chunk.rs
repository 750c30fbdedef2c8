//! Structure-aware chunking under a token budget.
//!
//! Consecutive blocks of one section are packed into a chunk while they fit the budget; a new
//! section starts a new chunk; an oversized paragraph is split at sentence ends; code blocks and
//! tables are never split (they may exceed the budget, and the embedder then counts the cut).

use std::ops::Range;

use crate::clean::detect_lang;
use crate::parse::ParsedDoc;
use crate::{Chunk, SourceKind};

#[derive(Debug, Clone)]
pub struct ChunkerConfig {
    /// Token budget per chunk, measured by the embedder's tokenizer (text only, no prefix).
    pub max_tokens: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self { max_tokens: 320 }
    }
}

/// Byte offsets just after each sentence end in `s` (`。！？!?` , `. `, newline), plus `s.len()`.
fn sentence_ends(s: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let end = i + c.len_utf8();
        let boundary = match c {
            '。' | '！' | '？' | '\n' => true,
            '.' | '!' | '?' => it.peek().is_none_or(|(_, n)| n.is_whitespace()),
            _ => false,
        };
        if boundary {
            ends.push(end);
        }
    }
    if ends.last() != Some(&s.len()) {
        ends.push(s.len());
    }
    ends
}

/// Cut `s[a..b]` (one overlong sentence) into the longest prefixes that fit `max` tokens, found by
/// binary search over character boundaries; a single character over budget stands alone.
fn split_chars(s: &str, a: usize, b: usize, max: usize, count: &dyn Fn(&str) -> usize) -> Vec<Range<usize>> {
    let bounds: Vec<usize> = (a..=b).filter(|&k| s.is_char_boundary(k)).collect();
    let mut out = Vec::new();
    let mut i = 0; // index into bounds of the current start
    while i + 1 < bounds.len() {
        // largest j > i with count(s[bounds[i]..bounds[j]]) <= max, at least i + 1
        let (mut lo, mut hi) = (i + 1, bounds.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if count(&s[bounds[i]..bounds[mid]]) <= max {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        out.push(bounds[i]..bounds[lo]);
        i = lo;
    }
    out
}

/// Split `span` of `text` into pieces of at most `max` tokens: whole sentences packed greedily,
/// overlong sentences cut by [`split_chars`]. Pieces are trimmed; empty ones dropped.
fn split_span(text: &str, span: Range<usize>, max: usize, count: &dyn Fn(&str) -> usize) -> Vec<Range<usize>> {
    let s = &text[span.clone()];
    let mut units = Vec::new();
    let mut prev = 0;
    for e in sentence_ends(s) {
        if count(&s[prev..e]) > max {
            units.extend(split_chars(s, prev, e, max, count));
        } else {
            units.push(prev..e);
        }
        prev = e;
    }
    let mut pieces: Vec<Range<usize>> = Vec::new();
    for u in units {
        match pieces.last_mut() {
            Some(c) if count(&s[c.start..u.end]) <= max => c.end = u.end,
            _ => pieces.push(u),
        }
    }
    pieces
        .into_iter()
        .filter_map(|r| {
            let piece = &s[r.clone()];
            let lead = piece.len() - piece.trim_start().len();
            let trimmed = piece.trim();
            (!trimmed.is_empty()).then(|| span.start + r.start + lead..span.start + r.start + lead + trimmed.len())
        })
        .collect()
}

/// Chunk a parsed document.
pub fn chunk_document(
    source: &str,
    kind: SourceKind,
    doc: &ParsedDoc,
    cfg: &ChunkerConfig,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    let title = doc.title.clone().unwrap_or_default();
    let mut spans: Vec<(Range<usize>, Vec<String>)> = Vec::new();
    let mut cur: Option<(Range<usize>, Vec<String>, usize)> = None;
    let flush = |cur: &mut Option<(Range<usize>, Vec<String>, usize)>, spans: &mut Vec<(Range<usize>, Vec<String>)>| {
        if let Some((r, s, _)) = cur.take() {
            spans.push((r, s));
        }
    };
    for block in &doc.blocks {
        let tokens = count_tokens(&doc.text[block.span.clone()]);
        let pieces = if tokens > cfg.max_tokens && !block.atomic {
            split_span(&doc.text, block.span.clone(), cfg.max_tokens, count_tokens)
        } else {
            vec![block.span.clone()]
        };
        for piece in pieces {
            let t = if piece == block.span { tokens } else { count_tokens(&doc.text[piece.clone()]) };
            match cur.as_mut() {
                Some((r, s, n)) if *s == block.section && *n + t <= cfg.max_tokens => {
                    r.end = piece.end;
                    *n += t;
                }
                _ => {
                    flush(&mut cur, &mut spans);
                    cur = Some((piece, block.section.clone(), t));
                }
            }
        }
    }
    flush(&mut cur, &mut spans);
    spans
        .into_iter()
        .enumerate()
        .map(|(i, (span, mut section))| {
            if !title.is_empty() && section.first() != Some(&title) {
                section.insert(0, title.clone());
            }
            let text = doc.text[span.clone()].to_string();
            Chunk {
                source: source.to_string(),
                kind,
                lang: detect_lang(&text),
                section,
                span,
                text,
                ordinal: i as u32,
                timestamp: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_markdown, parse_plain};
    use proptest::prelude::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count() + s.chars().filter(|c| !c.is_ascii()).count()
    }

    #[test]
    fn packs_blocks_and_keeps_sections_apart() {
        let md = "# T\n\na b c\n\nd e f\n\n## S\n\ng h\n";
        let doc = parse_markdown(md);
        let chunks = chunk_document("t.md", SourceKind::Manual, &doc, &ChunkerConfig { max_tokens: 100 }, &words);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, vec!["# T\n\na b c\n\nd e f", "## S\n\ng h"]);
        assert_eq!(chunks[1].section, vec!["T", "S"]);
        assert_eq!(chunks[1].ordinal, 1);
    }

    #[test]
    fn splits_long_paragraphs_at_sentences() {
        let doc = parse_plain("One two three. Four five six. Seven eight nine.");
        let chunks = chunk_document("a.txt", SourceKind::Manual, &doc, &ChunkerConfig { max_tokens: 4 }, &words);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, vec!["One two three.", "Four five six.", "Seven eight nine."]);
    }

    #[test]
    fn never_splits_code() {
        let md = "# T\n\n```\na b c d e f g h i j\n\nk l m n\n```\n";
        let doc = parse_markdown(md);
        let chunks = chunk_document("t.md", SourceKind::Manual, &doc, &ChunkerConfig { max_tokens: 3 }, &words);
        assert!(chunks.iter().any(|c| c.text.starts_with("```") && c.text.ends_with("```")));
    }

    proptest! {
        // Chunks are ordered, disjoint, lie within the text and together cover every
        // non-whitespace character of every block.
        #[test]
        fn chunks_cover_their_source(paras in prop::collection::vec("[a-z あいう。.]{0,80}", 1..12), max in 1usize..30) {
            let text = paras.iter().enumerate().map(|(i, p)| if i % 4 == 0 { format!("## H{i}\n\n{p}") } else { p.clone() }).collect::<Vec<_>>().join("\n\n");
            let doc = parse_markdown(&text);
            let chunks = chunk_document("p.md", SourceKind::Manual, &doc, &ChunkerConfig { max_tokens: max }, &words);
            let mut covered = vec![false; doc.text.len()];
            let mut prev_end = 0;
            for c in &chunks {
                prop_assert!(c.span.start >= prev_end && c.span.end <= doc.text.len());
                prop_assert_eq!(&doc.text[c.span.clone()], c.text.as_str());
                prev_end = c.span.end;
                for b in c.span.clone() { covered[b] = true; }
            }
            for b in &doc.blocks {
                for (i, ch) in doc.text[b.span.clone()].char_indices() {
                    if !ch.is_whitespace() {
                        prop_assert!(covered[b.span.start + i], "byte {} ({:?}) not covered", b.span.start + i, ch);
                    }
                }
            }
        }
    }
}
