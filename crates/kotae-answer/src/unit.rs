//! The unit a question asks a number of (何枚 → pages, "how many devices" → devices, いくら →
//! yen), and whether a text states such a number. A source on the right topic that never
//! states a number of that unit does not answer the question: the guest Wi-Fi section that
//! says nothing of how many devices one code connects is about the question, not its answer.

use std::sync::LazyLock;

use regex::Regex;

/// A kind of quantity: its Japanese counters and its English words (singular; plurals match).
struct Unit {
    ja: &'static [&'static str],
    en: &'static [&'static str],
}

const UNITS: &[Unit] = &[
    Unit { ja: &["日", "営業日"], en: &["day", "business day", "working day"] },
    Unit { ja: &["時間"], en: &["hour", "hr"] },
    Unit { ja: &["分"], en: &["minute", "min"] },
    Unit { ja: &["秒"], en: &["second", "sec"] },
    Unit { ja: &["週", "週間"], en: &["week"] },
    Unit { ja: &["か月", "ヶ月", "カ月", "ヵ月", "箇月", "月"], en: &["month"] },
    Unit { ja: &["年"], en: &["year"] },
    Unit { ja: &["回", "度"], en: &["time"] },
    Unit { ja: &["人", "名"], en: &["people", "person", "employee", "participant", "guest", "member", "attendee"] },
    Unit { ja: &["枚", "ページ"], en: &["page", "sheet", "print"] },
    Unit { ja: &["台"], en: &["device", "machine", "computer", "pc", "laptop", "terminal", "phone", "monitor"] },
    Unit { ja: &["個", "件", "点", "つ"], en: &["item", "piece", "file", "attachment"] },
    Unit { ja: &["円"], en: &["yen", "jpy"] },
    Unit { ja: &["%", "％", "パーセント", "割"], en: &["percent", "%"] },
    Unit { ja: &["歳"], en: &["years old", "age"] },
    Unit { ja: &["GB", "MB", "TB"], en: &["gb", "mb", "tb", "gigabyte", "megabyte", "terabyte"] },
    Unit { ja: &["錠"], en: &["tablet", "pill", "dose"] },
    Unit { ja: &["文字", "桁"], en: &["character", "digit", "letter"] },
];

/// What a question asks a number of: indices into `UNITS` (several for "how long").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked(Vec<usize>);

const MONEY: usize = 12;
const DURATIONS: &[usize] = &[0, 1, 2, 3, 4, 5, 6];

static JA_ASK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"何(営業日|日|時間|分|秒|週間|週|か月|ヶ月|カ月|ヵ月|年|回|度|人|名|枚|ページ|台|個|件|点|円|パーセント|%|％|割|歳|GB|MB|TB|錠|文字|桁)")
        .expect("pattern")
});
static JA_MONEY: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"いくら|金額|料金|費用|何円|上限額").expect("pattern"));
static EN_MANY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bhow many ([a-z-]+)(?: ([a-z-]+))?").expect("pattern"));
static EN_LONG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\bhow long\b").expect("pattern"));
static EN_MONEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bhow much (?:does|do|is|will|would|money|can|are)\b|\bcost\b|\bprice\b|\bfee\b").expect("pattern")
});

fn singular(w: &str) -> &str {
    w.strip_suffix("ies").or_else(|| w.strip_suffix('s')).unwrap_or(w)
}

/// The unit `question` asks a number of, when it asks for one that can be told.
pub fn asked(question: &str) -> Option<Asked> {
    let q = kotae_ingest::clean::normalize(question);
    if let Some(c) = JA_ASK.captures(&q) {
        let counter = &c[1];
        let counter = match counter {
            "週間" => "週",
            "パーセント" | "％" => "%",
            other => other,
        };
        return UNITS.iter().position(|u| u.ja.contains(&counter)).map(|i| Asked(vec![i]));
    }
    if JA_MONEY.is_match(&q) {
        return Some(Asked(vec![MONEY]));
    }
    if let Some(c) = EN_MANY.captures(&q) {
        // "how many business days", "how many pages"; a word not in the table asks for a
        // number of something the check cannot name.
        let words = [c.get(1), c.get(2)];
        for w in words.into_iter().flatten() {
            let w = w.as_str().to_lowercase();
            let w = singular(&w);
            if let Some(i) = UNITS.iter().position(|u| u.en.contains(&w)) {
                return Some(Asked(vec![i]));
            }
        }
        return None;
    }
    if EN_LONG.is_match(&q) {
        return Some(Asked(DURATIONS.to_vec()));
    }
    if EN_MONEY.is_match(&q) {
        return Some(Asked(vec![MONEY]));
    }
    None
}

/// A number: digits (with separators and decimals), kanji numerals, or a word for one.
const NUMBER: &str = r"(?:[0-9][0-9,.]*|[一二三四五六七八九十百千万両半]+|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|half)\b)";

static STATED: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    UNITS
        .iter()
        .map(|u| {
            let ja: Vec<String> = u.ja.iter().map(|c| regex::escape(c)).collect();
            let en: Vec<String> = u.en.iter().map(|w| format!("{}(?:s|es)?", regex::escape(w))).collect();
            // 5営業日, 3か月, 1万円, 30 分; "5 business days", "3 pages", "two devices";
            // ¥10,000 and $50 for money.
            let mut pats = vec![
                format!(r"{NUMBER}\s*(?:万|千)?\s*(?:{})", ja.join("|")),
                format!(r"(?i){NUMBER}[\s-]+(?:[a-z-]+\s+)?(?:{})\b", en.join("|")),
            ];
            if u.ja.contains(&"円") {
                pats.push(r"[¥￥$€]\s*[0-9]".into());
            }
            Regex::new(&pats.join("|")).expect("unit pattern")
        })
        .collect()
});

impl Asked {
    /// Whether `term` (a word or a character pair of the question) names the unit itself
    /// ("days", "枚"): a sentence that shares only the unit's name with the question is not
    /// about it.
    pub fn names(&self, term: &str) -> bool {
        let t = term.to_lowercase();
        self.0.iter().any(|&i| {
            let u = &UNITS[i];
            u.ja.iter().any(|c| t.contains(c)) || u.en.iter().any(|w| t.starts_with(w) || w.starts_with(t.as_str()))
        })
    }
}

/// Whether `text` states a number of what `asked` asks for.
pub fn states(text: &str, asked: &Asked) -> bool {
    let t = kotae_ingest::clean::normalize(text);
    asked.0.iter().any(|&i| STATED[i].is_match(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_asked_unit_and_whether_a_source_states_it() {
        let pages = asked("複合機って1人あたり月に何枚まで印刷していいんですか").unwrap();
        assert!(states("カラー印刷は月300枚までです。", &pages));
        assert!(!states("複合機は各階にあります。カラー印刷は所属長の承認が必要です。", &pages));
        assert!(states("Each employee may print up to 300 pages a month.", &pages));
        let devices = asked("How many devices can one guest Wi-Fi code connect?").unwrap();
        assert!(!states("Guest codes are valid for 24 hours.", &devices));
        assert!(states("One code connects up to 3 devices.", &devices));
        assert!(states("1つのコードで3台まで接続できます。", &devices));
        let yen = asked("ホテル代は1泊いくらまで出ますか").unwrap();
        assert!(states("宿泊費は1泊12,000円までです。", &yen));
        assert!(states("The hotel limit is ¥15,000 a night.", &yen));
        assert!(!states("ホテルは出張規程に従って予約します。", &yen));
        let long = asked("How long is the SMS code valid?").unwrap();
        assert!(states("The code expires after 10 minutes.", &long));
        assert!(!states("A code is sent by SMS to your registered phone.", &long));
        let days = asked("有給休暇は何日前までに申請すればいいですか").unwrap();
        assert!(states("3営業日前までに申請してください。", &days));
        assert_eq!(asked("How do I reset my password?"), None);
        assert_eq!(asked("How many llamas are there?"), None);
    }
}
