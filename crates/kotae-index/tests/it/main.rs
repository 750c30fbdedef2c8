//! Knowledge-base tests with deterministic vectors: access control, atomic replacement,
//! crash consistency, hybrid search behaviour. No model is involved (kotae-index never calls one).

use std::path::Path;

use kotae_index::vector::HnswSettings;
use kotae_index::{
    ChunkId, FileEntry, Fusion, IndexConfig, IndexedChunk, KnowledgeIndex, SearchMode, SearchRequest, VectorPoint,
};
use proptest::prelude::*;

const DIM: usize = 16;

fn vec_for(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 500.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

fn index_config(dir: &Path, embedder: &str) -> IndexConfig {
    IndexConfig {
        dir: dir.to_path_buf(),
        embedder: embedder.into(),
        dim: Some(DIM),
        ja_dictionary: None,
        hnsw: HnswSettings::default(),
        server: None,
        lexicon: None,
        cross_lingual_weight: 0.0,
        links: Vec::new(),
    }
}

fn open(dir: &Path) -> KnowledgeIndex {
    KnowledgeIndex::open(&index_config(dir, "test")).unwrap()
}

fn chunk(source: &str, i: u32, text: &str, groups: &[&str]) -> IndexedChunk {
    let groups: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
    IndexedChunk {
        id: ChunkId::of(source, "S", text, &groups),
        source: source.into(),
        kind: "manual".into(),
        section: vec!["Doc".into(), format!("S{i}")],
        span: (i as u64 * 10, i as u64 * 10 + 9),
        text: text.into(),
        lang: if !text.is_ascii() { "ja".into() } else { "en".into() },
        ordinal: i,
        doc_version: "v1".into(),
        groups,
        timestamp: None,
        ingested_unix: 0,
        text_hash: format!("{:x}", ChunkId::of("", "", text, &[]).0),
        flags: vec![],
    }
}

fn write_source(kb: &mut KnowledgeIndex, source: &str, chunks: &[IndexedChunk]) {
    write_source_at(kb, source, chunks, None)
}

fn write_source_at(kb: &mut KnowledgeIndex, source: &str, chunks: &[IndexedChunk], url: Option<&str>) {
    let mut w = kb.write().unwrap();
    let points: Vec<VectorPoint> = chunks
        .iter()
        .map(|c| VectorPoint {
            id: c.id,
            vector: vec_for(c.id.0),
            groups: c.groups.clone(),
            lang: c.lang.clone(),
            source: c.source.clone(),
        })
        .collect();
    w.put_vectors(&points).unwrap();
    let entry = FileEntry {
        root: "/r".into(),
        hash: "h".into(),
        groups: vec![],
        chunks: chunks.len(),
        ingested_unix: 0,
        url: url.map(String::from),
        ..Default::default()
    };
    w.replace_source(source, entry, chunks).unwrap();
    w.finish().unwrap();
}

fn req(text: &str, vector: Option<Vec<f32>>, mode: SearchMode, k: usize, groups: &[&str]) -> SearchRequest {
    SearchRequest {
        text: text.into(),
        vector,
        mode,
        top_k: k,
        groups: groups.iter().map(|s| s.to_string()).collect(),
        lang: None,
        fusion: Fusion::default(),
    }
}

const GROUPS: [&str; 4] = ["public", "hr", "it", "exec"];
const WORDS: [&str; 8] = ["vpn", "password", "expense", "leave", "printer", "invoice", "room", "travel"];

fn acl_fixture() -> (tempfile::TempDir, KnowledgeIndex, Vec<IndexedChunk>) {
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    let mut all = Vec::new();
    for doc in 0..6u32 {
        let g = [GROUPS[doc as usize % 4]];
        let chunks: Vec<IndexedChunk> = (0..8u32)
            .map(|i| {
                chunk(
                    &format!("d{doc}.md"),
                    i,
                    &format!("{} {} note {doc}-{i}", WORDS[(i as usize + doc as usize) % 8], WORDS[i as usize % 8]),
                    &g,
                )
            })
            .collect();
        write_source(&mut kb, &format!("d{doc}.md"), &chunks);
        all.extend(chunks);
    }
    (dir, kb, all)
}

#[test]
fn hits_link_to_the_documents_own_address_else_the_longest_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = index_config(dir.path(), "test");
    cfg.links = vec![
        kotae_index::LinkRule { prefix: "".into(), url: "https://intranet.example.com/docs".into() },
        kotae_index::LinkRule { prefix: "it/".into(), url: "https://wiki.example.com/it/{stem}".into() },
        kotae_index::LinkRule { prefix: "it".into(), url: "https://never.example.com/{path}".into() },
    ];
    let mut kb = KnowledgeIndex::open(&cfg).unwrap();
    let doc = |kb: &mut KnowledgeIndex, source: &str, text: &str, url: Option<&str>| {
        write_source_at(kb, source, &[chunk(source, 0, text, &["public"])], url)
    };
    doc(&mut kb, "it/vpn guide#2.md", "vpn connect router", None);
    doc(&mut kb, "hr/休暇.md", "vacation days leave", None);
    doc(&mut kb, "itsm.md", "ticket queue priority", None);
    doc(&mut kb, "it/own.md", "printer toner jam", Some("https://sharepoint.example.com/sites/it/printers.aspx"));
    let url = |q: &str| {
        let hits = kb.search(&req(q, None, SearchMode::Bm25, 1, &[])).unwrap();
        hits[0].url.clone()
    };
    assert_eq!(url("vpn").as_deref(), Some("https://wiki.example.com/it/vpn%20guide%232"));
    assert_eq!(url("vacation").as_deref(), Some("https://intranet.example.com/docs/hr/%E4%BC%91%E6%9A%87.md"));
    // `it` is a folder prefix, not a string prefix: itsm.md falls to the catch-all rule.
    assert_eq!(url("ticket").as_deref(), Some("https://intranet.example.com/docs/itsm.md"));
    assert_eq!(url("printer").as_deref(), Some("https://sharepoint.example.com/sites/it/printers.aspx"));
    drop(kb);
    // Without rules, only the document's own address.
    let kb = open(dir.path());
    let first = |q: &str| kb.search(&req(q, None, SearchMode::Bm25, 1, &[])).unwrap().remove(0);
    assert_eq!(first("vpn").url, None);
    assert!(first("printer").url.is_some());
    // A rule whose address is not http(s) is refused.
    let bad = kotae_index::LinkRule { prefix: "".into(), url: "javascript:alert('{path}')".into() };
    assert!(bad.check().unwrap_err().contains("not an absolute http(s) URL"));
}

#[test]
fn access_groups_never_leak_and_dense_fills_k() {
    let (_dir, kb, all) = acl_fixture();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 48, ..Default::default() });
    runner
        .run(
            &(prop::sample::subsequence(GROUPS.to_vec(), 0..4), 0usize..8, 1usize..20, 0u8..3),
            |(groups, w, k, mode)| {
                let mode = [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid][mode as usize];
                let mut visible: Vec<&str> = groups.clone();
                visible.push("public");
                let hits = kb.search(&req(WORDS[w], Some(vec_for(w as u64)), mode, k, &groups)).unwrap();
                for h in &hits {
                    let c = all.iter().find(|c| c.id.to_string() == h.chunk_id).unwrap();
                    prop_assert!(
                        c.groups.iter().any(|g| visible.contains(&g.as_str())),
                        "{:?} leaked to {:?}",
                        c.groups,
                        groups
                    );
                }
                if mode == SearchMode::Dense {
                    let n_visible =
                        all.iter().filter(|c| c.groups.iter().any(|g| visible.contains(&g.as_str()))).count();
                    prop_assert_eq!(hits.len(), k.min(n_visible), "filtering inside the engine keeps k results");
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn replacing_a_source_is_atomic_and_drops_old_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    let v1 = vec![chunk("a.md", 0, "old alpha text", &["public"]), chunk("a.md", 1, "old beta text", &["public"])];
    write_source(&mut kb, "a.md", &v1);
    assert_eq!(kb.num_chunks(), 2);
    let v2 = vec![chunk("a.md", 0, "new gamma text", &["public"])];
    write_source(&mut kb, "a.md", &v2);
    assert_eq!(kb.num_chunks(), 1);
    assert!(kb.search(&req("alpha", None, SearchMode::Bm25, 5, &[])).unwrap().is_empty());
    assert_eq!(kb.search(&req("gamma", None, SearchMode::Bm25, 5, &[])).unwrap().len(), 1);
    assert_eq!(kb.vectors().count().unwrap(), 1, "replaced vectors are deleted after the commit");
    assert_eq!(kb.manifest().files["a.md"].chunks, 1);
    // The manifest survives a reopen: it is the lexical commit's payload.
    drop(kb);
    let kb = open(dir.path());
    assert_eq!(kb.manifest().files.len(), 1);
}

#[test]
fn uncommitted_vectors_are_invisible_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    let committed = vec![chunk("a.md", 0, "committed text", &["public"])];
    write_source(&mut kb, "a.md", &committed);
    {
        // A crash after the vectors were written but before the lexical commit.
        let w = kb.write().unwrap();
        let ghost = chunk("b.md", 0, "ghost text", &["public"]);
        w.put_vectors(&[VectorPoint {
            id: ghost.id,
            vector: vec_for(7),
            groups: ghost.groups.clone(),
            lang: "en".into(),
            source: "b.md".into(),
        }])
        .unwrap();
    }
    drop(kb);
    let kb = open(dir.path());
    assert_eq!(kb.vectors().count().unwrap(), 2);
    let hits = kb.search(&req("ghost", Some(vec_for(7)), SearchMode::Dense, 5, &[])).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].source, "a.md");
    assert_eq!(kb.sweep_orphans().unwrap(), 1);
    assert_eq!(kb.vectors().count().unwrap(), 1);
}

#[test]
fn hybrid_needs_a_vector_and_dedups_identical_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    write_source(&mut kb, "a.md", &[chunk("a.md", 0, "same words here", &["public"])]);
    write_source(&mut kb, "b.md", &[chunk("b.md", 0, "same words here", &["public"])]);
    let err = kb.search(&req("same", None, SearchMode::Hybrid, 5, &[])).unwrap_err();
    assert!(err.to_string().contains("embedding"));
    let hits = kb.search(&req("same", None, SearchMode::Bm25, 5, &[])).unwrap();
    assert_eq!(hits.len(), 1, "identical text from two sources is shown once");
}

#[test]
fn a_title_match_adds_to_a_body_match() {
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    let mut titled = chunk("t.md", 0, "the printer is on the third floor", &["public"]);
    titled.section = vec!["Printer guide".into()];
    let mut plain = chunk("b.md", 0, "the printer is on the third floor.", &["public"]);
    plain.section = vec!["Office guide".into()];
    write_source(&mut kb, "b.md", &[plain]);
    write_source(&mut kb, "t.md", &[titled]);
    let hits = kb.search(&req("printer", None, SearchMode::Bm25, 5, &[])).unwrap();
    assert_eq!(hits.iter().map(|h| h.source.as_str()).collect::<Vec<_>>(), ["t.md", "b.md"]);
}

#[test]
fn question_words_do_not_pull_faq_titles_above_the_topic() {
    // "How do I Become a GIMP Wizard?" shares only question words with the question: before
    // they were dropped (and titles weighed 2×), its title outranked the page on the topic.
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    let mut faq = chunk("faq.md", 0, "Chapters on images, layers and filters.", &["public"]);
    faq.section = vec!["How do I become a wizard? What can I do here?".into()];
    let mut topic = chunk("feather.md", 0, "Feathering softens the edges of a selection gradually.", &["public"]);
    topic.section = vec!["Feather".into()];
    write_source(&mut kb, "faq.md", &[faq]);
    write_source(&mut kb, "feather.md", &[topic]);
    let hits = kb.search(&req("How do I soften the edges of my selection?", None, SearchMode::Bm25, 5, &[])).unwrap();
    assert_eq!(hits.iter().map(|h| h.source.as_str()).collect::<Vec<_>>(), ["feather.md"]);
}

#[test]
fn a_different_embedder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    write_source(&mut kb, "a.md", &[chunk("a.md", 0, "x", &["public"])]);
    drop(kb);
    let err = KnowledgeIndex::open(&index_config(dir.path(), "other")).err().unwrap();
    assert!(err.to_string().contains("built with embedder 'test'"), "{err}");
}

#[test]
fn a_second_process_gets_a_clear_error_not_a_storage_lock_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut kb = open(dir.path());
    write_source(&mut kb, "a.md", &[chunk("a.md", 0, "x", &["public"])]);
    // The same directory opened again while the first handle lives (as `kotae search` beside
    // a running `kotae serve`).
    let err = KnowledgeIndex::open(&index_config(dir.path(), "test")).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("open in another Kotae process") && msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(!msg.contains("WAL"), "{msg}");
    drop(kb);
    assert_eq!(open(dir.path()).num_chunks(), 1, "free again once the holder is gone");
}

mod japanese;
mod qdrant_server;

/// A document replaced again and again while hybrid searches run beside it: no search may
/// return chunks of both versions (BM25 hits of the old one and dense hits of the new one
/// were mixed when the two reads saw different commits).
#[test]
fn a_search_during_a_replacement_never_mixes_two_versions() {
    let dir = tempfile::tempdir().unwrap();
    let kb = std::sync::Arc::new(open(dir.path()));
    let version = |v: &str| -> Vec<IndexedChunk> {
        (0..3).map(|i| chunk("p.md", i, &format!("parking rules version {v} part {i}"), &["public"])).collect()
    };
    let replace = |kb: &KnowledgeIndex, chunks: &[IndexedChunk]| {
        let mut w = kb.write().unwrap();
        let points: Vec<VectorPoint> = chunks
            .iter()
            .map(|c| VectorPoint {
                id: c.id,
                vector: vec_for(c.id.0),
                groups: c.groups.clone(),
                lang: c.lang.clone(),
                source: c.source.clone(),
            })
            .collect();
        w.put_vectors(&points).unwrap();
        let entry = FileEntry {
            root: "/r".into(),
            hash: "h".into(),
            groups: vec![],
            chunks: chunks.len(),
            ingested_unix: 0,
            ..Default::default()
        };
        w.replace_source("p.md", entry, chunks).unwrap();
        w.commit().unwrap();
    };
    replace(&kb, &version("ONE"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (kb, stop) = (kb.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut searches, mut mixed) = (0usize, 0usize);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // BM25 matches only version ONE's words, so dense brings in the other.
                    let hits =
                        kb.search(&req("parking ONE", Some(vec_for(r + 7)), SearchMode::Hybrid, 10, &[])).unwrap();
                    let one = hits.iter().any(|h| h.text.contains("ONE"));
                    let two = hits.iter().any(|h| h.text.contains("TWO"));
                    mixed += usize::from(one && two);
                    searches += 1;
                }
                (searches, mixed)
            })
        })
        .collect();
    for round in 0..150 {
        replace(&kb, &version(if round % 2 == 0 { "TWO" } else { "ONE" }));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut searches, mut mixed) = (0, 0);
    for r in readers {
        let (s, m) = r.join().unwrap();
        searches += s;
        mixed += m;
    }
    assert!(searches > 100, "the searches ran beside the replacements ({searches})");
    assert_eq!(mixed, 0, "{mixed} of {searches} searches returned both versions");
}
