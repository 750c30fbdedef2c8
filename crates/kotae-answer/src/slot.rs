//! What a question asks for: its slot (when, how many, where, who, how, whether…). Two
//! questions on the same topic that ask for different slots are different questions: 「有給休暇は
//! 何日前までに申請？」 asks for a deadline, 「有給休暇は何日もらえる？」 for a quantity, and a
//! past inquiry answers the new question only when both ask for the same slot.

use std::sync::LazyLock;

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A deadline or a time: いつまで, 何日前, by when, how far in advance.
    When,
    /// A duration: 何日間, どのくらいの期間, how long.
    Duration,
    /// An amount, a number or a price: 何日, 何人, いくら, how many, how much.
    Quantity,
    /// A place: どこ, where.
    Place,
    /// A person or a desk: 誰, 窓口, who, whom to contact.
    Person,
    /// A procedure: どうやって, 方法, 手順, how do I.
    How,
    /// A reason: なぜ, why.
    Why,
    /// Yes or no: できますか, can I, is it.
    Whether,
}

/// Patterns in order: the first that matches decides (a deadline before a bare number, a
/// duration before a quantity).
static RULES: LazyLock<Vec<(Slot, Regex)>> = LazyLock::new(|| {
    let r = |s: &str| Regex::new(s).expect("slot pattern");
    vec![
        (
            Slot::When,
            r(
                r"(?i)いつ|何日前|何営業日前|何時まで|何時から|何日まで|何日以内|何日後|何時に|期限|締め切り|締切|〆切|\bwhen\b|by what (date|time|day)|\bdeadline|how (far|many days|long|many hours|many weeks) (in advance|before|ahead|prior)|what time|which day|what date|how soon|cut-?off",
            ),
        ),
        (
            Slot::Duration,
            r(
                r"(?i)何日間|何時間|何週間|何か月|何ヶ月|何年間|どのくらいの期間|どれくらいの期間|期間は|何分|how long|for how many (days|weeks|months|hours)|duration",
            ),
        ),
        (
            Slot::Quantity,
            r(
                r"(?i)何日|何回|何人|何名|何個|何台|何枚|何件|何円|何錠|何割|何パーセント|何%|いくら|いくつ|金額|上限|何歳|何GB|何MB|容量|how many|how much|what('s| is) the (limit|maximum|minimum|cap|fee|cost|price|amount|rate|number)|\bmax(imum)?\b|\bcap\b|\blimit\b",
            ),
        ),
        (Slot::Place, r(r"(?i)どこ|どちらで|場所|何階|\bwhere\b|which (room|floor|office|building|desk)")),
        (
            Slot::Person,
            r(
                r"(?i)誰|だれ|どなた|窓口|連絡先|問い合わせ先|担当|内線|\bwho\b|\bwhom\b|which (team|department|desk)|contact",
            ),
        ),
        (Slot::Why, r(r"(?i)なぜ|どうして|理由|\bwhy\b")),
        (
            Slot::How,
            r(
                r"(?i)どうやって|どうすれば|どうしたら|方法|手順|やり方|手続き|how (do|can|should|to)\b|what should i do|steps|procedure",
            ),
        ),
        (
            Slot::Whether,
            r(
                r"(?i)できますか|できる\?|できる？|いいですか|大丈夫|可能|必要ですか|ありますか|^(can|may|is|are|do|does|should) ",
            ),
        ),
    ]
});

/// The slot `question` asks for, when one can be told.
pub fn asked_slot(question: &str) -> Option<Slot> {
    let q = question.trim();
    RULES.iter().find(|(_, re)| re.is_match(q)).map(|(s, _)| *s)
}

/// Whether a past question answers the new one as far as the slot goes: the same slot, or
/// neither asks for one that can be told.
pub fn same_slot(new: &str, past: &str) -> bool {
    asked_slot(new) == asked_slot(past)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_not_quantity() {
        assert_eq!(asked_slot("有給休暇は何日前までに申請すればいいですか？"), Some(Slot::When));
        assert_eq!(asked_slot("有給休暇は何日もらえますか"), Some(Slot::Quantity));
        assert!(!same_slot("有給休暇は何日前までに申請すればいいですか？", "有給休暇は年に何日付与されますか"));
        assert_eq!(asked_slot("How many days in advance do I request leave?"), Some(Slot::When));
        assert_eq!(asked_slot("How many days of paid leave do I get?"), Some(Slot::Quantity));
        assert_eq!(asked_slot("How long is the guest Wi-Fi password valid?"), Some(Slot::Duration));
    }

    #[test]
    fn places_people_and_procedures() {
        assert_eq!(asked_slot("プリンターの場所はどこですか"), Some(Slot::Place));
        assert_eq!(asked_slot("VPNの問い合わせ窓口は？"), Some(Slot::Person));
        assert_eq!(asked_slot("パスワードをリセットする方法を教えて"), Some(Slot::How));
        assert_eq!(asked_slot("How do I reset my password?"), Some(Slot::How));
        assert_eq!(asked_slot("Who approves expense reports?"), Some(Slot::Person));
        assert!(same_slot("パスワードを忘れたときの手順は？", "パスワードを忘れました。どうすればいいですか"));
    }
}
