//! A large synthetic company corpus built from `knowledge/`, for ingestion at scale
//! (`kotae-bench corpus`, `scripts/bench/ingest_scale.sh`).
//!
//! Each generated manual takes one real manual as its template: its title and section headings,
//! in order, with sections sometimes left out; each section keeps most of the template's
//! sentences and borrows one or two from other manuals of the same language; numbers move
//! (amounts, days, extensions, years), and every document belongs to an office and a revision
//! year, which appear in its title, in a scope line and in its revision history. What comes out
//! reads like a company's manuals for many offices and years: related, repetitive, and yet
//! mostly distinct chunk by chunk (the near-duplicate filter drops what is not). Inquiry logs
//! (CSV and JSONL, the formats of `knowledge/logs`) are varied the same way, row by row.
//! Deterministic for a seed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use kotae_ingest::FileType;

const OFFICES_JA: &[&str] = &[
    "札幌支店",
    "仙台支店",
    "東京本社",
    "横浜事業所",
    "名古屋支店",
    "京都営業所",
    "大阪支社",
    "神戸営業所",
    "広島支店",
    "高松営業所",
    "福岡支店",
    "那覇営業所",
    "新潟支店",
    "金沢営業所",
    "静岡営業所",
    "熊本支店",
];
const OFFICES_EN: &[&str] = &[
    "Sapporo branch",
    "Sendai branch",
    "Tokyo head office",
    "Yokohama site",
    "Nagoya branch",
    "Kyoto office",
    "Osaka office",
    "Kobe office",
    "Hiroshima branch",
    "Takamatsu office",
    "Fukuoka branch",
    "Naha office",
    "Singapore office",
    "London office",
    "Toronto office",
    "Austin office",
];
const DEPTS_JA: &[&str] = &["総務課", "人事課", "情報システム課", "経理課", "業務推進室", "品質保証課"];
const DEPTS_EN: &[&str] =
    &["General Affairs", "People Operations", "IT Service Desk", "Finance", "Facilities", "Customer Success"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    /// Documents in all (manuals and log files together).
    pub docs: usize,
    /// One inquiry-log file per this many documents (0: none).
    pub docs_per_log: usize,
    /// Rows per generated log file.
    pub log_rows: usize,
    pub seed: u64,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        Self { docs: 10_000, docs_per_log: 250, log_rows: 40, seed: 7 }
    }
}

/// What was written.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CorpusStats {
    pub manuals: usize,
    pub logs: usize,
    pub bytes: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// One real manual, as sections of sentences.
struct Template {
    /// `hr`, `it`, … (the folder under `manuals/`).
    dept: String,
    stem: String,
    lang: String,
    title: String,
    sections: Vec<(String, Vec<String>)>,
}

/// Templates are the Markdown manuals, read line by line: the title, the headings, and under
/// each heading its lines (paragraphs, list items, table rows), so that lists and tables keep
/// their shape when lines move.
fn load_templates(knowledge: &Path) -> Result<Vec<Template>> {
    let root = knowledge.join("manuals");
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let e = e?;
        let path = e.path();
        if FileType::from_path(path).ok() != Some(FileType::Markdown) {
            continue;
        }
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut parts = name.split('.');
        let stem = parts.next().unwrap_or("doc").to_string();
        let lang = parts.next().filter(|l| *l == "ja" || *l == "en").unwrap_or("en").to_string();
        let rel = path.strip_prefix(&root).unwrap_or(path);
        let dept = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        let mut title = stem.clone();
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines().map(str::trim_end) {
            if let Some(t) = line.strip_prefix("# ") {
                title = t.trim().to_string();
            } else if line.starts_with("##") {
                sections.push((line.trim_start_matches('#').trim().to_string(), Vec::new()));
            } else if !line.trim().is_empty() && !line.starts_with("```") {
                match sections.last_mut() {
                    Some((_, v)) => v.push(line.to_string()),
                    None => sections.push((title.clone(), vec![line.to_string()])),
                }
            }
        }
        sections.retain(|(_, v)| !v.is_empty());
        if !sections.is_empty() {
            out.push(Template { dept, stem, lang, title, sections });
        }
    }
    anyhow::ensure!(!out.is_empty(), "no Markdown manuals under {}", root.display());
    Ok(out)
}

/// Numbers moved: years by a little, amounts and extensions (100 and up) by a factor of ½–2,
/// rounded as a policy would; days, hours and counts below 100, and digits inside words
/// (`T00012`, `4K`), stay.
fn vary_numbers(s: &str, rng: &mut Rng) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut digits = String::new();
    let mut prev: Option<char> = None;
    let flush = |digits: &mut String, out: &mut String, rng: &mut Rng, prev_alpha: bool| {
        if digits.is_empty() {
            return;
        }
        let replaced = match digits.parse::<u64>() {
            _ if prev_alpha || digits.starts_with('0') => None,
            Ok(v) if (1990..=2035).contains(&v) && digits.len() == 4 => Some(v + rng.below(3) as u64),
            Ok(v) if v >= 100 && rng.chance(0.7) => {
                let f = 0.5 + rng.below(16) as f64 / 10.0;
                let x = (v as f64 * f).round().max(1.0) as u64;
                // Round like a policy would: 3 significant digits at most.
                let mag = 10u64.pow((x.ilog10()).saturating_sub(2));
                Some((x / mag).max(1) * mag)
            }
            _ => None,
        };
        match replaced {
            Some(v) => out.push_str(&v.to_string()),
            None => out.push_str(digits),
        }
        digits.clear();
    };
    let mut prev_alpha = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if digits.is_empty() {
                prev_alpha = prev.is_some_and(|p| p.is_ascii_alphabetic());
            }
            digits.push(c);
        } else {
            flush(&mut digits, &mut out, rng, prev_alpha);
            out.push(c);
        }
        prev = Some(c);
    }
    flush(&mut digits, &mut out, rng, prev_alpha);
    out
}

#[derive(Clone, Copy)]
enum Format {
    Markdown,
    Html,
    Text,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn render(format: Format, title: &str, sections: &[(String, Vec<String>)], ja: bool) -> String {
    let mut o = String::new();
    let list = |l: &str| l.starts_with("- ") || l.starts_with("* ") || l.starts_with('|');
    match format {
        Format::Markdown => {
            o.push_str(&format!("# {title}\n\n"));
            for (h, body) in sections {
                o.push_str(&format!("## {h}\n\n"));
                for (k, l) in body.iter().enumerate() {
                    let next_list = body.get(k + 1).is_some_and(|n| list(n));
                    o.push_str(l);
                    o.push_str(if list(l) && next_list { "\n" } else { "\n\n" });
                }
            }
        }
        Format::Html => {
            let lang = if ja { "ja" } else { "en" };
            o.push_str(&format!(
                "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\"><title>{t}</title></head><body>\n<nav>Home | Manuals | Help</nav>\n<h1>{t}</h1>\n",
                t = escape_html(title)
            ));
            for (h, body) in sections {
                o.push_str(&format!("<h2>{}</h2>\n", escape_html(h)));
                for l in body {
                    match l.strip_prefix("- ").or_else(|| l.strip_prefix("* ")) {
                        Some(item) => o.push_str(&format!("<ul><li>{}</li></ul>\n", escape_html(item))),
                        None => o.push_str(&format!("<p>{}</p>\n", escape_html(l))),
                    }
                }
            }
            o.push_str("<footer>© Example Corp. Internal use only.</footer>\n</body></html>\n");
        }
        Format::Text => {
            o.push_str(&format!("{title}\n\n"));
            for (i, (h, body)) in sections.iter().enumerate() {
                o.push_str(&format!("{}. {h}\n", i + 1));
                o.push_str(&body.join("\n"));
                o.push_str("\n\n");
            }
        }
    }
    o
}

fn manual(t: &Template, all: &[Template], i: usize, rng: &mut Rng) -> (String, String) {
    let ja = t.lang == "ja";
    let office = *rng.pick(if ja { OFFICES_JA } else { OFFICES_EN });
    let dept = *rng.pick(if ja { DEPTS_JA } else { DEPTS_EN });
    let year = 2018 + rng.below(9);
    let title = if ja {
        format!("{}（{office}版・{year}年度）", t.title)
    } else {
        format!("{} ({office}, {year} edition)", t.title)
    };
    let others: Vec<&Template> = all.iter().filter(|o| o.lang == t.lang && o.stem != t.stem).collect();
    let mut sections = Vec::new();
    let scope = if ja {
        format!(
            "本書は{office}の従業員を対象とし、{year}年{}月{}日から適用します。問い合わせ先は{dept}（内線{}）です。",
            1 + rng.below(12),
            1 + rng.below(28),
            1000 + rng.below(9000)
        )
    } else {
        format!(
            "This edition applies to staff of the {office} from {} {}, {year}. Questions go to {dept} (extension {}).",
            ["January", "April", "July", "October"][rng.below(4)],
            1 + rng.below(28),
            1000 + rng.below(9000)
        )
    };
    sections.push((if ja { "適用範囲".to_string() } else { "Scope".to_string() }, vec![scope]));
    for (h, body) in &t.sections {
        if sections.len() > 1 && rng.chance(0.15) {
            continue;
        }
        let mut b: Vec<String> = Vec::new();
        for s in body {
            if rng.chance(0.85) {
                b.push(vary_numbers(s, rng));
            }
        }
        for _ in 0..usize::from(rng.chance(0.35)) {
            if let Some(o) = (!others.is_empty()).then(|| *rng.pick(&others)) {
                if let Some((_, ob)) = (!o.sections.is_empty()).then(|| rng.pick(&o.sections)) {
                    let prose: Vec<&String> = ob.iter().filter(|l| !l.starts_with('|')).collect();
                    if !prose.is_empty() {
                        let s: &String = prose[rng.below(prose.len())];
                        let s = vary_numbers(s, rng);
                        let at = rng.below(b.len() + 1);
                        b.insert(at, s);
                    }
                }
            }
        }
        if rng.chance(0.3) {
            b.push(if ja {
                format!("{office}では、{dept}が窓口となります。")
            } else {
                format!("At the {office}, {dept} handles this.")
            });
        }
        if !b.is_empty() {
            sections.push((h.clone(), b));
        }
    }
    let history: Vec<String> = (0..1 + rng.below(3))
        .map(|k| {
            let y = year - k;
            if ja {
                format!("{y}年{}月：{}を改訂（第{}版）。", 1 + rng.below(12), t.title, 1 + i % 9 + k)
            } else {
                format!(
                    "{} {y}: {} revised (version {}).",
                    ["March", "June", "September", "December"][rng.below(4)],
                    t.title,
                    1 + i % 9 + k
                )
            }
        })
        .collect();
    sections.push((if ja { "改訂履歴".into() } else { "Revision history".into() }, history));
    let format = match rng.below(10) {
        0..=5 => Format::Markdown,
        6..=8 => Format::Html,
        _ => Format::Text,
    };
    let ext = match format {
        Format::Markdown => "md",
        Format::Html => "html",
        Format::Text => "txt",
    };
    let slug: String = office.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase();
    let path = format!("manuals/{}/{slug}/{}-{i:05}.{}.{ext}", t.dept, t.stem, t.lang);
    (path, render(format, &title, &sections, ja))
}

/// A log file varied row by row: numbers moved, ids and dates renewed, rows sampled.
fn log_file(src: &Path, text: &str, n: usize, rows: usize, rng: &mut Rng) -> Result<(String, String)> {
    let name = src.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let (stem, ext) = name.split_once('.').unwrap_or((&name, ""));
    let date = |rng: &mut Rng| {
        format!(
            "{}-{:02}-{:02} {:02}:{:02}",
            2019 + rng.below(7),
            1 + rng.below(12),
            1 + rng.below(28),
            8 + rng.below(11),
            rng.below(60)
        )
    };
    let mut out = String::new();
    if name.ends_with(".csv") {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers = r.headers()?.clone();
        let recs: Vec<csv::StringRecord> = r.records().collect::<Result<_, _>>()?;
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&headers)?;
        for k in 0..rows {
            let rec = rng.pick(&recs).clone();
            let row: Vec<String> = headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| match h {
                    "id" => format!("G{n:04}-{k:05}"),
                    "created_at" => date(rng),
                    "question" | "answer" => vary_numbers(v, rng),
                    _ => v.to_string(),
                })
                .collect();
            w.write_record(&row)?;
        }
        out = String::from_utf8(w.into_inner()?)?;
    } else {
        let recs: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        anyhow::ensure!(!recs.is_empty(), "{name}: no JSON lines");
        for _ in 0..rows {
            let mut v = rng.pick(&recs).clone();
            if let Some(o) = v.as_object_mut() {
                for key in ["question", "answer"] {
                    if let Some(s) = o.get(key).and_then(|s| s.as_str()).map(str::to_string) {
                        o.insert(key.into(), vary_numbers(&s, rng).into());
                    }
                }
                if o.contains_key("created_at") {
                    o.insert("created_at".into(), date(rng).into());
                }
            }
            out.push_str(&serde_json::to_string(&v)?);
            out.push('\n');
        }
    }
    Ok((format!("logs/{stem}-{n:04}.{ext}"), out))
}

/// Write a corpus of `spec.docs` documents generated from `knowledge` into `out` (which must
/// not exist or be empty).
pub fn generate(knowledge: &Path, out: &Path, spec: &CorpusSpec) -> Result<CorpusStats> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!("{} is not empty: give a new folder", out.display());
    }
    let templates = load_templates(knowledge)?;
    let mut logs: BTreeMap<String, (std::path::PathBuf, String)> = BTreeMap::new();
    for e in std::fs::read_dir(knowledge.join("logs")).into_iter().flatten() {
        let p = e?.path();
        if matches!(FileType::from_path(&p), Ok(FileType::Csv | FileType::Jsonl)) {
            logs.insert(p.display().to_string(), (p.clone(), std::fs::read_to_string(&p)?));
        }
    }
    let logs: Vec<_> = logs.into_values().collect();
    let mut rng = Rng(spec.seed);
    let mut stats = CorpusStats::default();
    for i in 0..spec.docs {
        let (path, text) =
            if spec.docs_per_log > 0 && !logs.is_empty() && i % spec.docs_per_log == spec.docs_per_log - 1 {
                let (p, t) = &logs[(i / spec.docs_per_log) % logs.len()];
                stats.logs += 1;
                log_file(p, t, i, spec.log_rows, &mut rng)?
            } else {
                stats.manuals += 1;
                let t = &templates[rng.below(templates.len())];
                manual(t, &templates, i, &mut rng)
            };
        let p = out.join(path);
        std::fs::create_dir_all(p.parent().expect("has a folder"))?;
        std::fs::write(&p, &text)?;
        stats.bytes += text.len() as u64;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_move_but_codes_and_small_counts_stay() {
        let mut rng = Rng(1);
        let s = "申請は30日以内、上限50000円。T00012 と 4K モニター、2025年度。";
        let v = vary_numbers(s, &mut rng);
        assert!(v.contains("T00012") && v.contains("4K"), "{v}");
        assert!(v.contains("年度"));
        let year: u64 = v.split("、").last().unwrap().trim_end_matches("年度。").parse().unwrap();
        assert!((2025..=2027).contains(&year), "{v}");
    }
}
