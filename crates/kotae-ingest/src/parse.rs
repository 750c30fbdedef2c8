//! Manual parsers: Markdown, HTML, plain text and PDF into one structured form, [`ParsedDoc`].

use std::ops::Range;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use scraper::{ElementRef, Html, Node};

use crate::clean::{confidentiality_marker, is_boilerplate_line, normalize};
use crate::{Error, FileType, Result};

/// A document reduced to its extracted text and the structural blocks over it.
#[derive(Debug, Clone, Default)]
pub struct ParsedDoc {
    pub title: Option<String>,
    /// Normalized extracted text; block spans index into it.
    pub text: String,
    pub blocks: Vec<Block>,
    pub boilerplate_lines: usize,
    /// Confidentiality markers found (`社外秘`, `confidential`…), lowercase: reported, and
    /// mapped to access groups by the caller, even when their line went as boilerplate.
    pub markers: std::collections::BTreeSet<String>,
    /// The document's own address, when it names one (Markdown front matter `url:`, an HTML
    /// page's canonical link): citations link there. Only absolute http(s) URLs are kept.
    pub url: Option<String>,
}

/// A structural unit: a paragraph, list, heading, code block or table.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub span: Range<usize>,
    /// Heading path above this block, outermost first.
    pub section: Vec<String>,
    /// Code blocks and tables: never split.
    pub atomic: bool,
}

/// Decode bytes as UTF-8 text, refusing binary data with a reason.
pub fn decode_text(bytes: &[u8]) -> Result<String> {
    let head = &bytes[..bytes.len().min(8192)];
    if head.contains(&0) {
        return Err(Error::Binary("contains NUL bytes"));
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => Err(Error::NotUtf8(e.valid_up_to())),
    }
}

/// Remove boilerplate lines; returns the kept text, how many lines went, and the
/// confidentiality markers seen.
fn strip_boilerplate(text: &str) -> (String, usize, std::collections::BTreeSet<String>) {
    let mut out = String::with_capacity(text.len());
    let mut n = 0;
    let mut markers = std::collections::BTreeSet::new();
    for line in text.split_inclusive('\n') {
        markers.extend(confidentiality_marker(line));
        if is_boilerplate_line(line) {
            n += 1;
        } else {
            out.push_str(line);
        }
    }
    (out, n, markers)
}

pub fn parse_manual(source: &str, bytes: &[u8], ftype: FileType) -> Result<ParsedDoc> {
    let mut doc = match ftype {
        FileType::Markdown => parse_markdown(&decode_text(bytes)?),
        FileType::Html => parse_html(&decode_text(bytes)?),
        FileType::Text => parse_plain(&decode_text(bytes)?),
        FileType::Pdf => parse_pdf(bytes)?,
        FileType::Csv | FileType::Jsonl => unreachable!("logs are not manuals"),
    };
    if doc.title.is_none() {
        let stem = source.rsplit('/').next().unwrap_or(source);
        doc.title = Some(stem.rsplit_once('.').map(|(s, _)| s).unwrap_or(stem).to_string());
    }
    Ok(doc)
}

/// YAML front matter at the very start of a Markdown file (`---` … `---` or `...`, the
/// convention of static-site generators and wiki exports): its top-level `key: value` pairs
/// (lowercase keys, quotes removed) and the rest of the file. `None` when the file does not
/// start with one: a leading `---` followed by prose is a thematic break, not front matter.
pub fn front_matter(raw: &str) -> Option<(Vec<(String, String)>, &str)> {
    let raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
    let mut lines = raw.split_inclusive('\n');
    if lines.next()?.trim_end() != "---" {
        return None;
    }
    let mut consumed = raw.find('\n')? + 1;
    let mut pairs = Vec::new();
    for (i, line) in lines.enumerate() {
        consumed += line.len();
        let l = line.trim_end();
        if l == "---" || l == "..." {
            return (!pairs.is_empty()).then(|| (pairs, &raw[consumed..]));
        }
        if i >= 200 || (i == 0 && l.is_empty()) {
            return None;
        }
        if l.is_empty() || l.starts_with('#') || l.starts_with([' ', '\t', '-']) {
            continue;
        }
        let (k, v) = l.split_once(':')?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-')) {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        pairs.push((k.to_lowercase(), v.to_string()));
    }
    None
}

/// `s` as a document address citations may link to: an absolute `http`/`https` URL with a
/// host and no credentials, at most 2,048 bytes. Anything else (`javascript:`, relative
/// paths, `file:`) is `None`: an address taken from a document must not become a script in
/// the widget or a link to a local file in Slack.
pub fn document_url(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 2048 {
        return None;
    }
    let u = url::Url::parse(s).ok()?;
    let ok = matches!(u.scheme(), "http" | "https")
        && u.host_str().is_some_and(|h| !h.is_empty())
        && u.username().is_empty()
        && u.password().is_none();
    ok.then(|| u.to_string())
}

pub fn parse_markdown(raw: &str) -> ParsedDoc {
    let (meta, body) = front_matter(raw).unwrap_or_default();
    let raw = if meta.is_empty() { raw } else { body };
    let meta_of = |keys: &[&str]| meta.iter().find(|(k, _)| keys.contains(&k.as_str())).map(|(_, v)| v.clone());
    let url = meta_of(&["url", "source_url", "canonical_url"]).and_then(|u| document_url(&u));
    let meta_title = meta_of(&["title"]).map(|t| collapse_ws(&normalize(&t))).filter(|t| !t.is_empty());
    let (text, boilerplate_lines, markers) = strip_boilerplate(&normalize(raw));
    let mut blocks = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut title = None;
    let mut depth = 0usize;
    let mut block_start = 0usize;
    let mut in_heading: Option<(usize, String)> = None;
    let mut atomic = false;
    let opts = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    for (event, range) in Parser::new_ext(&text, opts).into_offset_iter() {
        match event {
            Event::Start(tag) => {
                if depth == 0 {
                    block_start = range.start;
                    atomic = matches!(tag, Tag::CodeBlock(_) | Tag::Table(_) | Tag::HtmlBlock);
                    if let Tag::Heading { level, .. } = tag {
                        in_heading = Some((level as usize, String::new()));
                    }
                }
                depth += 1;
            }
            Event::End(end) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    let span = block_start..range.end;
                    if let (TagEnd::Heading(_), Some((level, h))) = (end, in_heading.take()) {
                        let h = h.trim().to_string();
                        if level == 1 && title.is_none() {
                            title = Some(h.clone());
                        }
                        headings.retain(|(l, _)| *l < level);
                        headings.push((level, h));
                    }
                    push_block(&mut blocks, &text, span, &headings, atomic);
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, h)) = in_heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Rule | Event::Html(_) if depth == 0 => {
                push_block(&mut blocks, &text, range, &headings, matches!(event, Event::Html(_)));
            }
            _ => {}
        }
    }
    ParsedDoc { title: meta_title.or(title), text, blocks, boilerplate_lines, markers, url }
}

fn push_block(blocks: &mut Vec<Block>, text: &str, span: Range<usize>, headings: &[(usize, String)], atomic: bool) {
    let trimmed = text[span.clone()].trim_end();
    if trimmed.trim().is_empty() {
        return;
    }
    let span = span.start..span.start + trimmed.len();
    blocks.push(Block { span, section: headings.iter().map(|(_, h)| h.clone()).collect(), atomic });
}

/// Builds extracted text block by block (HTML and PDF, whose text is not the source bytes).
#[derive(Default)]
struct TextBuilder {
    text: String,
    blocks: Vec<Block>,
    headings: Vec<(usize, String)>,
}

impl TextBuilder {
    fn heading(&mut self, level: usize, h: &str) {
        let h = collapse_ws(h);
        if h.is_empty() {
            return;
        }
        self.headings.retain(|(l, _)| *l < level);
        self.headings.push((level, h.clone()));
        self.block(&h, false);
    }
    fn block(&mut self, s: &str, atomic: bool) {
        let s = s.trim();
        if s.is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str("\n\n");
        }
        let start = self.text.len();
        self.text.push_str(s);
        let section = self.headings.iter().map(|(_, h)| h.clone()).collect();
        self.blocks.push(Block { span: start..self.text.len(), section, atomic });
    }
}

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

const SKIP_TAGS: &[&str] = &[
    "script", "style", "nav", "header", "footer", "aside", "noscript", "form", "template", "svg", "button", "iframe",
    "head",
];
const SKIP_HINTS: &[&str] = &["nav", "menu", "breadcrumb", "footer", "sidebar", "cookie", "banner"];

fn skipped(el: &ElementRef) -> bool {
    let v = el.value();
    if SKIP_TAGS.contains(&v.name()) || v.attr("role").is_some_and(|r| r == "navigation") {
        return true;
    }
    let attrs = format!("{} {}", v.attr("class").unwrap_or(""), v.attr("id").unwrap_or("")).to_ascii_lowercase();
    attrs.split(|c: char| !c.is_alphanumeric()).any(|w| SKIP_HINTS.contains(&w))
}

fn inner_text(el: ElementRef) -> String {
    let mut s = String::new();
    for node in el.descendants() {
        if let Node::Text(t) = node.value() {
            if node.ancestors().filter_map(ElementRef::wrap).any(|a| skipped(&a)) {
                continue;
            }
            s.push_str(t);
        }
    }
    s
}

fn walk_html(el: ElementRef, tb: &mut TextBuilder) {
    let mut loose = String::new();
    for child in el.children() {
        match child.value() {
            Node::Text(t) => loose.push_str(t),
            Node::Element(_) => {
                let c = ElementRef::wrap(child).unwrap();
                if skipped(&c) {
                    continue;
                }
                let name = c.value().name();
                let inline = matches!(
                    name,
                    "a" | "span"
                        | "strong"
                        | "em"
                        | "b"
                        | "i"
                        | "code"
                        | "small"
                        | "sup"
                        | "sub"
                        | "br"
                        | "mark"
                        | "kbd"
                );
                if inline {
                    loose.push_str(&inner_text(c));
                    continue;
                }
                tb.block(&collapse_ws(&loose), false);
                loose.clear();
                match name {
                    "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                        let level = name[1..].parse().unwrap_or(1);
                        tb.heading(level, &inner_text(c));
                    }
                    "p" | "li" | "dd" | "dt" | "blockquote" | "figcaption" | "caption" => {
                        tb.block(&collapse_ws(&inner_text(c)), false)
                    }
                    "pre" => tb.block(&inner_text(c), true),
                    "table" => {
                        let rows: Vec<String> = c
                            .descendants()
                            .filter_map(ElementRef::wrap)
                            .filter(|e| e.value().name() == "tr")
                            .map(|tr| {
                                tr.children()
                                    .filter_map(ElementRef::wrap)
                                    .filter(|e| matches!(e.value().name(), "td" | "th"))
                                    .map(|cell| collapse_ws(&inner_text(cell)))
                                    .collect::<Vec<_>>()
                                    .join(" | ")
                            })
                            .collect();
                        tb.block(&rows.join("\n"), true)
                    }
                    _ => walk_html(c, tb),
                }
            }
            _ => {}
        }
    }
    tb.block(&collapse_ws(&loose), false);
}

pub fn parse_html(raw: &str) -> ParsedDoc {
    let html = Html::parse_document(&normalize(raw));
    let sel = |s: &str| scraper::Selector::parse(s).expect("valid selector");
    let title =
        html.select(&sel("title")).next().map(|t| collapse_ws(&t.text().collect::<String>())).filter(|t| !t.is_empty());
    let root = html
        .select(&sel("main"))
        .next()
        .or_else(|| html.select(&sel("article")).next())
        .or_else(|| html.select(&sel("[role=main]")).next())
        .or_else(|| html.select(&sel("body")).next())
        .unwrap_or_else(|| html.root_element());
    let mut tb = TextBuilder::default();
    walk_html(root, &mut tb);
    let mut boilerplate_lines = 0;
    let mut markers = std::collections::BTreeSet::new();
    tb.blocks.retain(|b| {
        markers.extend(confidentiality_marker(&tb.text[b.span.clone()]));
        let keep = !is_boilerplate_line(&tb.text[b.span.clone()]);
        boilerplate_lines += usize::from(!keep);
        keep
    });
    let title = title.or_else(|| tb.blocks.first().and_then(|b| b.section.first().cloned()));
    let url = html
        .select(&sel("link[rel~=canonical][href]"))
        .filter_map(|l| l.value().attr("href"))
        .chain(html.select(&sel("meta[property='og:url'][content]")).filter_map(|m| m.value().attr("content")))
        .find_map(document_url);
    ParsedDoc { title, text: tb.text, blocks: tb.blocks, boilerplate_lines, markers, url }
}

/// A one-line paragraph that reads like a heading: short, no closing punctuation.
fn heading_level(para: &str) -> Option<usize> {
    let p = para.trim();
    if p.contains('\n') || p.chars().count() > 60 || p.is_empty() {
        return None;
    }
    if p.ends_with(['。', '.', '!', '?', '！', '？', ':', '：', '、', ',', ')', '）']) {
        return None;
    }
    let starts_numbered = |s: &str| {
        let d: String = s.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        !d.is_empty() && d.chars().any(|c| c.is_ascii_digit())
    };
    // A short line of a few words standing alone is a heading in manuals written as text.
    let few_words = p.split_whitespace().count() <= 8;
    if p.starts_with(['■', '●', '◆', '【', '#', '第']) || starts_numbered(p) || few_words {
        let numbering: String = p.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let depth = numbering.split('.').filter(|g| !g.is_empty()).count();
        return Some(depth.clamp(1, 4));
    }
    None
}

fn push_plain(tb: &mut TextBuilder, text: &str) {
    for para in text.split("\n\n") {
        let para = para.trim_matches('\n');
        if para.trim().is_empty() {
            continue;
        }
        match heading_level(para) {
            Some(level) => tb.heading(level, para.trim_start_matches(['#', ' '])),
            None => tb.block(para, false),
        }
    }
}

pub fn parse_plain(raw: &str) -> ParsedDoc {
    let (text, boilerplate_lines, markers) = strip_boilerplate(&normalize(raw));
    let mut tb = TextBuilder::default();
    push_plain(&mut tb, &text);
    let title = tb.blocks.first().and_then(|b| b.section.first().cloned());
    ParsedDoc { title, text: tb.text, blocks: tb.blocks, boilerplate_lines, markers, url: None }
}

/// Text of each page of a PDF, in this process. pdf-extract panics on some malformed files;
/// a bad file must not take ingestion down.
pub fn extract_pdf_pages(bytes: &[u8]) -> Result<Vec<String>> {
    if !bytes.starts_with(b"%PDF") {
        return Err(Error::Pdf("missing %PDF header".into()));
    }
    std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| Error::Pdf("malformed PDF structure".into()))?
        .map_err(|e| Error::Pdf(e.to_string()))
}

/// What extracts PDF pages; a program installs one that isolates the parser (a subprocess with
/// time and memory limits), since a compression bomb or a parser loop in one uploaded file must
/// not take the process down. Without one, [`extract_pdf_pages`] runs in-process.
pub type PdfExtractor = fn(&[u8]) -> Result<Vec<String>>;

static PDF_EXTRACTOR: std::sync::OnceLock<PdfExtractor> = std::sync::OnceLock::new();

/// Install the process's PDF extractor (once; later calls are ignored).
pub fn set_pdf_extractor(f: PdfExtractor) {
    let _ = PDF_EXTRACTOR.set(f);
}

pub fn parse_pdf(bytes: &[u8]) -> Result<ParsedDoc> {
    if !bytes.starts_with(b"%PDF") {
        return Err(Error::Pdf("missing %PDF header".into()));
    }
    let pages = match PDF_EXTRACTOR.get() {
        Some(extract) => extract(bytes)?,
        None => extract_pdf_pages(bytes)?,
    };
    let pages: Vec<String> = pages.iter().map(|p| normalize(p)).collect();
    // Running headers and footers: lines found on at least half of the pages (2 or more).
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for p in &pages {
        let mut seen = std::collections::HashSet::new();
        for l in p.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if seen.insert(l) {
                *counts.entry(l).or_default() += 1;
            }
        }
    }
    let repeated = |l: &str| {
        let n = counts.get(l.trim()).copied().unwrap_or(0);
        n >= 2 && n * 2 >= pages.len()
    };
    let mut boilerplate_lines = 0;
    let mut markers = std::collections::BTreeSet::new();
    let mut tb = TextBuilder::default();
    for page in &pages {
        let kept: Vec<&str> = page
            .lines()
            .filter(|l| {
                markers.extend(confidentiality_marker(l));
                let drop = is_boilerplate_line(l) || (!l.trim().is_empty() && repeated(l));
                boilerplate_lines += usize::from(drop);
                !drop
            })
            .collect();
        push_plain(&mut tb, &kept.join("\n"));
    }
    if tb.text.trim().is_empty() {
        return Err(Error::PdfNoText);
    }
    let title = tb.blocks.first().and_then(|b| b.section.first().cloned());
    Ok(ParsedDoc { title, text: tb.text, blocks: tb.blocks, boilerplate_lines, markers, url: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_sections_and_atomic_blocks() {
        let md = "# VPN Guide\n\nIntro.\n\n## Setup\n\nStep one.\n\n```sh\nvpn connect\n\nvpn status\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Trouble\n\nRestart.\n\n© 2024 Example Corp. All rights reserved.\n";
        let d = parse_markdown(md);
        assert_eq!(d.title.as_deref(), Some("VPN Guide"));
        assert_eq!(d.boilerplate_lines, 1);
        let code = d.blocks.iter().find(|b| d.text[b.span.clone()].starts_with("```")).unwrap();
        assert!(code.atomic);
        assert!(d.text[code.span.clone()].contains("vpn status"));
        assert_eq!(code.section, vec!["VPN Guide", "Setup"]);
        let table = d.blocks.iter().find(|b| d.text[b.span.clone()].starts_with("| a")).unwrap();
        assert!(table.atomic);
        let last = d.blocks.last().unwrap();
        assert_eq!(&d.text[last.span.clone()], "Restart.");
        assert_eq!(last.section, vec!["VPN Guide", "Trouble"]);
    }

    #[test]
    fn front_matter_gives_the_title_and_url_and_never_becomes_text() {
        let md = "---\ntitle: \"経費精算ガイド\"\nurl: https://wiki.example.com/経費/精算?v=2\ntags:\n  - hr\n---\n\n# 旧タイトル\n\n申請は月末まで。\n";
        let d = parse_markdown(md);
        assert_eq!(d.title.as_deref(), Some("経費精算ガイド"));
        assert_eq!(d.url.as_deref(), Some("https://wiki.example.com/%E7%B5%8C%E8%B2%BB/%E7%B2%BE%E7%AE%97?v=2"));
        assert!(!d.text.contains("url:") && !d.text.contains("tags"), "{}", d.text);
        assert_eq!(d.blocks[0].section, vec!["旧タイトル"]);
        // A leading thematic break followed by prose is not front matter.
        let d = parse_markdown("---\n\nIntro paragraph.\n\n---\n\nMore.\n");
        assert!(d.url.is_none() && d.text.contains("Intro paragraph."));
        let d = parse_markdown("---\nJust a sentence without a key\n---\n");
        assert!(d.text.contains("Just a sentence"));
        // Unsafe addresses are dropped, the document kept.
        for bad in [
            "javascript:alert(1)",
            "/relative/page",
            "file:///etc/passwd",
            "https://user:pw@host/x",
            "data:text/html,x",
        ] {
            let d = parse_markdown(&format!("---\nurl: {bad}\n---\n# T\n\nBody.\n"));
            assert!(d.url.is_none(), "{bad}");
            assert!(d.text.contains("Body."));
        }
    }

    #[test]
    fn an_html_pages_canonical_link_is_its_url() {
        let page = r#"<html><head><title>VPN</title><link rel="canonical" href="https://intranet.example.com/it/vpn">
            <meta property="og:url" content="https://other.example.com/"></head><body><p>Connect.</p></body></html>"#;
        assert_eq!(parse_html(page).url.as_deref(), Some("https://intranet.example.com/it/vpn"));
        let og = r#"<html><head><meta property="og:url" content="https://intranet.example.com/a"></head><body><p>x</p></body></html>"#;
        assert_eq!(parse_html(og).url.as_deref(), Some("https://intranet.example.com/a"));
        let js = r#"<html><head><link rel="canonical" href="javascript:alert(1)"></head><body><p>x</p></body></html>"#;
        assert_eq!(parse_html(js).url, None);
    }

    #[test]
    fn html_main_text_only() {
        let html = r#"<html><head><title>Leave policy</title><style>p{}</style></head><body>
            <nav><a href="/">Home</a> Menu</nav><main><h1>Leave</h1><p>Apply <b>two weeks</b> ahead.</p>
            <script>alert(1)</script><div class="sidebar">Related links</div>
            <table><tr><th>Type</th><th>Days</th></tr><tr><td>Annual</td><td>20</td></tr></table></main>
            <footer>© 2024 Example Corp.</footer></body></html>"#;
        let d = parse_html(html);
        assert_eq!(d.title.as_deref(), Some("Leave policy"));
        assert!(d.text.contains("Apply two weeks ahead."));
        assert!(d.text.contains("Annual | 20"));
        for bad in ["Home", "alert", "Related", "p{}", "©"] {
            assert!(!d.text.contains(bad), "{bad} leaked into {:?}", d.text);
        }
        assert_eq!(d.blocks[1].section, vec!["Leave"]);
    }

    #[test]
    fn plain_text_headings() {
        let d = parse_plain("■ 経費精算の手順\n\n領収書を添付して申請します。\n\n1.2 注意事項\n\n期限は月末です。");
        assert_eq!(d.blocks.len(), 4);
        assert_eq!(d.blocks[1].section, vec!["■ 経費精算の手順"]);
        assert_eq!(d.blocks[3].section, vec!["■ 経費精算の手順", "1.2 注意事項"]);
    }

    #[test]
    fn pdf_text_without_running_headers() {
        let b =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../knowledge/manuals/hr/business-travel.en.pdf"))
                .unwrap();
        let d = parse_pdf(&b).unwrap();
        assert!(d.text.contains("12,000 yen per night"), "{}", d.text);
        assert!(!d.text.contains("Internal") && !d.text.contains("Page 1"), "{}", d.text);
        assert_eq!(d.title.as_deref(), Some("Business Travel Policy"));
        assert!(d.boilerplate_lines >= 4);
    }

    #[test]
    fn rejects_binary_and_bad_utf8() {
        assert!(matches!(decode_text(b"\x00\x01\x02garbage"), Err(Error::Binary(_))));
        assert!(matches!(decode_text(b"ok \xff\xfe bad"), Err(Error::NotUtf8(3))));
        assert!(matches!(parse_pdf(b"%PDF-1.4\n1 0 obj\n<<"), Err(Error::Pdf(_))));
    }
}
