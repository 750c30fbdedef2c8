//! The same vector-store behaviour against a Qdrant server, when one is configured with
//! `QDRANT_URL` (none can be installed on the development machines; CI runs it where one is).

use kotae_index::vector::HnswSettings;
use kotae_index::vector_server::{ServerConfig, ServerStore};
use kotae_index::{ChunkId, VectorFilter, VectorPoint, VectorStore};

use super::{vec_for, DIM};

#[test]
fn server_store_matches_the_embedded_contract() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("QDRANT_URL not set: the Qdrant server backend was not exercised");
        return;
    };
    let cfg = ServerConfig {
        url,
        api_key: std::env::var("QDRANT_API_KEY").ok(),
        collection: format!("kotae_test_{}", std::process::id()),
    };
    let store = ServerStore::connect(&cfg, DIM, HnswSettings::default()).unwrap();
    let points: Vec<VectorPoint> = (0..20u64)
        .map(|i| VectorPoint {
            id: ChunkId(i + 1),
            vector: vec_for(i),
            groups: vec![if i % 2 == 0 { "public" } else { "hr" }.into()],
            lang: "en".into(),
            source: format!("s{i}"),
        })
        .collect();
    store.upsert(&points).unwrap();
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
    assert_eq!(store.all_ids().unwrap().len(), 18);
}
