//! The nightly run as one self-contained HTML page: no script, no font, no request to
//! anywhere (it opens from a file on an air-gapped machine). Trends are inline SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::answer_eval::LangReport;
use crate::nightly::{Better, NightlyRun, Point, Series};

/// A row of the per-language table: its label and how to read it.
type Row = (&'static str, fn(&LangReport) -> f64);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn fmt(v: f64, unit: &str) -> String {
    // An empty sum is -0.0: never show a minus sign on zero.
    let v = v + 0.0;
    match unit {
        "rate" => format!("{v:.3}"),
        "ms" => format!("{v:.0} ms"),
        "per_s" => format!("{v:.1}/s"),
        _ => format!("{v:.2}"),
    }
}

/// A line chart of one metric's history (the last 30 runs); failed runs as hollow points.
fn trend(points: &[Point], unit: &str) -> String {
    let pts: Vec<&Point> = points.iter().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
    let (w, h, pad) = (160.0, 26.0, 3.0);
    if pts.is_empty() {
        return String::new();
    }
    let (mut lo, mut hi) = if unit == "rate" { (0.0f64, 1.0f64) } else { (f64::MAX, f64::MIN) };
    for p in &pts {
        lo = lo.min(p.3);
        hi = hi.max(p.3);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let x = |i: usize| pad + (w - 2.0 * pad) * if pts.len() > 1 { i as f64 / (pts.len() - 1) as f64 } else { 0.5 };
    let y = |v: f64| h - pad - (h - 2.0 * pad) * (v - lo) / (hi - lo);
    let mut s = format!(
        r#"<svg class="trend" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="trend over {} runs">"#,
        pts.len()
    );
    let line: Vec<String> = pts.iter().enumerate().map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.3))).collect();
    let _ = write!(s, r##"<polyline fill="none" stroke="#3465a4" stroke-width="1.5" points="{}"/>"##, line.join(" "));
    for (i, p) in pts.iter().enumerate() {
        let fill = if p.2 { "#3465a4" } else { "#fff" };
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{fill}" stroke="#3465a4"><title>run {} · {} · {}</title></circle>"##,
            x(i),
            y(p.3),
            p.0,
            esc(&p.1),
            fmt(p.3, unit)
        );
    }
    s.push_str("</svg>");
    s
}

const STYLE: &str = r#"
body{font-family:system-ui,"Hiragino Sans","Noto Sans CJK JP","Yu Gothic",sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d1d1f;line-height:1.5}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#555}.status{display:inline-block;padding:.2rem .8rem;border-radius:1rem;font-weight:700;color:#fff}
.pass{background:#2e7d32}.fail{background:#c62828}
table{border-collapse:collapse;width:100%;margin:.6rem 0}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f6f6f8}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.down{color:#c62828;font-weight:600}.up{color:#2e7d32}.problems li{margin:.2rem 0}
.case{border:1px solid #e3e3e8;border-radius:.5rem;padding:.6rem .9rem;margin:.7rem 0}
.case .q{font-weight:600}.case .a{white-space:pre-wrap;overflow-wrap:anywhere;word-break:normal;line-break:strict;background:#fafafa;padding:.4rem;border-radius:.3rem}
.src{color:#555;font-size:.9em;overflow-wrap:anywhere}svg.trend{display:block}
.scroll{overflow-x:auto}td:first-child{overflow-wrap:anywhere}
@media (max-width:640px){body{margin:1rem auto}.trendcol{display:none}}
@media (prefers-color-scheme:dark){body{background:#111;color:#eee}th{background:#222}.case .a{background:#1b1b1b}td,th{border-color:#333}.meta,.src{color:#aaa}}
"#;

/// The page for `run`, with each metric's history from `series`.
pub fn render(run: &NightlyRun, series: &Series) -> String {
    let mut h = String::new();
    let status = if run.passed() {
        r#"<span class="status pass">PASSED</span>"#
    } else {
        r#"<span class="status fail">FAILED</span>"#
    };
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>Kotae nightly evaluation · run {id}</title><style>{STYLE}</style></head><body>
<h1>Kotae nightly evaluation · run {id} {status}</h1>
<p class="meta">{started} · generator <b>{gen}</b> · embedder <b>{emb}</b>{commit} · {n} metrics in {took:.0} s{base}</p>"#,
        id = run.id.unwrap_or_default(),
        started = esc(&run.started),
        gen = esc(&run.generator),
        emb = esc(&run.embedder),
        commit = if run.commit.is_empty() { String::new() } else { format!(" · commit {}", esc(&run.commit)) },
        n = run.metrics.len(),
        took = run.took_s,
        base = run.baseline.map(|b| format!(" · compared with run {b} (the last good run)")).unwrap_or_default(),
    );
    if !run.passed() {
        h.push_str(r#"<h2>What fell</h2><ul class="problems">"#);
        for r in &run.regressions {
            let _ = write!(
                h,
                r#"<li class="down">{} fell from {:.3} to {:.3} (tolerance {:.3})</li>"#,
                esc(&r.name),
                r.before,
                r.now,
                r.tolerance
            );
        }
        for f in &run.threshold_failures {
            let _ = write!(h, r#"<li class="down">below threshold: {}</li>"#, esc(f));
        }
        h.push_str("</ul>");
    }

    // The answers per language first: what people read.
    if let Some(a) = &run.answers {
        h.push_str("<h2>Answers by language</h2><table><tr><th></th>");
        for lang in a.by_lang.keys() {
            let _ = write!(h, "<th>{}</th>", esc(lang));
        }
        h.push_str("</tr>");
        let rows: &[Row] = &[
            ("correctness", |l| l.correctness),
            ("all key facts", |l| l.all_facts),
            ("wrong answers", |l| l.wrong_answer_rate),
            ("refusal accuracy", |l| l.refusal_accuracy),
            ("citation precision", |l| l.citation_precision),
            ("citation recall", |l| l.citation_recall),
            ("faithfulness", |l| l.support),
            ("language match", |l| l.language_match),
            ("repetition", |l| l.repetition_rate),
        ];
        for (name, f) in rows {
            let _ = write!(h, "<tr><td>{name}</td>");
            for l in a.by_lang.values() {
                let _ = write!(h, r#"<td class="num">{:.3}</td>"#, f(l) + 0.0);
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }

    // Every metric, by suite, with its trend.
    let baseline: BTreeMap<&str, f64> = series
        .iter()
        .filter_map(|(k, v)| v.iter().rev().find(|p| Some(p.0) == run.baseline).map(|p| (k.as_str(), p.3)))
        .collect();
    let mut suites: BTreeMap<&str, Vec<&crate::nightly::Metric>> = BTreeMap::new();
    for m in &run.metrics {
        suites.entry(m.name.split('.').next().unwrap_or("other")).or_default().push(m);
    }
    for (suite, ms) in suites {
        let _ = write!(
            h,
            "<h2>{}</h2><div class=\"scroll\"><table><tr><th>metric</th><th>now</th><th>last good</th><th>change</th><th class=\"trendcol\">trend</th></tr>",
            esc(suite)
        );
        for m in ms {
            let before = baseline.get(m.name.as_str()).copied();
            let change = before.map(|b| m.value - b);
            let class = match (change, m.better) {
                (Some(c), Better::Higher) if c < -1e-9 => "down",
                (Some(c), Better::Lower) if c > 1e-9 => "down",
                (Some(c), Better::Higher) if c > 1e-9 => "up",
                (Some(c), Better::Lower) if c < -1e-9 => "up",
                _ => "",
            };
            let arrow = match m.better {
                Better::Higher => " ↑",
                Better::Lower => " ↓",
                Better::Info => "",
            };
            let _ = write!(
                h,
                r#"<tr><td>{}<span class="src">{arrow}</span></td><td class="num">{}</td><td class="num">{}</td><td class="num {class}">{}</td><td class="trendcol">{}</td></tr>"#,
                esc(&m.name),
                fmt(m.value, &m.unit),
                before.map(|b| fmt(b, &m.unit)).unwrap_or_else(|| "–".into()),
                change.map(|c| format!("{:+.3}", c + 0.0)).unwrap_or_default(),
                series.get(&m.name).map(|s| trend(s, &m.unit)).unwrap_or_default()
            );
        }
        h.push_str("</table></div>");
    }

    if let Some(a) = &run.answers {
        let mut worst: Vec<&crate::answer_eval::CaseResult> =
            a.cases.iter().filter(|c| if c.answerable { c.correctness() < 1.0 } else { !c.declined }).collect();
        worst.sort_by(|x, y| x.correctness().total_cmp(&y.correctness()).then(x.id.cmp(&y.id)));
        let _ = write!(h, "<h2>Worst questions ({} of {})</h2>", worst.len().min(20), worst.len());
        for c in worst.into_iter().take(20) {
            let what = if c.answerable {
                format!("{} of {} key facts", c.facts.iter().filter(|&&f| f).count(), c.facts.len())
            } else {
                "not answered by the documents, yet answered".to_string()
            };
            let _ = write!(
                h,
                r#"<div class="case" lang="{lang}"><div class="q">{id} · {kind} · {what} · {how}</div><p class="q">Q: {q}</p><div class="a">{a}</div><p class="src">gold: {gold} · cited: {cited}</p><ol class="src">"#,
                lang = esc(&c.lang),
                id = esc(&c.id),
                kind = esc(&c.kind),
                how = esc(&c.answered_as),
                q = esc(&c.question),
                a = esc(&c.answer),
                gold = esc(&c.gold_sources.join(", ")),
                cited = esc(&c.cited.join(", ")),
            );
            for (name, text) in c.shown.iter().zip(&c.shown_texts) {
                let snippet: String = text.chars().take(160).collect();
                let _ = write!(h, "<li><b>{}</b> {}…</li>", esc(name), esc(&snippet));
            }
            h.push_str("</ol></div>");
        }
    }

    // The seed's risks.
    h.push_str("<h2>Risks: vocabulary and harmful requests</h2>");
    let v = &run.vocab;
    let _ = write!(h, "<p>Domain terms as <b>{}</b>'s tokenizer splits them:</p><table><tr><th>language</th><th>terms</th><th>pieces per term</th><th>pieces per character</th></tr>", esc(&v.generator));
    for (lang, (n, per_term, per_char)) in &v.domain {
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td class="num">{n}</td><td class="num">{per_term:.2}</td><td class="num">{per_char:.2}</td></tr>"#,
            esc(lang)
        );
    }
    h.push_str("</table><p>Most split domain terms: ");
    let worst: Vec<String> = v.worst.iter().map(|(t, n)| format!("{} ({n})", esc(t))).collect();
    h.push_str(&worst.join(", "));
    h.push_str("</p><p>New terms: ");
    let new: Vec<String> = v.new_terms.iter().map(|(t, n)| format!("{} ({n})", esc(t))).collect();
    h.push_str(&new.join(", "));
    h.push_str("</p>");
    for (lang, r) in &run.red_team {
        let _ = write!(
            h,
            "<p>Harmful requests through the whole answer path ({}): {} of {} refused.</p>",
            esc(lang),
            r.refused,
            r.n
        );
        for (id, a) in &r.answered {
            let _ =
                write!(h, r#"<div class="case"><div class="q">{}</div><div class="a">{}</div></div>"#, esc(id), esc(a));
        }
    }
    if let Some(g) = &run.guard {
        h.push_str("<h2>Guardrails (dev split)</h2><table><tr><th>language</th><th>harmful blocked</th><th>benign blocked</th><th>F1</th></tr>");
        for (lang, l) in &g.by_lang {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td class="num">{:.3}</td><td class="num">{:.3}</td><td class="num">{:.3}</td></tr>"#,
                esc(lang),
                l.harmful.rate,
                l.benign.rate,
                l.f1
            );
        }
        h.push_str("</table>");
    }
    if let Some(s) = &run.support {
        let _ = write!(
            h,
            "<h2>Support check</h2><p>Against {} hand-labelled answer sentences: agreement {:.3}, kappa {:.3}; of the sentences it drops, {:.3} are labelled unsupported; it catches {:.3} of those labelled unsupported.</p>",
            s.n, s.agreement, s.kappa, s.unsupported_precision, s.unsupported_recall
        );
    }
    h.push_str("</body></html>\n");
    h
}
