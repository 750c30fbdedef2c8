//! Inquiry logs (CSV or JSONL): past questions and the answers a help desk gave.
//!
//! Resolved entries become question–answer chunks; unresolved ones are skipped and counted;
//! personal data is redacted before anything is indexed; duplicates and near-duplicates are
//! merged, keeping the most recent answer.

use std::ops::Range;

use crate::chunk::ChunkerConfig;
use crate::clean::{detect_lang, normalize, redact_pii};
use crate::dedup::Deduper;
use crate::parse::decode_text;
use crate::{Chunk, Error, FileReport, FileType, Result, SourceKind};

#[derive(Debug, Clone, Default)]
struct Record {
    question: String,
    answer: String,
    status: Option<String>,
    category: Option<String>,
    tags: Option<String>,
    timestamp: Option<i64>,
    span: Range<usize>,
}

const QUESTION: &[&str] = &["question", "質問", "問い合わせ内容", "inquiry", "query"];
const ANSWER: &[&str] = &["answer", "回答", "response", "reply"];
const STATUS: &[&str] = &["status", "ステータス", "状態", "state"];
const CATEGORY: &[&str] = &["category", "カテゴリ", "カテゴリー", "desk", "窓口"];
const TAGS: &[&str] = &["tags", "タグ"];
const TIMES: &[&str] =
    &["answered_at", "resolved_at", "回答日時", "created_at", "timestamp", "date", "問い合わせ日時", "日時"];

fn find_col(headers: &[String], names: &[&str]) -> Option<usize> {
    names.iter().find_map(|n| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(n)))
}

/// Whether a status value means the inquiry was answered and closed.
pub fn is_resolved(status: Option<&str>, answer: &str) -> bool {
    if answer.trim().is_empty() {
        return false;
    }
    let Some(s) = status else { return true };
    let s = s.trim().to_lowercase();
    matches!(
        s.as_str(),
        "resolved"
            | "closed"
            | "done"
            | "answered"
            | "complete"
            | "completed"
            | "solved"
            | "解決"
            | "解決済"
            | "解決済み"
            | "完了"
            | "対応済"
            | "対応済み"
            | "クローズ"
            | "回答済み"
    )
}

/// Parse an inquiry's time as Unix seconds: RFC 3339 / ISO 8601 with an offset
/// (`2024-04-01T10:30:00+09:00`, `…Z`) at that offset; `YYYY-MM-DD` or `YYYY/MM/DD`, optionally
/// followed by `[T ]HH:MM[:SS]`, without one, as UTC. Impossible dates (`2024-02-30`) and years
/// outside the calendar are `None`, never a panic.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() < 8 || s.len() > 64 || !s.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    // `2024/04/01 10:30` → `2024-04-01T10:30`: only the date's slashes and one separator.
    let (date, rest) = s.split_at(s.find([' ', 'T', 't']).unwrap_or(s.len()));
    let iso = format!(
        "{}{}",
        date.replace('/', "-"),
        rest.trim_start().strip_prefix(['T', 't']).map_or_else(
            || if rest.trim().is_empty() { String::new() } else { format!("T{}", rest.trim()) },
            |r| format!("T{r}"),
        )
    );
    if let Ok(t) = iso.parse::<jiff::Timestamp>() {
        return Some(t.as_second());
    }
    let civil = iso
        .parse::<jiff::civil::DateTime>()
        .ok()
        .filter(|_| iso.contains('T'))
        .or_else(|| iso.parse::<jiff::civil::Date>().ok().map(|d| d.to_datetime(jiff::civil::Time::midnight())))?;
    jiff::tz::Offset::UTC.to_timestamp(civil).ok().map(|t| t.as_second())
}

fn read_csv(text: &str) -> Result<(Vec<Record>, usize)> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| Error::Log(format!("cannot read the CSV header row: {e}")))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let missing = |what: &str, names: &[&str]| {
        Error::Log(format!(
            "missing required column '{what}' (accepted names: {}; found: {})",
            names.join(", "),
            headers.join(", ")
        ))
    };
    let q = find_col(&headers, QUESTION).ok_or_else(|| missing("question", QUESTION))?;
    let a = find_col(&headers, ANSWER).ok_or_else(|| missing("answer", ANSWER))?;
    let (st, cat, tags, time) =
        (find_col(&headers, STATUS), find_col(&headers, CATEGORY), find_col(&headers, TAGS), find_col(&headers, TIMES));
    let mut out = Vec::new();
    let mut bad = 0;
    let mut rec = csv::StringRecord::new();
    loop {
        let start = rdr.position().byte() as usize;
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                let end = rdr.position().byte() as usize;
                let get =
                    |i: Option<usize>| i.and_then(|i| rec.get(i)).map(str::to_string).filter(|s| !s.trim().is_empty());
                let (Some(question), answer) = (get(Some(q)), get(Some(a)).unwrap_or_default()) else {
                    bad += 1;
                    continue;
                };
                out.push(Record {
                    question,
                    answer,
                    status: get(st),
                    category: get(cat),
                    tags: get(tags),
                    timestamp: get(time).and_then(|t| parse_timestamp(&t)),
                    span: start..end,
                });
            }
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

fn read_jsonl(text: &str) -> Result<(Vec<Record>, usize)> {
    let mut out = Vec::new();
    let mut bad = 0;
    let mut offset = 0;
    let mut saw_question = false;
    for line in text.split_inclusive('\n') {
        let span = offset..offset + line.trim_end().len();
        offset += line.len();
        if line.trim().is_empty() {
            continue;
        }
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(line) else {
            bad += 1;
            continue;
        };
        let get = |names: &[&str]| {
            names.iter().find_map(|n| obj.get(*n)).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(a) => Some(a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            })
        };
        let Some(question) = get(QUESTION) else {
            bad += 1;
            continue;
        };
        saw_question = true;
        out.push(Record {
            question,
            answer: get(ANSWER).unwrap_or_default(),
            status: get(STATUS),
            category: get(CATEGORY),
            tags: get(TAGS),
            timestamp: get(TIMES).and_then(|t| parse_timestamp(&t)),
            span,
        });
    }
    if !saw_question && bad > 0 {
        return Err(Error::Log(format!(
            "no line has a 'question' field (accepted names: {}); {bad} lines unreadable",
            QUESTION.join(", ")
        )));
    }
    Ok((out, bad))
}

pub fn process_log(
    source: &str,
    bytes: &[u8],
    ftype: FileType,
    _cfg: &ChunkerConfig,
    _count_tokens: &dyn Fn(&str) -> usize,
) -> Result<(Vec<Chunk>, FileReport)> {
    let text = decode_text(bytes)?;
    let (records, bad) = match ftype {
        FileType::Csv => read_csv(&text)?,
        _ => read_jsonl(&text)?,
    };
    if bad > 0 {
        tracing::warn!(source, bad, "skipped unreadable inquiry-log rows");
    }
    let mut report = FileReport::default();
    let mut resolved: Vec<Record> = Vec::new();
    for mut r in records {
        if !is_resolved(r.status.as_deref(), &r.answer) {
            report.unresolved_skipped += 1;
            continue;
        }
        let (q, nq) = redact_pii(&normalize(&r.question));
        let (a, na) = redact_pii(&normalize(&r.answer));
        report.redactions += nq + na;
        r.question = q.trim().to_string();
        r.answer = a.trim().to_string();
        resolved.push(r);
    }
    // Newest first, so a merged duplicate keeps the most recent answer.
    let mut order: Vec<usize> = (0..resolved.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(resolved[i].timestamp.unwrap_or(i64::MIN)));
    let mut dedup = Deduper::new(0.8);
    let mut keep = vec![false; resolved.len()];
    let mut kept_questions = std::collections::HashSet::new();
    for &i in &order {
        let r = &resolved[i];
        if dedup.check_insert(&format!("{}\n{}", r.question, r.answer)).is_none()
            && !same_question_kept(&mut kept_questions, &r.question)
        {
            keep[i] = true;
        } else {
            report.duplicates_merged += 1;
        }
    }
    let chunks: Vec<Chunk> = resolved
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .enumerate()
        .map(|(ordinal, (r, _))| {
            let text = format!("Q: {}\nA: {}", r.question, r.answer);
            let mut section = vec![r.category.clone().unwrap_or_else(|| "inquiries".into())];
            if let Some(t) = &r.tags {
                section.push(t.clone());
            }
            Chunk {
                source: source.to_string(),
                kind: SourceKind::Inquiry,
                lang: detect_lang(&text),
                section,
                span: r.span.clone(),
                text,
                ordinal: ordinal as u32,
                timestamp: r.timestamp,
            }
        })
        .collect();
    report.chunks = chunks.len();
    Ok((chunks, report))
}

/// The same question asked again (after normalization) counts as a duplicate even when the
/// answer was worded differently: the newer answer, already kept, wins.
fn same_question_kept(kept_questions: &mut std::collections::HashSet<String>, question: &str) -> bool {
    !kept_questions.insert(crate::dedup::comparison_key(question))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, data: &str) -> Result<(Vec<Chunk>, FileReport)> {
        let ft = FileType::from_path(std::path::Path::new(name)).unwrap();
        process_log(name, data.as_bytes(), ft, &ChunkerConfig::default(), &|s| s.len())
    }

    #[test]
    fn csv_resolved_redacted_deduplicated() {
        let csv = "id,question,answer,status,category,created_at\n\
            1,VPNにつながりません,クライアントを再起動してください。,resolved,IT,2024-01-05 10:00\n\
            2,VPNにつながりません,VPNクライアントを再起動し、それでもだめなら it-help@example.co.jp へ。,resolved,IT,2024-03-01 09:00\n\
            3,プリンタが動かない,,open,IT,2024-03-02\n\
            4,How do I book a room?,Use the Rooms app. Call 03-1234-5678 if it fails.,closed,GA,2024-02-01\n\
            5,経費の締め日は？,毎月25日です。,対応中,経理,2024-02-02\n";
        let (chunks, rep) = run("log.csv", csv).unwrap();
        assert_eq!(rep.unresolved_skipped, 2);
        assert_eq!(rep.duplicates_merged, 1);
        assert_eq!(chunks.len(), 2);
        let vpn = chunks.iter().find(|c| c.text.contains("VPN")).unwrap();
        assert!(vpn.text.contains("[EMAIL]"), "newest answer kept: {}", vpn.text);
        assert_eq!(vpn.section, vec!["IT"]);
        assert_eq!(vpn.lang, "ja");
        let room = chunks.iter().find(|c| c.text.contains("room")).unwrap();
        assert!(room.text.contains("[PHONE]") && !room.text.contains("5678"));
        assert_eq!(&csv[room.span.clone()][..2], "4,");
    }

    #[test]
    fn csv_missing_columns_is_a_clear_error() {
        let err = run("log.csv", "id,text,status\n1,hello,resolved\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("missing required column 'question'") && msg.contains("found: id, text, status"), "{msg}");
    }

    #[test]
    fn jsonl_logs() {
        let data = "{\"question\":\"Where is the manual?\",\"answer\":\"On the portal.\",\"status\":\"resolved\",\"tags\":[\"docs\"]}\nnot json\n{\"question\":\"Open one\",\"status\":\"open\"}\n";
        let (chunks, rep) = run("log.jsonl", data).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(rep.unresolved_skipped, 1);
        assert_eq!(chunks[0].section, vec!["inquiries", "docs"]);
        assert!(run("x.jsonl", "garbage\nmore garbage\n").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-02"), Some(86400));
        assert_eq!(parse_timestamp("2024/04/01 10:30"), Some(1711967400));
        assert_eq!(parse_timestamp("yesterday"), None);
        // Offsets count: 10:30 in Tokyo is 01:30 UTC.
        assert_eq!(parse_timestamp("2024-04-01T10:30:00+09:00"), Some(1711967400 - 9 * 3600));
        assert_eq!(parse_timestamp("2024-04-01 10:30+09:00"), Some(1711967400 - 9 * 3600));
        assert_eq!(parse_timestamp("2024-04-01T10:30:00Z"), Some(1711967400));
        assert_eq!(parse_timestamp("2024/04/01T10:30:15"), Some(1711967415));
        // Impossible dates and times, and years past the calendar: none, and no panic.
        for bad in [
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-04-01 25:00",
            "99999999999-01-01",
            "9999999999999999999-01-01 00:00",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(parse_timestamp("2024-02-29"), Some(1709164800));
    }

    #[test]
    fn a_large_log_keeps_one_answer_per_question() {
        let mut data = String::from("question,answer,status,answered_at\n");
        for i in 0..5_000 {
            for copy in 0..2 {
                data.push_str(&format!(
                    "How do I set up device {i} model {}?,Open settings {copy} and pick {i}.,resolved,2024-01-01\n",
                    i * 7919 % 10007
                ));
            }
        }
        let (chunks, rep) = run("big.csv", &data).unwrap();
        assert_eq!(chunks.len() + rep.duplicates_merged, 10_000);
        assert!(rep.duplicates_merged >= 5_000, "{rep:?}");
    }
}
