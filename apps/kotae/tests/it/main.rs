//! End-to-end tests with the real multilingual model over `knowledge/`, through the same
//! functions the CLI calls (and the binary itself for kill-and-resume). Models come from
//! `$KOTAE_TEST_DATA` (installed by scripts/test.sh).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use kotae::config::{Config, Overrides};
use kotae::ingest::{run_ingest, IngestOptions, IngestSummary};
use kotae::search::{run_search, SearchOptions};
use kotae_index::{KnowledgeIndex, SearchMode};
use kotae_models::{BertEmbedder, Embedder};

mod bad_input;
mod browser;
mod embedder;
mod finetune;
mod guard;
mod kill_resume;
mod postgres;
mod qdrant_server;
mod serve;
mod slack;

pub fn test_data() -> PathBuf {
    let d = std::env::var("KOTAE_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/test-data"));
    assert!(d.join("models").exists(), "test models missing in {}: run scripts/test.sh", d.display());
    d
}

/// A screenshot of `page` in real headless Chromium (installed by scripts/test.sh; or
/// `$KOTAE_CHROMIUM`), `width`×`height` pixels, written to `png`. Checks the PNG's size and
/// that the page drew more than a blank screen.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) {
    let browser = std::env::var("KOTAE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let out = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            &format!("--window-size={width},{height}"),
            &format!("--screenshot={}", png.display()),
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {browser} (scripts/test.sh installs chromium): {e}"));
    assert!(png.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (width, height), "screenshot size");
    // A blank page of this size compresses to a few kB; text and charts do not.
    assert!(bytes.len() > 40_000, "the screenshot looks blank ({} bytes)", bytes.len());
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A fresh data directory whose `models` points at the installed test models.
pub fn fresh_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_data().join("models"), dir.path().join("models")).unwrap();
    dir
}

pub fn config(data_dir: &Path) -> Config {
    let mut cfg =
        Config::load(&Overrides { data_dir: Some(data_dir.to_path_buf()), threads: Some(2), ..Default::default() })
            .unwrap();
    cfg.ingest.commit_every = 4;
    // The test company's documents are for everyone unless a test says otherwise.
    cfg.ingest.default_groups = vec!["public".into()];
    // The embedded engine, whatever QDRANT_URL the environment has: a test that wants a Qdrant
    // server says so (qdrant.rs), and never shares a collection with another.
    cfg.vector_store = Default::default();
    cfg.state = Default::default();
    cfg
}

pub fn embedder() -> &'static BertEmbedder {
    static E: OnceLock<BertEmbedder> = OnceLock::new();
    E.get_or_init(|| {
        let cfg = config(&test_data());
        kotae::load_embedder(&cfg).unwrap()
    })
}

pub fn ingest(cfg: &Config, kb: &mut KnowledgeIndex, paths: &[&Path], groups: &[&str], prune: bool) -> IngestSummary {
    let opts = IngestOptions {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        prune,
        quiet: true,
        watch: None,
        only_indexed: false,
        force: false,
    };
    run_ingest(cfg, kb, &kotae::ingest::EmbedderHandle::with(cfg, embedder()), &opts).unwrap()
}

pub fn search(cfg: &Config, kb: &KnowledgeIndex, q: &str, mode: SearchMode, groups: &[&str]) -> Vec<String> {
    let o = SearchOptions {
        query: q.into(),
        top_k: Some(5),
        mode: Some(mode),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        lang: None,
    };
    run_search(cfg, kb, Some(embedder() as &dyn Embedder), &o).unwrap().hits.into_iter().map(|h| h.source).collect()
}

/// BM25 hits for `q` (top 5, every group): no embedder needed.
pub fn bm25_hits(cfg: &Config, kb: &KnowledgeIndex, q: &str) -> Vec<kotae_index::Hit> {
    let o = SearchOptions { query: q.into(), top_k: Some(5), mode: Some(SearchMode::Bm25), groups: vec![], lang: None };
    run_search(cfg, kb, None, &o).unwrap().hits
}

struct Shared {
    _dir: tempfile::TempDir,
    cfg: Config,
    kb: Mutex<KnowledgeIndex>,
    first: IngestSummary,
}

fn knowledge() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = fresh_data_dir();
        let cfg = config(dir.path());
        let mut kb = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
        let first = ingest(&cfg, &mut kb, &[&workspace().join("knowledge")], &[], true);
        Shared { _dir: dir, cfg, kb: Mutex::new(kb), first }
    })
}

#[test]
fn ingests_the_sample_company_cleanly() {
    let s = &knowledge().first;
    assert!(
        s.skipped.iter().all(|k| k.path.ends_with("README.md") || k.reason.is_empty()),
        "unexpected skips: {:?}",
        s.skipped
    );
    assert_eq!(s.files_ingested, 23, "19 manuals, 3 logs, README");
    assert!(s.unresolved_inquiries_skipped >= 15, "{s:?}");
    assert!(s.duplicates_dropped >= 30, "{s:?}");
    assert!(s.personal_data_redacted >= 20, "{s:?}");
    assert!(s.boilerplate_lines_removed >= 5, "{s:?}");
    let sh = knowledge();
    let kb = sh.kb.lock().unwrap();
    for q in ["hoshizora.example", "4111 1111", "customer-mail.example", "090-", "5555 5555"] {
        let o = SearchOptions {
            query: q.into(),
            top_k: Some(50),
            mode: Some(SearchMode::Bm25),
            groups: vec![],
            lang: None,
        };
        for h in run_search(&sh.cfg, &kb, None, &o).unwrap().hits {
            assert!(
                h.kind != "inquiry" || !h.text.contains(q),
                "personal data '{q}' reached the index in {}: {}",
                h.source,
                h.text
            );
        }
    }
    let o = SearchOptions {
        query: "連絡先 Contact".into(),
        top_k: Some(50),
        mode: Some(SearchMode::Bm25),
        groups: vec![],
        lang: None,
    };
    let redacted = run_search(&sh.cfg, &kb, None, &o)
        .unwrap()
        .hits
        .into_iter()
        .filter(|h| h.text.contains("[EMAIL]") || h.text.contains("[PHONE]"))
        .count();
    assert!(redacted > 0, "redaction placeholders are indexed");
}

#[test]
fn finds_the_expected_sources_in_japanese_and_english() {
    let sh = knowledge();
    let kb = sh.kb.lock().unwrap();
    let cases = [
        ("VPNにつながらないときはどうする", "manuals/it/vpn-setup.ja.md"),
        ("ログイン用の暗証を失念した", "manuals/it/password-reset.ja.md"),
        ("立て替えたお金はいつ振り込まれる", "manuals/hr/expenses.ja.md"),
        ("新型コロナウイルスにかかったらいつから出社できる", "manuals/hr/infection-control.ja.md"),
        ("給与明細はどこで見られますか", "logs/hr-ga.ja.jsonl"),
        ("How do I reserve a meeting room?", "manuals/ga/meeting-rooms.en.md"),
        ("How much is the per diem abroad?", "manuals/hr/business-travel.en.pdf"),
        ("What is the API request limit?", "logs/support-and-office.en.csv"),
        ("How do I connect to the VPN from home?", "manuals/it/vpn-setup.ja.md"),
        // Only BM25's dictionary translation (大ホール → hall) links these to the English manuals.
        ("大ホールを使いたい", "manuals/ga/meeting-rooms.en.md"),
        ("出張のホテル代の上限はいくら", "manuals/hr/business-travel.en.pdf"),
    ];
    for (q, want) in cases {
        let got = search(&sh.cfg, &kb, q, SearchMode::Hybrid, &[]);
        assert!(got.iter().take(3).any(|s| s == want), "{q}: wanted {want} in the top 3, got {got:?}");
    }
}

#[test]
fn bm25_crosses_languages_through_the_dictionary() {
    let sh = knowledge();
    let kb = sh.kb.lock().unwrap();
    // No word in common with the English manual: only the EDICT translation (大ホール → hall) finds it.
    let got = search(&sh.cfg, &kb, "大ホールを使いたい", SearchMode::Bm25, &[]);
    assert_eq!(got.first().map(String::as_str), Some("manuals/ga/meeting-rooms.en.md"), "{got:?}");
}

/// The nightly retrieval evaluation, with its thresholds: floors per language and mode, and
/// hybrid never below bm25 or dense alone.
#[test]
fn retrieval_eval_meets_its_thresholds() {
    let sh = knowledge();
    let kb = sh.kb.lock().unwrap();
    let golden = kotae::eval::load_golden(&workspace().join("evals/retrieval/golden.jsonl")).unwrap();
    let thresholds: toml::Table =
        toml::from_str(&std::fs::read_to_string(workspace().join("evals/retrieval/thresholds.toml")).unwrap()).unwrap();
    let r = kotae::eval::run_retrieval_eval(&sh.cfg, &kb, embedder(), &golden, Some(&thresholds)).unwrap();
    kotae::eval::print_report(&r);
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
}

/// The answer gate on its own questions (the golden set, the out-of-scope set, the answer
/// set's dev split), with the floors of `evals/answer/thresholds.toml`: answerable questions
/// answered or quoted, unanswerable ones kept from the generator. Also: the held-out split is
/// never among the questions it was fitted to.
#[test]
fn the_answer_gate_meets_its_thresholds() {
    let sh = knowledge();
    let kb = sh.kb.lock().unwrap();
    let e = workspace().join("evals");
    let cases =
        kotae::answer_eval::load_cases(&[e.join("answer/ja.dev.jsonl"), e.join("answer/en.dev.jsonl")]).unwrap();
    assert!(cases.iter().all(|c| !c.id.contains("-ho-")));
    let questions = kotae::eval::scope_questions(
        &kotae::eval::load_golden(&e.join("retrieval/golden.jsonl")).unwrap(),
        &kotae::eval::load_scope(&e.join("answer/out_of_scope.jsonl")).unwrap(),
        &cases,
    );
    let thresholds: toml::Table =
        toml::from_str(&std::fs::read_to_string(e.join("answer/thresholds.toml")).unwrap()).unwrap();
    let (r, items) = kotae::eval::run_scope_eval(&sh.cfg, &kb, embedder(), questions, Some(&thresholds)).unwrap();
    kotae::eval::print_scope(&r);
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
    // All three outcomes occur.
    use kotae_answer::gate::Decision;
    for d in [Decision::Answer, Decision::Quote, Decision::Decline] {
        assert!(items.iter().any(|x| x.decision == d), "no {d:?}");
    }
}

#[test]
fn reingesting_an_unchanged_corpus_does_no_embedding_work() {
    let sh = knowledge();
    let mut kb = sh.kb.lock().unwrap();
    let before = kb.num_chunks();
    let s = ingest(&sh.cfg, &mut kb, &[&workspace().join("knowledge")], &[], true);
    assert_eq!((s.files_ingested, s.chunks_embedded, s.files_removed), (0, 0, 0), "{s:?}");
    assert_eq!(s.files_unchanged, sh.first.files_ingested);
    assert_eq!(kb.num_chunks(), before);
}

/// The corpus behind `scripts/bench/ingest_scale.sh`, small: it is generated deterministically,
/// ingests batch by batch (four files a commit here), is searchable by what makes each document
/// its own (office and year), and a second run finds every file unchanged.
#[test]
fn a_generated_company_corpus_ingests_in_batches_and_reingests_for_free() {
    let corpus = tempfile::tempdir().unwrap();
    let spec = kotae::corpus::CorpusSpec { docs: 24, docs_per_log: 12, log_rows: 10, seed: 3 };
    let st = kotae::corpus::generate(&workspace().join("knowledge"), corpus.path(), &spec).unwrap();
    assert_eq!((st.manuals, st.logs), (22, 2));
    let again = tempfile::tempdir().unwrap();
    kotae::corpus::generate(&workspace().join("knowledge"), again.path(), &spec).unwrap();
    let files = |d: &Path| {
        let mut v: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(d)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().strip_prefix(d).unwrap().to_path_buf(), std::fs::read(e.path()).unwrap()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(files(corpus.path()), files(again.path()), "the same seed must give the same corpus");
    assert!(kotae::corpus::generate(&workspace().join("knowledge"), corpus.path(), &spec).is_err(), "not empty");

    let dir = fresh_data_dir();
    let cfg = config(dir.path());
    let mut kb = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    let s = ingest(&cfg, &mut kb, &[corpus.path()], &[], false);
    assert_eq!(s.files_ingested + s.skipped.len(), 24, "{s:?}");
    assert!(s.files_ingested >= 22, "{:?}", s.skipped);
    assert!(s.chunks_written >= 60 && s.chunks_embedded == s.chunks_written, "{s:?}");
    assert!(s.peak_rss_bytes.unwrap() > 0);
    assert_eq!(kb.num_chunks(), s.chunks_written as u64);
    // Every document has a scope line naming its office: one of them is found by it.
    let doc = files(corpus.path()).into_iter().find(|(p, _)| p.to_string_lossy().ends_with(".ja.md")).unwrap();
    let text = String::from_utf8(doc.1).unwrap();
    let scope = text.lines().find(|l| l.starts_with("本書は")).unwrap().to_string();
    let hits = search(&cfg, &kb, &scope, SearchMode::Hybrid, &["public"]);
    assert!(hits.iter().any(|h| *h == doc.0.to_string_lossy()), "{scope}: {hits:?}");
    let r = ingest(&cfg, &mut kb, &[corpus.path()], &[], false);
    assert_eq!((r.files_ingested, r.chunks_embedded, r.files_unchanged), (0, 0, s.files_ingested), "{r:?}");
}

#[test]
fn changed_files_replace_their_chunks_and_prune_removes_deleted_ones() {
    let data = fresh_data_dir();
    let cfg = config(data.path());
    let corpus = tempfile::tempdir().unwrap();
    std::fs::write(corpus.path().join("a.md"), "# Parking\n\nThe bicycle parking is behind building B.\n").unwrap();
    std::fs::write(corpus.path().join("b.md"), "# Canteen\n\nThe canteen opens at 11:30.\n").unwrap();
    let mut kb = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    let s = ingest(&cfg, &mut kb, &[corpus.path()], &[], false);
    assert_eq!(s.files_ingested, 2);
    std::fs::write(corpus.path().join("a.md"), "# Parking\n\nThe bicycle parking moved to the basement.\n").unwrap();
    let s = ingest(&cfg, &mut kb, &[corpus.path()], &[], false);
    assert_eq!((s.files_ingested, s.files_unchanged), (1, 1));
    let hits = bm25_hits(&cfg, &kb, "bicycle");
    assert_eq!(hits.len(), 1);
    assert!(hits[0].text.contains("basement") && !hits[0].text.contains("building B"));
    std::fs::remove_file(corpus.path().join("b.md")).unwrap();
    let s = ingest(&cfg, &mut kb, &[corpus.path()], &[], false);
    assert_eq!(s.files_removed, 0, "without --prune nothing is removed");
    assert_eq!(bm25_hits(&cfg, &kb, "canteen").len(), 1);
    let s = ingest(&cfg, &mut kb, &[corpus.path()], &[], true);
    assert_eq!(s.files_removed, 1);
    assert!(bm25_hits(&cfg, &kb, "canteen").is_empty());
    assert_eq!(kb.vectors().count().unwrap() as u64, kb.num_chunks());
}

/// A near-duplicate of an indexed chunk is dropped in a later run too (the same answer whatever
/// the order of runs), but only for readers of the same groups.
#[test]
fn a_copy_of_an_indexed_chunk_is_dropped_in_later_runs_but_not_for_other_groups() {
    let data = fresh_data_dir();
    let cfg = config(data.path());
    let text = "# Parking\n\nThe bicycle parking is behind building B, next to the loading dock; \
                bicycles left in front of the main entrance are removed on Fridays.\n";
    let (first, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(first.path().join("parking.md"), text).unwrap();
    std::fs::write(copy.path().join("parking-copy.md"), text).unwrap();
    let mut kb = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    let s = ingest(&cfg, &mut kb, &[first.path()], &["public"], false);
    assert_eq!((s.files_ingested, s.chunks_written), (1, 1), "{s:?}");
    for _ in 0..2 {
        let s = ingest(&cfg, &mut kb, &[copy.path()], &["public"], false);
        assert_eq!((s.files_ingested, s.chunks_written), (0, 0), "{s:?}");
        assert!(s.skipped.iter().any(|k| k.path == "parking-copy.md"), "{s:?}");
        assert_eq!(kb.num_chunks(), 1);
    }
    // For another group's readers it is no copy: it is indexed for them.
    let s = ingest(&cfg, &mut kb, &[copy.path()], &["hr"], false);
    assert_eq!((s.files_ingested, s.chunks_written), (1, 1), "{s:?}");
    assert_eq!(kb.num_chunks(), 2);
}

#[test]
fn access_groups_hide_content_from_other_users() {
    let data = fresh_data_dir();
    let cfg = config(data.path());
    let hr = tempfile::tempdir().unwrap();
    std::fs::write(hr.path().join("salary.md"), "# Salary bands\n\nGrade 5 salary band is confidential.\n").unwrap();
    let mut kb = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    ingest(&cfg, &mut kb, &[hr.path()], &["hr"], false);
    for mode in [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid] {
        assert!(search(&cfg, &kb, "salary band", mode, &[]).is_empty(), "{mode:?} leaked to public");
        assert!(search(&cfg, &kb, "salary band", mode, &["it"]).is_empty(), "{mode:?} leaked to it");
        assert_eq!(search(&cfg, &kb, "salary band", mode, &["hr"]), vec!["salary.md".to_string()]);
    }
}
