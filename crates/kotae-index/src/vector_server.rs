//! A Qdrant server or cluster as the vector store (`qdrant-client`, gRPC): the same data model
//! and filters as the embedded engine, for companies that outgrow one machine.

use std::collections::HashSet;

use qdrant_client::qdrant::{
    point_id::PointIdOptions, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder,
    NamedVectors, PointId, PointStruct, PointsIdsList, QueryPointsBuilder, ScrollPointsBuilder, SearchParamsBuilder,
    UpsertPointsBuilder, Value, Vector, VectorParamsBuilder, VectorsConfigBuilder,
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
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection", &self.collection)
            .finish()
    }
}

pub struct ServerStore {
    client: Qdrant,
    rt: tokio::runtime::Runtime,
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

impl ServerStore {
    /// Connect and create the collection (cosine, named vector `dense`, keyword indexes on
    /// `groups`, `lang`, `source`) if it does not exist yet.
    pub fn connect(cfg: &ServerConfig, dim: usize, hnsw: HnswSettings) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(serr)?;
        let client = Qdrant::from_url(&cfg.url).api_key(cfg.api_key.clone()).build().map_err(serr)?;
        let store = Self { client, rt, collection: cfg.collection.clone(), dim, hnsw };
        let exists = store.rt.block_on(store.client.collection_exists(&store.collection)).map_err(serr)?;
        if !exists {
            let mut vectors = VectorsConfigBuilder::default();
            vectors.add_named_vector_params(VECTOR_NAME, VectorParamsBuilder::new(dim as u64, Distance::Cosine));
            store
                .rt
                .block_on(
                    store
                        .client
                        .create_collection(CreateCollectionBuilder::new(&store.collection).vectors_config(vectors)),
                )
                .map_err(serr)?;
            for field in ["groups", "lang", "source"] {
                store
                    .rt
                    .block_on(store.client.create_field_index(
                        CreateFieldIndexCollectionBuilder::new(&store.collection, field, FieldType::Keyword).wait(true),
                    ))
                    .map_err(serr)?;
            }
        }
        Ok(store)
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
        let res = self.rt.block_on(self.client.query(q)).map_err(serr)?;
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
        self.rt
            .block_on(self.client.upsert_points(UpsertPointsBuilder::new(&self.collection, list).wait(true)))
            .map_err(serr)?;
        Ok(())
    }
    fn delete(&self, ids: &[ChunkId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = PointsIdsList { ids: ids.iter().map(|i| pid(*i)).collect() };
        self.rt
            .block_on(self.client.delete_points(DeletePointsBuilder::new(&self.collection).points(ids).wait(true)))
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
        let res = self.rt.block_on(self.client.get_points(req)).map_err(serr)?;
        Ok(res.result.into_iter().filter_map(|p| chunk_id(p.id)).collect())
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
            let res = self.rt.block_on(self.client.scroll(req)).map_err(serr)?;
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
    fn optimize(&self) -> Result<()> {
        Ok(()) // the server indexes in the background
    }
    fn count(&self) -> Result<usize> {
        let res =
            self.rt.block_on(self.client.count(CountPointsBuilder::new(&self.collection).exact(true))).map_err(serr)?;
        Ok(res.result.map_or(0, |r| r.count as usize))
    }
}
