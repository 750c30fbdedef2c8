//! The same vector-store behaviour against a real Qdrant server. These tests are `#[ignore]`d
//! where no server is configured, so a machine without one reports them as not run instead of
//! passed: `scripts/test.sh` starts `../shared/bin/qdrant` on a loopback port, sets
//! `KOTAE_TEST_QDRANT_URL` and runs them with `--include-ignored`. Each test uses collections of
//! its own, named after the test and the process, so runs and tests never share data.

use std::sync::{Arc, Barrier};

use kotae_index::vector::HnswSettings;
use kotae_index::vector_server::{ServerConfig, ServerStore};
use kotae_index::{ChunkId, KnowledgeIndex, SearchMode, VectorFilter, VectorPoint, VectorStore};

use super::{chunk, index_config, req, vec_for, write_source, DIM};

/// The test server's gRPC URL; running an ignored test without one is a failure that says why.
fn server_url() -> String {
    std::env::var("KOTAE_TEST_QDRANT_URL").unwrap_or_else(|_| {
        panic!(
            "KOTAE_TEST_QDRANT_URL is not set: these tests need a Qdrant server \
             (scripts/test.sh starts ../shared/bin/qdrant and sets it)"
        )
    })
}

fn server_config(test: &str) -> ServerConfig {
    ServerConfig {
        url: server_url(),
        api_key: std::env::var("KOTAE_TEST_QDRANT_API_KEY").ok(),
        collection: format!("kotae_test_{test}_{}", std::process::id()),
        shards: None,
        replicas: None,
    }
}

fn points(n: u64) -> Vec<VectorPoint> {
    (0..n)
        .map(|i| VectorPoint {
            id: ChunkId(i + 1),
            vector: vec_for(i),
            groups: vec![if i % 2 == 0 { "public" } else { "hr" }.into()],
            lang: "en".into(),
            source: format!("s{i}"),
        })
        .collect()
}

#[test]
#[ignore = "needs a Qdrant server: scripts/test.sh starts one and sets KOTAE_TEST_QDRANT_URL"]
fn server_store_matches_the_embedded_contract() {
    let store = ServerStore::connect(&server_config("contract"), DIM, HnswSettings::default()).unwrap();
    store.upsert(&points(20)).unwrap();
    assert_eq!(store.count().unwrap(), 20);
    let public = VectorFilter { groups: vec!["public".into()], lang: None };
    let hits = store.search(&vec_for(3), 20, &public).unwrap();
    assert_eq!(hits.len(), 10, "filter applied inside the engine");
    assert!(hits.iter().all(|(id, _)| (id.0 - 1) % 2 == 0));
    let exact = store.search_exact(&vec_for(4), 1, &public).unwrap();
    assert_eq!(exact[0].0, ChunkId(5));
    store.delete(&[ChunkId(1), ChunkId(2)]).unwrap();
    let have = store.existing(&[ChunkId(1), ChunkId(3)]).unwrap();
    assert!(have.contains(&ChunkId(3)) && !have.contains(&ChunkId(1)));
    // Stored vectors read back (the same direction: cosine stores them normalized).
    let got = store.vectors(&[ChunkId(1), ChunkId(3)]).unwrap();
    assert_eq!(got.len(), 1);
    let (a, b) = (&got[&ChunkId(3)], vec_for(2));
    let cos = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt());
    assert!(cos > 0.9999, "{cos}");
    assert_eq!(store.all_ids().unwrap().len(), 18);
    // Reconnecting (a restart, another replica) finds the same points.
    let again = ServerStore::connect(&server_config("contract"), DIM, HnswSettings::default()).unwrap();
    assert_eq!(again.count().unwrap(), 18);
}

/// A server's request handlers run on tokio's worker threads, where `block_on` panics; the
/// store must work from there (current-thread and multi-thread runtimes alike).
#[test]
#[ignore = "needs a Qdrant server: scripts/test.sh starts one and sets KOTAE_TEST_QDRANT_URL"]
fn the_store_works_from_inside_async_code() {
    for (i, rt) in [
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        rt.block_on(async move {
            let store = ServerStore::connect(&server_config(&format!("async{i}")), DIM, HnswSettings::default())
                .expect("connect from async code");
            store.upsert(&points(6)).unwrap();
            let hits = store.search(&vec_for(2), 1, &VectorFilter::default()).unwrap();
            assert_eq!(hits[0].0, ChunkId(3));
            let store = Arc::new(store);
            let tasks: Vec<_> = (0..4u64)
                .map(|q| {
                    let s = store.clone();
                    tokio::spawn(async move { s.search(&vec_for(q), 1, &VectorFilter::default()).unwrap()[0].0 })
                })
                .collect();
            for (q, t) in tasks.into_iter().enumerate() {
                assert_eq!(t.await.unwrap(), ChunkId(q as u64 + 1));
            }
        });
    }
}

/// Replicas that start together all try to create the collection; all of them must come up,
/// on one collection with its payload indexes.
#[test]
#[ignore = "needs a Qdrant server: scripts/test.sh starts one and sets KOTAE_TEST_QDRANT_URL"]
fn replicas_starting_together_share_one_collection() {
    let cfg = server_config("race");
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (cfg, barrier) = (cfg.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                ServerStore::connect(&cfg, DIM, HnswSettings::default())
            })
        })
        .collect();
    let stores: Vec<ServerStore> =
        handles.into_iter().map(|h| h.join().unwrap().expect("every replica starts")).collect();
    stores[0].upsert(&points(4)).unwrap();
    assert!(stores.iter().all(|s| s.count().unwrap() == 4), "one collection seen by all");
    // The access-group filter is backed by a payload index.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = qdrant_client::Qdrant::from_url(&cfg.url).skip_compatibility_check().build().unwrap();
    let info = rt.block_on(client.collection_info(&cfg.collection)).unwrap().result.unwrap();
    for field in ["groups", "lang", "source"] {
        let kind = info.payload_schema.get(field).map(|p| p.data_type());
        assert_eq!(kind, Some(qdrant_client::qdrant::PayloadSchemaType::Keyword), "{field} index");
    }
}

/// An existing collection made for another embedder is refused with what to do, not searched
/// with vectors of the wrong size.
#[test]
#[ignore = "needs a Qdrant server: scripts/test.sh starts one and sets KOTAE_TEST_QDRANT_URL"]
fn a_collection_of_another_dimension_is_refused_clearly() {
    let cfg = server_config("dim");
    ServerStore::connect(&cfg, DIM, HnswSettings::default()).unwrap();
    let err = ServerStore::connect(&cfg, DIM * 2, HnswSettings::default()).err().expect("refused").to_string();
    assert!(err.contains(&format!("{DIM}-dimensional")) && err.contains("vector_store.collection"), "{err}");
    let mut bad = cfg.clone();
    bad.url = "http://127.0.0.1:9".into();
    let err = ServerStore::connect(&bad, DIM, HnswSettings::default()).err().expect("unreachable").to_string();
    assert!(err.contains("cannot reach the Qdrant server at http://127.0.0.1:9"), "{err}");
}

/// The knowledge base on a Qdrant server keeps the access guarantee of the embedded one: no
/// search mode returns a chunk outside the asker's groups, and a reopened base finds it all.
#[test]
#[ignore = "needs a Qdrant server: scripts/test.sh starts one and sets KOTAE_TEST_QDRANT_URL"]
fn a_knowledge_base_on_the_server_filters_by_group_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = index_config(dir.path(), "test");
    cfg.server = Some(server_config("kb"));
    let mut kb = KnowledgeIndex::open(&cfg).unwrap();
    let hr = vec![chunk("hr.md", 0, "salary band grade five", &["hr"])];
    let public = vec![chunk("pub.md", 0, "salary payment day is the 25th", &["public"])];
    write_source(&mut kb, "hr.md", &hr);
    write_source(&mut kb, "pub.md", &public);
    for mode in [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid] {
        let hits = kb.search(&req("salary band", Some(vec_for(hr[0].id.0)), mode, 5, &[])).unwrap();
        assert!(hits.iter().all(|h| h.source == "pub.md"), "{mode:?} leaked: {hits:?}");
        let hits = kb.search(&req("salary band", Some(vec_for(hr[0].id.0)), mode, 5, &["hr"])).unwrap();
        assert_eq!(hits[0].source, "hr.md", "{mode:?}");
    }
    drop(kb);
    let kb = KnowledgeIndex::open(&cfg).unwrap();
    assert_eq!(kb.vectors().count().unwrap(), 2);
    let hits = kb.search(&req("", Some(vec_for(public[0].id.0)), SearchMode::Dense, 1, &[])).unwrap();
    assert_eq!(hits[0].source, "pub.md");
}

#[test]
#[ignore = "needs a Qdrant server: scripts/test.sh starts one and sets KOTAE_TEST_QDRANT_URL"]
fn a_follower_sees_each_commit_of_the_writer_whole_and_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = index_config(dir.path(), "test");
    assert!(
        KnowledgeIndex::follow(&cfg).err().unwrap().to_string().contains("Qdrant server"),
        "the embedded engine is one process's"
    );
    cfg.server = Some(server_config("follow"));
    assert!(KnowledgeIndex::follow(&cfg).err().unwrap().to_string().contains("no knowledge base"));
    let mut writer = KnowledgeIndex::open(&cfg).unwrap();
    let a = vec![chunk("a.md", 0, "locker keys from general affairs", &["public"])];
    write_source(&mut writer, "a.md", &a);
    // Opened while the writer holds the knowledge base: no lock, the commit it finds.
    let follower = KnowledgeIndex::follow(&cfg).unwrap();
    assert!(follower.is_follower());
    assert_eq!((follower.num_chunks(), follower.manifest().files.len()), (1, 1));
    let e = follower.write().err().unwrap().to_string();
    assert!(e.contains("replica"), "{e}");
    assert_eq!(follower.sweep_orphans().unwrap(), 0);

    // Vectors the writer has put but not committed: the follower does not see them.
    let b = vec![chunk("b.md", 0, "bicycle parking in the basement", &["staff"])];
    let mut w = writer.write().unwrap();
    w.put_vectors(&[VectorPoint {
        id: b[0].id,
        vector: vec_for(b[0].id.0),
        groups: b[0].groups.clone(),
        lang: "en".into(),
        source: "b.md".into(),
    }])
    .unwrap();
    let dense = |kb: &KnowledgeIndex| {
        kb.search(&req("bicycle parking", Some(vec_for(b[0].id.0)), SearchMode::Hybrid, 5, &["staff"]))
            .unwrap()
            .into_iter()
            .map(|h| h.source)
            .collect::<Vec<_>>()
    };
    assert!(!dense(&follower).contains(&"b.md".to_string()), "uncommitted");
    w.replace_source(
        "b.md",
        kotae_index::FileEntry { root: "/r".into(), hash: "h".into(), chunks: 1, ..Default::default() },
        &b,
    )
    .unwrap();
    w.finish().unwrap();
    // Committed: the next read sees the chunk and its manifest entry together.
    assert_eq!(dense(&follower)[0], "b.md");
    assert!(follower.manifest().files.contains_key("b.md"));
    assert_eq!(follower.num_chunks(), 2);
    // A removal, then a second follower opened later agrees with the first.
    let mut w = writer.write().unwrap();
    w.remove_source("a.md").unwrap();
    w.finish().unwrap();
    writer.sweep_orphans().unwrap();
    let hits = follower.search(&req("locker keys", Some(vec_for(a[0].id.0)), SearchMode::Hybrid, 5, &[])).unwrap();
    assert!(hits.iter().all(|h| h.source != "a.md"), "{hits:?}");
    assert!(!follower.manifest().files.contains_key("a.md"));
    let later = KnowledgeIndex::follow(&cfg).unwrap();
    assert_eq!(later.manifest().files.keys().collect::<Vec<_>>(), vec!["b.md"]);
    assert_eq!(later.num_chunks(), follower.num_chunks());
}
