//! Text cleaning: Unicode normalization, boilerplate lines, personal data, language.

use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// NFKC (full-width ASCII → half-width, half-width katakana → full-width), `\r\n` → `\n`,
/// zero-width and control characters dropped, the ideographic space made a plain space.
pub fn normalize(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    text.nfkc()
        .filter(|&c| {
            !matches!(c, '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{feff}' | '\u{00ad}')
                && (!c.is_control() || c == '\n' || c == '\t')
        })
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect()
}

static BOILERPLATE: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"(?i)^\s*(copyright\s*)?(\(c\)|©)\s*\d{4}.*$",
        r"(?i)^\s*copyright\b.*all rights reserved\.?\s*$",
        r"(?i)^\s*all rights reserved\.?\s*$",
        r"(?i)^\s*page\s+\d+(\s+of\s+\d+)?\s*$",
        r"^\s*-\s*\d+\s*-\s*$",
        r"^\s*\d+\s*/\s*\d+\s*$",
        r"^\s*(社外秘|無断転載禁止|無断複製禁止|このページの先頭へ|ページの先頭へ戻る|目次へ戻る)\s*$",
        r"(?i)^\s*(confidential|internal use only|back to top|print this page)\s*$",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("valid boilerplate regex"))
    .collect()
});

static MARKER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(社外秘|部外秘|関係者外秘|社内限り|取扱注意|極秘|\bstrictly confidential\b|\bconfidential\b|\binternal use only\b|\binternal only\b|\bdo not distribute\b)",
    )
    .expect("valid marker regex")
});

/// The confidentiality marker of a short, label-like line (`社外秘`, `【社外秘】`,
/// `CONFIDENTIAL - Internal use only`), lowercase; `None` for other lines (a sentence that
/// mentions confidential data is not a marker).
pub fn confidentiality_marker(line: &str) -> Option<String> {
    let t = line.trim();
    if t.is_empty() || t.chars().count() > 40 || t.ends_with(['.', '。', '?', '？']) {
        return None;
    }
    MARKER.find(t).map(|m| m.as_str().to_lowercase())
}

/// Whether a whole line is boilerplate (copyright footers, page numbers, "back to top").
pub fn is_boilerplate_line(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && BOILERPLATE.iter().any(|r| r.is_match(t))
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").unwrap());
// Japanese numbers (03-1234-5678, 090-1234-5678, 0120-123-456, 0312345678) and international
// ones (+81 3 1234 5678, +1 (415) 555-0100, +44 20 7946 0958).
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        (?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,3})
        | (?:\(\d{2,4}\)\s?\d{1,4}[\s.-]?\d{3,4})
        | (?:(?-u:\b)0\d{1,4}-\d{1,4}-\d{3,4}(?-u:\b))
        | (?:(?-u:\b)0[5789]0\d{8}(?-u:\b))
        | (?:(?-u:\b)0\d{9}(?-u:\b))
        | (?:(?-u:\b)\d{3}-\d{3}-\d{4}(?-u:\b))",
    )
    .unwrap()
});
static CARD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?-u:\b)\d(?:[ -]?\d){12,18}(?-u:\b)").unwrap());

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

// Postal addresses: Japanese (prefecture, municipality, block numbers) and English street
// addresses.
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        (?:〒\s?\d{3}-?\d{4}\s*)?
        (?:東京都|北海道|京都府|大阪府|\p{Han}{2,3}県)
        [\p{Han}\p{Hiragana}\p{Katakana}ー]{1,10}?[市区町村郡]
        [\p{Han}\p{Hiragana}\p{Katakana}ー]{0,12}?
        \d{1,4}\s?(?:丁目|番地?|[-－−‐])\s?\d{1,4}(?:\s?(?:番地?|号|[-－−‐])\s?\d{0,4})?
        | (?-u:\b)\d{1,5}\s[A-Z][a-z]+(?:\s[A-Z][a-z]+)?\s(?:Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?)(?-u:\b)
        | 〒\s?\d{3}-\d{4}",
    )
    .unwrap()
});
// Japan's Individual Number (マイナンバー): 12 digits whose last is a check digit, named as
// such nearby (one random 12-digit ID in eleven passes the check digit alone: an order number
// or an account id must stay).
static MY_NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:マイナンバー|個人番号|my ?number|individual number)[^\d]{0,12}(\d{4}[ -]?\d{4}[ -]?\d{4})(?-u:\b)",
    )
    .unwrap()
});

fn my_number_check(digits: &[u32]) -> bool {
    if digits.len() != 12 {
        return false;
    }
    let sum: u32 = (1..=11).map(|n| digits[11 - n] * if n <= 6 { n as u32 + 1 } else { n as u32 - 5 }).sum();
    let r = sum % 11;
    digits[11] == if r <= 1 { 0 } else { 11 - r }
}

/// One piece of personal data in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiSpan {
    /// `card`, `email`, `phone`, `address`, `my_number`.
    pub kind: &'static str,
    /// Byte range in the text.
    pub range: std::ops::Range<usize>,
}

/// Personal data in `text`: payment cards (Luhn-valid), e-mail addresses, phone numbers
/// (9+ digits), postal addresses, Individual Numbers; non-overlapping, in text order.
pub fn find_pii(text: &str) -> Vec<PiiSpan> {
    let mut spans: Vec<PiiSpan> = Vec::new();
    let mut add = |kind: &'static str, r: std::ops::Range<usize>| {
        if !spans.iter().any(|s| s.range.start < r.end && r.start < s.range.end) {
            spans.push(PiiSpan { kind, range: r });
        }
    };
    let digits = |s: &str| -> Vec<u32> { s.chars().filter_map(|ch| ch.to_digit(10)).collect() };
    // Cards first: a card number also looks like a long phone number.
    for m in CARD.find_iter(text) {
        let d = digits(m.as_str());
        if (13..=19).contains(&d.len()) && luhn(&d) {
            add("card", m.range());
        }
    }
    for c in MY_NUMBER.captures_iter(text) {
        let m = c.get(1).expect("group 1");
        if my_number_check(&digits(m.as_str())) {
            add("my_number", m.range());
        }
    }
    for m in EMAIL.find_iter(text) {
        add("email", m.range());
    }
    for m in ADDRESS.find_iter(text) {
        add("address", m.range());
    }
    for m in PHONE.find_iter(text) {
        if m.as_str().chars().filter(|ch| ch.is_ascii_digit()).count() >= 9 {
            add("phone", m.range());
        }
    }
    spans.sort_by_key(|s| s.range.start);
    spans
}

/// Replace personal data ([`find_pii`]) with placeholders (`[EMAIL]`, `[PHONE]`, `[CARD]`,
/// `[ADDRESS]`, `[MY_NUMBER]`). Returns the redacted text and how many items were replaced.
pub fn redact_pii(text: &str) -> (String, usize) {
    let spans = find_pii(text);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for s in &spans {
        out.push_str(&text[at..s.range.start]);
        out.push('[');
        out.push_str(&s.kind.to_uppercase());
        out.push(']');
        at = s.range.end;
    }
    out.push_str(&text[at..]);
    (out, spans.len())
}

/// Language of a piece of text as an ISO 639-1 code. Any kana means Japanese; otherwise
/// `whatlang` decides, with short or mostly-ASCII text taken as English.
pub fn detect_lang(text: &str) -> String {
    let mut kana = 0usize;
    let mut han = 0usize;
    let mut letters = 0usize;
    for c in text.chars() {
        match c {
            '\u{3040}'..='\u{30ff}' | '\u{31f0}'..='\u{31ff}' => kana += 1,
            '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}' => han += 1,
            c if c.is_alphabetic() => letters += 1,
            _ => {}
        }
    }
    if (kana > 0 && (kana + han) * 10 >= letters)
        || (kana == 0 && han_only_is_japanese(han, letters, text.chars().count()))
    {
        return "ja".into();
    }
    match whatlang::detect(text) {
        Some(info) if info.is_reliable() || han > letters => {
            let code = info.lang().code(); // ISO 639-3
            match code {
                "eng" => "en",
                "jpn" => "ja",
                "cmn" => "zh",
                "kor" => "ko",
                "deu" => "de",
                "fra" => "fr",
                "spa" => "es",
                "por" => "pt",
                "ita" => "it",
                "rus" => "ru",
                other => return other.to_string(),
            }
            .to_string()
        }
        _ => if han > letters { "ja" } else { "en" }.into(),
    }
}

/// Kanji-only text (経費精算) is Japanese in a Japanese/English product unless it is long
/// enough for the detector to be sure it is Chinese.
fn han_only_is_japanese(han: usize, letters: usize, chars: usize) -> bool {
    han > letters && chars < 40
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_redact(input: &str, expected: &str) {
        assert_eq!(redact_pii(input).0, expected, "input: {input}");
    }

    #[test]
    fn redacts_personal_data() {
        check_redact("mail taro.yamada@example.co.jp please", "mail [EMAIL] please");
        check_redact("電話は03-1234-5678まで", "電話は[PHONE]まで");
        check_redact("携帯 090-1234-5678 です", "携帯 [PHONE] です");
        check_redact("call +81 3 1234 5678 now", "call [PHONE] now");
        check_redact("call +1 (415) 555-0100.", "call [PHONE].");
        check_redact("card 4111 1111 1111 1111 ok", "card [CARD] ok");
        check_redact("card 4111-1111-1111-1111", "card [CARD]");
        // Not personal data: versions, dates, ticket numbers, a 16-digit non-Luhn number.
        check_redact("version 2.4.1 on 2024-04-01", "version 2.4.1 on 2024-04-01");
        check_redact("ticket INC-20240401", "ticket INC-20240401");
        check_redact("id 1234 5678 9012 3456", "id 1234 5678 9012 3456");
        check_redact("住所は東京都港区芝公園4丁目2-8です", "住所は[ADDRESS]です");
        check_redact("大阪府大阪市北区梅田1-2-3に住む", "[ADDRESS]に住む");
        check_redact("lives at 42 Maple Street, Springfield", "lives at [ADDRESS], Springfield");
        check_redact("マイナンバーは123456789018", "マイナンバーは[MY_NUMBER]");
        check_redact("order 123456789018 shipped", "order 123456789018 shipped");
        check_redact("Step 3 Open Google Drive", "Step 3 Open Google Drive");
        // Not an address: a floor and room number, a date.
        check_redact("会議室は3階の301です。2024年4月1日から", "会議室は3階の301です。2024年4月1日から");
    }

    #[test]
    fn normalizes_widths() {
        assert_eq!(normalize("ＶＰＮ　ｶﾞｲﾄﾞ１２３"), "VPN ガイド123");
        assert_eq!(normalize("a\r\nb\u{200b}c"), "a\nbc");
    }

    #[test]
    fn detects_languages() {
        assert_eq!(detect_lang("VPNに接続できない場合は再起動してください"), "ja");
        assert_eq!(detect_lang("How do I reset my password if I forgot it?"), "en");
        assert_eq!(detect_lang("経費精算"), "ja");
    }

    #[test]
    fn boilerplate_lines() {
        assert!(is_boilerplate_line("© 2024 Example Corp. All rights reserved."));
        assert!(is_boilerplate_line("Page 3 of 10"));
        assert!(is_boilerplate_line("社外秘"));
        assert_eq!(confidentiality_marker(" 社外秘 ").as_deref(), Some("社外秘"));
        assert_eq!(confidentiality_marker("【社外秘】経費精算の手引き").as_deref(), Some("社外秘"));
        assert_eq!(confidentiality_marker("CONFIDENTIAL").as_deref(), Some("confidential"));
        assert_eq!(confidentiality_marker("Internal use only").as_deref(), Some("internal use only"));
        assert_eq!(confidentiality_marker("Never print confidential documents on a personal printer."), None);
        assert_eq!(confidentiality_marker("Page 3 of 10"), None);
        assert!(!is_boilerplate_line("Restart the router and wait for the page to load."));
    }
}
