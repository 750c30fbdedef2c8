//! Citations: which numbered sources an answer uses.

use std::collections::HashSet;

use kotae_index::Hit;

use crate::Citation;

pub fn citation(n: usize, h: &Hit, marked: bool) -> Citation {
    let snippet: String = h.text.chars().take(200).collect();
    Citation {
        n,
        source: h.source.clone(),
        section: h.section.clone(),
        span: h.span,
        snippet,
        chunk_id: h.chunk_id.clone(),
        kind: h.kind.clone(),
        marked,
        url: h.url.clone(),
    }
}

/// Source numbers written in the text as `[1]`, `[1, 2]`, `[1][3]` or full-width `［１］`,
/// in order of first use.
pub fn markers(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut inside: Option<String> = None;
    for c in text.chars() {
        let c = match c {
            '［' => '[',
            '］' => ']',
            '０'..='９' => char::from_u32(c as u32 - '０' as u32 + '0' as u32).unwrap_or(c),
            '、' | '，' => ',',
            c => c,
        };
        match (&mut inside, c) {
            (_, '[') => inside = Some(String::new()),
            (Some(buf), ']') => {
                for part in buf.split(',') {
                    if let Ok(n) = part.trim().parse::<usize>() {
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
                inside = None;
            }
            (Some(buf), c) if c.is_ascii_digit() || c == ',' || c == ' ' => buf.push(c),
            (Some(_), _) => inside = None,
            (None, _) => {}
        }
    }
    out
}

/// Character bigrams (lower-cased, letters and digits only): a language-neutral overlap measure.
fn bigrams(s: &str) -> HashSet<(char, char)> {
    let chars: Vec<char> = s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
    chars.windows(2).map(|w| (w[0], w[1])).collect()
}

/// The citations an answer actually uses: the sources it marks (numbers out of range are
/// ignored); when it marks none, the sources it evidently drew on, sentence by sentence: for
/// each sentence, the source holding most of its bigrams, when that is at least half of them
/// (a source is cited for what it says, not for words spread over the whole answer).
pub fn used_citations(answer: &str, sources: &[Hit]) -> Vec<Citation> {
    let marked: Vec<Citation> = markers(answer)
        .into_iter()
        .filter(|&n| n >= 1 && n <= sources.len())
        .map(|n| citation(n, &sources[n - 1], true))
        .collect();
    if !marked.is_empty() {
        return marked;
    }
    let texts: Vec<HashSet<(char, char)>> = sources.iter().map(|h| bigrams(&h.text)).collect();
    let mut used: Vec<usize> = Vec::new();
    for sentence in kotae_guard::stream::sentences(answer) {
        let a = bigrams(sentence);
        if a.len() < 4 {
            continue;
        }
        let best = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (a.intersection(t).count() as f32 / a.len() as f32, i))
            .filter(|(s, _)| *s >= 0.5)
            .max_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)));
        if let Some((_, i)) = best {
            if !used.contains(&i) {
                used.push(i);
            }
        }
    }
    used.into_iter().map(|i| citation(i + 1, &sources[i], false)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str) -> Hit {
        Hit {
            rank: 1,
            score: 1.0,
            source: "a.md".into(),
            section: "S".into(),
            chunk_id: "00".into(),
            lang: "en".into(),
            text: text.into(),
            kind: "manual".into(),
            span: (0, 1),
            dense_score: Some(0.9),
            flags: vec![],
            url: None,
        }
    }

    #[test]
    fn marker_forms() {
        let check = |t: &str, want: &[usize]| assert_eq!(markers(t), want, "{t}");
        check("Restart it [1]. Then sign in [2][1].", &[1, 2]);
        check("See [1, 3] and [2，4].", &[1, 3, 2, 4]);
        check("再起動してください［２］。", &[2]);
        check("Arrays like a[i] or [x] are not citations; [ 5 ] is.", &[5]);
        check("no markers", &[]);
    }

    #[test]
    fn used_sources() {
        let s = vec![hit("Restart the VPN client and sign in again."), hit("Expenses are due on the 10th.")];
        let c = used_citations("Restart the VPN client [1]. Also [7].", &s);
        assert_eq!(c.iter().map(|c| (c.n, c.marked)).collect::<Vec<_>>(), vec![(1, true)]);
        let c = used_citations("Expenses are due on the 10th.", &s);
        assert_eq!(c.iter().map(|c| (c.n, c.marked)).collect::<Vec<_>>(), vec![(2, false)]);
        assert!(used_citations("I do not know.", &s).is_empty());
        // Sentence by sentence: each cites the source it comes from; words spread over both
        // sources do not make a third one count.
        let s = vec![
            hit("Restart the VPN client and sign in again."),
            hit("Expenses are due on the 10th."),
            hit("The VPN client restart and expenses due dates are listed in the portal sign in page."),
        ];
        let c = used_citations("Restart the VPN client and sign in again. Expenses are due on the 10th.", &s);
        assert_eq!(c.iter().map(|c| c.n).collect::<Vec<_>>(), vec![1, 2]);
        let c = used_citations("Expenses are due on the 10th. Our cafeteria opens at noon.", &s);
        assert_eq!(c.iter().map(|c| c.n).collect::<Vec<_>>(), vec![2]);
    }
}
