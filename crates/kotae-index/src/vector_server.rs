//! A Qdrant server or cluster as the vector store (`qdrant-client`, gRPC): the same data model
//! and filters as the embedded engine, for companies that outgrow one machine.

use std::collections::{HashMap, HashSet};

use qdrant_client::qdrant::{
    point_id::PointIdOptions, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder,
    HnswConfigDiffBuilder, NamedVectors, PointId, PointStruct, PointsIdsList, QueryPointsBuilder, ScrollPointsBuilder,
    SearchParamsBuilder, UpsertPointsBuilder, Value, Vector, VectorParamsBuilder, VectorsConfigBuilder,
};
use qdrant_client::{Payload, Qdrant};

use crate::vector::{check_dim, HnswSettings, VectorFilter, VectorPoint, VectorStore, VECTOR_NAME};
use crate::{ChunkId, Error, Result};

/// Where the server is and which collection holds this knowledge base.
#[derive(Clone)]
pub struct ServerConfig {
    pub url: String,
    pub api_key: Option<String>,
    pub collection: String,
    /// Shards and copies of each shard, for a new collection on a cluster (`None`: the
    /// server's defaults, one shard and one copy on a single node).
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection", &self.collection)
            .field("shards", &self.shards)
            .field("replicas", &self.replicas)
            .finish()
    }
}

pub struct ServerStore {
    client: Qdrant,
    collection: String,
    dim: usize,
    hnsw: HnswSettings,
}

fn serr(e: impl std::fmt::Display) -> Error {
    Error::Vector(format!("Qdrant server: {e}"))
}

fn pid(id: ChunkId) -> PointId {
    id.0.into()
}

fn chunk_id(p: Option<PointId>) -> Option<ChunkId> {
    match p?.point_id_options? {
        PointIdOptions::Num(n) => Some(ChunkId(n)),
        PointIdOptions::Uuid(_) => None,
    }
}

/// The size of the dense vector named `name` in a collection's configuration.
fn vector_size(info: &qdrant_client::qdrant::CollectionInfo, name: &str) -> Option<u64> {
    use qdrant_client::qdrant::vectors_config::Config;
    match info.config.as_ref()?.params.as_ref()?.vectors_config.as_ref()?.config.as_ref()? {
        Config::Params(p) => Some(p.size),
        Config::ParamsMap(m) => m.map.get(name).map(|p| p.size),
    }
}

/// Drives every client's connections: one worker thread does the I/O while callers block on
/// their own request (see `ServerStore::run`). Process-wide and never dropped, because dropping
/// a runtime from async code panics, and a store may well be dropped there.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("qdrant-client")
            .enable_all()
            .build()
            .expect("cannot start the Qdrant client's I/O thread")
    })
}

impl ServerStore {
    /// Connect and create the collection (cosine, named vector `dense`, keyword indexes on
    /// `groups`, `lang`, `source`) if it does not exist yet. Replicas that start together may
    /// all try to create it: whichever loses the race uses the one that won. An existing
    /// collection built for another embedder (another dimension) is refused with what to do.
    pub fn connect(cfg: &ServerConfig, dim: usize, hnsw: HnswSettings) -> Result<Self> {
        // The client's own compatibility check prints to standard output (which `kotae search
        // --json` owns) and cannot say more than "maybe": ours logs the versions instead.
        let client =
            Qdrant::from_url(&cfg.url).api_key(cfg.api_key.clone()).skip_compatibility_check().build().map_err(serr)?;
        let store = Self { client, collection: cfg.collection.clone(), dim, hnsw };
        let health = store.run(store.client.health_check()).map_err(|e| {
            Error::Vector(format!(
                "cannot reach the Qdrant server at {} ({e}): start it, or check `vector_store.url` \
                 (the gRPC port, 6334 by default) and `vector_store.api_key`",
                cfg.url
            ))
        })?;
        tracing::info!(server = %health.version, collection = %store.collection, "Qdrant server");
        if !store.run(store.client.collection_exists(&store.collection)).map_err(serr)? {
            let mut vectors = VectorsConfigBuilder::default();
            vectors.add_named_vector_params(VECTOR_NAME, VectorParamsBuilder::new(dim as u64, Distance::Cosine));
            let mut create = CreateCollectionBuilder::new(&store.collection)
                .vectors_config(vectors)
                .hnsw_config(HnswConfigDiffBuilder::default().m(hnsw.m as u64).ef_construct(hnsw.ef_construct as u64));
            if let Some(n) = cfg.shards {
                create = create.shard_number(n);
            }
            if let Some(n) = cfg.replicas {
                create = create.replication_factor(n);
            }
            if let Err(e) = store.run(store.client.create_collection(create)) {
                // Another replica created it between our check and our request.
                if !store.run(store.client.collection_exists(&store.collection)).map_err(serr)? {
                    return Err(serr(e));
                }
            }
        }
        let info = store.run(store.client.collection_info(&store.collection)).map_err(serr)?;
        let info = info.result.ok_or_else(|| serr("no collection info"))?;
        match vector_size(&info, VECTOR_NAME) {
            Some(n) if n as usize == dim => {}
            other => {
                return Err(Error::Incompatible(format!(
                    "the Qdrant collection `{}` holds {} vectors, but the embedder makes {dim}-dimensional ones: \
                     use another collection (`vector_store.collection`) or re-ingest into a new one",
                    store.collection,
                    other.map_or_else(|| format!("no `{VECTOR_NAME}`"), |n| format!("{n}-dimensional"))
                )))
            }
        }
        // Creating an index that exists is a no-op, so a replica that died half-way through
        // creating the collection leaves nothing to repair by hand.
        for field in ["groups", "lang", "source"] {
            if !info.payload_schema.contains_key(field) {
                store
                    .run(store.client.create_field_index(
                        CreateFieldIndexCollectionBuilder::new(&store.collection, field, FieldType::Keyword).wait(true),
                    ))
                    .map_err(serr)?;
            }
        }
        Ok(store)
    }

    /// Run one request to completion. Blocking a thread that drives a tokio runtime (an async
    /// handler, `#[tokio::main]`) with `block_on` panics, so from there the request is driven
    /// on a scoped helper thread; anywhere else (a blocking task, a CLI thread) directly.
    fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        let rt = runtime();
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join().expect("a Qdrant request panicked"))
        } else {
            rt.block_on(f)
        }
    }

    fn filter(f: &VectorFilter) -> Option<Filter> {
        let mut must = Vec::new();
        if !f.groups.is_empty() {
            must.push(Condition::matches("groups", f.groups.clone()));
        }
        if let Some(l) = &f.lang {
            must.push(Condition::matches("lang", l.clone()));
        }
        (!must.is_empty()).then(|| Filter::must(must))
    }

    fn query(&self, vector: &[f32], k: usize, filter: &VectorFilter, exact: bool) -> Result<Vec<(ChunkId, f32)>> {
        check_dim(vector, self.dim)?;
        let mut q = QueryPointsBuilder::new(&self.collection)
            .query(vector.to_vec())
            .using(VECTOR_NAME)
            .limit(k as u64)
            .params(SearchParamsBuilder::default().hnsw_ef(self.hnsw.ef_search.max(k) as u64).exact(exact));
        if let Some(f) = Self::filter(filter) {
            q = q.filter(f);
        }
        let res = self.run(self.client.query(q)).map_err(serr)?;
        Ok(res.result.into_iter().filter_map(|p| chunk_id(p.id).map(|id| (id, p.score))).collect())
    }
}

impl VectorStore for ServerStore {
    fn name(&self) -> &str {
        "qdrant-server"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn upsert(&self, points: &[VectorPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let list: Vec<PointStruct> = points
            .iter()
            .map(|p| {
                let payload = Payload::from([
                    ("groups", Value::from(p.groups.clone())),
                    ("lang", Value::from(p.lang.clone())),
                    ("source", Value::from(p.source.clone())),
                ]);
                let vectors = NamedVectors::default().add_vector(VECTOR_NAME, Vector::new_dense(p.vector.clone()));
                PointStruct::new(pid(p.id), vectors, payload)
            })
            .collect();
        self.run(self.client.upsert_points(UpsertPointsBuilder::new(&self.collection, list).wait(true)))
            .map_err(serr)?;
        Ok(())
    }
    fn delete(&self, ids: &[ChunkId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = PointsIdsList { ids: ids.iter().map(|i| pid(*i)).collect() };
        self.run(self.client.delete_points(DeletePointsBuilder::new(&self.collection).points(ids).wait(true)))
            .map_err(serr)?;
        Ok(())
    }
    fn existing(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let req = GetPointsBuilder::new(&self.collection, ids.iter().map(|i| pid(*i)).collect::<Vec<_>>())
            .with_payload(false)
            .with_vectors(false);
        let res = self.run(self.client.get_points(req)).map_err(serr)?;
        Ok(res.result.into_iter().filter_map(|p| chunk_id(p.id)).collect())
    }
    fn vectors(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<f32>>> {
        use qdrant_client::qdrant::vector_output::Vector as Out;
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let req = GetPointsBuilder::new(&self.collection, ids.iter().map(|i| pid(*i)).collect::<Vec<_>>())
            .with_payload(false)
            .with_vectors(true);
        let res = self.run(self.client.get_points(req)).map_err(serr)?;
        Ok(res
            .result
            .into_iter()
            .filter_map(|p| match p.vectors?.get_vector_by_name(VECTOR_NAME)? {
                Out::Dense(d) => Some((chunk_id(p.id)?, d.data)),
                _ => None,
            })
            .collect())
    }
    fn all_ids(&self) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut req =
                ScrollPointsBuilder::new(&self.collection).limit(10_000).with_payload(false).with_vectors(false);
            if let Some(o) = offset.take() {
                req = req.offset(o);
            }
            let res = self.run(self.client.scroll(req)).map_err(serr)?;
            out.extend(res.result.into_iter().filter_map(|p| chunk_id(p.id)));
            match res.next_page_offset {
                Some(o) => offset = Some(o),
                None => break,
            }
        }
        Ok(out)
    }
    fn search(&self, vector: &[f32], k: usize, filter: &VectorFilter) -> Result<Vec<(ChunkId, f32)>> {
        self.query(vector, k, filter, false)
    }
    fn search_exact(&self, vector: &[f32], k: usize, filter: &VectorFilter) -> Result<Vec<(ChunkId, f32)>> {
        self.query(vector, k, filter, true)
    }
    fn flush(&self) -> Result<()> {
        Ok(()) // every write waits for the server's acknowledgement (`wait=true`)
    }
    /// The server indexes in the background; like the embedded engine's HNSW build, this
    /// returns when it has done so (the collection is green again), so that what follows an
    /// ingest searches the index rather than a full scan. Ten minutes at most: a server busy
    /// for longer still answers, only slower.
    fn optimize(&self) -> Result<()> {
        use qdrant_client::qdrant::CollectionStatus;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let info = self.run(self.client.collection_info(&self.collection)).map_err(serr)?;
            match info.result.map(|r| r.status()) {
                Some(CollectionStatus::Yellow) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Some(CollectionStatus::Red) => {
                    return Err(serr(format!("collection `{}` is red (see the server's log)", self.collection)))
                }
                _ => return Ok(()),
            }
        }
    }
    fn count(&self) -> Result<usize> {
        let res = self.run(self.client.count(CountPointsBuilder::new(&self.collection).exact(true))).map_err(serr)?;
        Ok(res.result.map_or(0, |r| r.count as usize))
    }
}
