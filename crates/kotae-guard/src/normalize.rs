//! The forms of a text that the rules read: obfuscation undone before matching.
//!
//! `plain` is NFKC (full-width ASCII and half-width katakana folded), lower-cased, with
//! zero-width characters gone. `folded` goes further: katakana as hiragana, leetspeak digits
//! inside words as letters (`k1ll` → `kill`), letters spaced or dotted apart joined
//! (`k i l l`, `b.o.m.b` → `kill`, `bomb`), and spaces or symbols between Japanese characters
//! dropped (`死 ね`, `し・ね` → `しね`). Rules run on both forms.

/// A text in the forms the detectors read.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub plain: String,
    pub folded: String,
}

impl Normalized {
    pub fn new(text: &str) -> Self {
        let plain = kotae_ingest::clean::normalize(text).to_lowercase();
        let folded = fold(&plain);
        Self { plain, folded }
    }
}

fn is_japanese(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF66..=0xFF9F)
}

fn katakana_to_hiragana(c: char) -> char {
    match c as u32 {
        // ァ..ヶ → ぁ..ゖ
        v @ 0x30A1..=0x30F6 => char::from_u32(v - 0x60).unwrap_or(c),
        _ => c,
    }
}

fn leet(c: char) -> char {
    match c {
        '0' => 'o',
        '1' | '!' | '|' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' | '+' => 't',
        '8' => 'b',
        '9' => 'g',
        _ => c,
    }
}

/// Separators people put between the letters of a word to slip past a filter.
fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '.' | '-' | '_' | '*' | '・' | '･' | '~' | '、' | ',' | '|')
}

fn fold(plain: &str) -> String {
    // 1. Leetspeak: inside a word with at least two ASCII letters, digits and symbols that
    //    stand for letters are read as letters (`k1ll`, `b0mb`); "2024", "v2.4" and trailing
    //    punctuation are left alone.
    let mut words = String::with_capacity(plain.len());
    for (i, w) in plain.split(' ').enumerate() {
        if i > 0 {
            words.push(' ');
        }
        let core = w.trim_end_matches(['!', '?', '.', ',', ':', ';']);
        let letters = core.chars().filter(|c| c.is_ascii_alphabetic()).count();
        let subs = core.chars().filter(|&c| leet(c) != c).count();
        if letters >= 2 && subs > 0 && subs <= letters && !core.contains(['.', ',']) {
            words.extend(core.chars().map(leet));
            words.push_str(&w[core.len()..]);
        } else {
            words.push_str(w);
        }
    }
    // 2. Katakana → hiragana; separators between Japanese characters dropped (`死 ね`);
    //    runs of three or more single letters with the same separator joined (`k i l l`,
    //    `b.o.m.b`), which leaves "a b" and "2.4.1" alone.
    let chars: Vec<char> = words.chars().map(katakana_to_hiragana).collect();
    let n = chars.len();
    let lone = |k: usize| {
        chars[k].is_alphabetic()
            && !is_japanese(chars[k])
            && (k == 0 || !chars[k - 1].is_alphanumeric())
            && (k + 1 >= n || !chars[k + 1].is_alphanumeric())
    };
    let mut drop = vec![false; n];
    let mut k = 0;
    while k < n {
        if lone(k) && k + 2 < n && is_separator(chars[k + 1]) {
            let sep = chars[k + 1];
            let mut end = k;
            while end + 2 < n && chars[end + 1] == sep && lone(end + 2) {
                end += 2;
            }
            if (end - k) / 2 + 1 >= 3 {
                for d in (k + 1..end).step_by(2) {
                    drop[d] = true;
                }
                k = end + 1;
                continue;
            }
        }
        k += 1;
    }
    let mut out = String::with_capacity(words.len());
    let mut i = 0;
    while i < n {
        if drop[i] {
            i += 1;
            continue;
        }
        let c = chars[i];
        if is_separator(c) && c != '.' {
            let mut j = i;
            while j < n && is_separator(chars[j]) && !drop[j] {
                j += 1;
            }
            let prev = out.chars().next_back();
            let next = chars.get(j).copied();
            if prev.is_some_and(is_japanese) && next.is_some_and(is_japanese) {
                i = j;
                continue;
            }
        }
        out.push(if c == '・' || c == '･' { ' ' } else { c });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, folded: &str) {
        assert_eq!(Normalized::new(input).folded, folded, "input: {input}");
    }

    #[test]
    fn undoes_obfuscation() {
        check("how to k1ll my b0ss", "how to kill my boss");
        check("make a b.o.m.b", "make a bomb");
        check("see https://intra.example.com/a/b/c now", "see https://intra.example.com/a/b/c now");
        check("k i l l him", "kill him");
        check("死 ね", "死ね");
        check("a b test", "a b test");
        check("you are a f.u.c.k.i.n.g idiot", "you are a fucking idiot");
        check("し・ね", "しね");
        check("ｼﾈ", "しね");
        check("ＫＩＬＬ", "kill");
        check("カタワ", "かたわ");
        // Ordinary text stays readable.
        check("version 2.4.1 on 2024-04-01", "version 2.4.1 on 2024-04-01");
        check("What is SSO?", "what is sso?");
        check("VPNに接続できない", "vpnにせつぞくできない".replace("せつぞく", "接続").as_str());
        check("Hello!", "hello!");
    }
}
