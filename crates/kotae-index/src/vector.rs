//! Dense vectors: the [`VectorStore`] trait and its embedded default, the in-process Qdrant
//! engine (`qdrant-edge`), persisted in the data directory.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use qdrant_edge::{
    Condition, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder, FieldCondition,
    FieldIndexOperations, Filter, HnswIndexConfig, JsonPath, Match, NamedQuery, PayloadFieldSchema, PayloadSchemaType,
    PointId, PointInsertOperations, PointOperations, PointStruct, PointStructPersisted, QueryEnum, QueryRequest,
    ScoringQuery, ScrollRequest, SearchParams, UpdateOperation, VectorInternal, Vectors, WithPayloadInterface,
    WithVector,
};

use crate::{ChunkId, Error, Result};

/// Name of the dense vector in both Qdrant backends.
pub(crate) const VECTOR_NAME: &str = "dense";

/// A query vector must have the store's dimension.
pub(crate) fn check_dim(vector: &[f32], dim: usize) -> Result<()> {
    if vector.len() != dim {
        return Err(Error::Query(format!("query vector has {} dimensions, expected {dim}", vector.len())));
    }
    Ok(())
}

/// A vector with the payload needed to filter inside the engine.
#[derive(Debug, Clone)]
pub struct VectorPoint {
    pub id: ChunkId,
    pub vector: Vec<f32>,
    pub groups: Vec<String>,
    pub lang: String,
    pub source: String,
}

impl VectorPoint {
    /// A chunk's vector with the chunk's filter payload.
    pub fn of(chunk: &crate::IndexedChunk, vector: Vec<f32>) -> Self {
        Self {
            id: chunk.id,
            vector,
            groups: chunk.groups.clone(),
            lang: chunk.lang.clone(),
            source: chunk.source.clone(),
        }
    }
}

/// Filter applied inside the vector engine, before the top-k is cut.
#[derive(Debug, Clone, Default)]
pub struct VectorFilter {
    /// Points visible to any of these groups.
    pub groups: Vec<String>,
    pub lang: Option<String>,
}

/// Nearest-neighbour search over chunk vectors.
pub trait VectorStore: Send + Sync {
    fn name(&self) -> &str;
    fn dim(&self) -> usize;
    fn upsert(&self, points: &[VectorPoint]) -> Result<()>;
    fn delete(&self, ids: &[ChunkId]) -> Result<()>;
    /// Which of `ids` are stored.
    fn existing(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>>;
    /// The stored vectors of those of `ids` that are stored (to move a vector to a new id
    /// without embedding its text again).
    fn vectors(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<f32>>>;
    /// All stored ids.
    fn all_ids(&self) -> Result<Vec<ChunkId>>;
    /// Top `k` by cosine similarity among points passing `filter`, best first.
    fn search(&self, vector: &[f32], k: usize, filter: &VectorFilter) -> Result<Vec<(ChunkId, f32)>>;
    /// `search` without the approximate index: the ground truth for recall measurements.
    fn search_exact(&self, vector: &[f32], k: usize, filter: &VectorFilter) -> Result<Vec<(ChunkId, f32)>>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<()>;
    /// Build or refresh the approximate index after bulk writes.
    fn optimize(&self) -> Result<()>;
    fn count(&self) -> Result<usize>;
}

/// HNSW parameters of the embedded engine.
#[derive(Debug, Clone, Copy)]
pub struct HnswSettings {
    pub m: usize,
    pub ef_construct: usize,
    /// Candidates explored per query; higher is slower and closer to exact.
    pub ef_search: usize,
}

impl Default for HnswSettings {
    fn default() -> Self {
        Self { m: 16, ef_construct: 200, ef_search: 512 }
    }
}

/// The embedded Qdrant engine: one shard in one directory.
pub struct EdgeStore {
    shard: EdgeShard,
    dim: usize,
    hnsw: HnswSettings,
}

/// A payload key; the names used here are plain identifiers, always valid paths.
fn key(name: &str) -> JsonPath {
    JsonPath::try_from(name).expect("payload key is a valid JSON path")
}

fn verr(e: impl std::fmt::Display) -> Error {
    Error::Vector(e.to_string())
}

impl EdgeStore {
    pub fn open(dir: &Path, dim: usize, hnsw: HnswSettings) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let hnsw_cfg = HnswIndexConfig { m: hnsw.m, ef_construct: hnsw.ef_construct, ..Default::default() };
        let config = EdgeConfigBuilder::new()
            .vector(VECTOR_NAME, EdgeVectorParamsBuilder::new(dim, Distance::Cosine).hnsw_config(hnsw_cfg).build())
            .hnsw_config(hnsw_cfg)
            .build();
        let fresh = !dir.join("edge_config.json").exists();
        let shard = if fresh { EdgeShard::new(dir, config) } else { EdgeShard::load(dir, None) }.map_err(verr)?;
        let stored_dim = shard.config().vectors.get(VECTOR_NAME).map(|v| v.size);
        if stored_dim != Some(dim) {
            return Err(Error::Incompatible(format!(
                "the vector store in {} holds {stored_dim:?}-dimensional vectors but the embedder makes {dim}; \
                 ingest into a new --data-dir or delete the knowledge base",
                dir.display()
            )));
        }
        let store = Self { shard, dim, hnsw };
        if fresh {
            for field in ["groups", "lang", "source"] {
                store.update(UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name: key(field),
                    field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
                })))?;
            }
        }
        Ok(store)
    }

    fn update(&self, op: UpdateOperation) -> Result<()> {
        self.shard.update(op).map_err(verr)
    }

    fn filter(f: &VectorFilter) -> Option<Filter> {
        let mut must = Vec::new();
        if !f.groups.is_empty() {
            must.push(Condition::Field(FieldCondition::new_match(key("groups"), Match::from(f.groups.clone()))));
        }
        if let Some(l) = &f.lang {
            must.push(Condition::Field(FieldCondition::new_match(key("lang"), Match::from(l.clone()))));
        }
        (!must.is_empty()).then(|| Filter { must: Some(must), ..Default::default() })
    }

    fn query(&self, vector: &[f32], k: usize, filter: &VectorFilter, exact: bool) -> Result<Vec<(ChunkId, f32)>> {
        check_dim(vector, self.dim)?;
        let req = QueryRequest {
            prefetches: vec![],
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(
                VectorInternal::Dense(vector.to_vec()),
                VECTOR_NAME,
            )))),
            filter: Self::filter(filter),
            score_threshold: None,
            limit: k,
            offset: 0,
            params: Some(SearchParams { hnsw_ef: Some(self.hnsw.ef_search.max(k)), exact, ..Default::default() }),
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(false),
        };
        let points = self.shard.query(req).map_err(verr)?;
        Ok(points
            .into_iter()
            .filter_map(|p| match p.id {
                PointId::NumId(n) => Some((ChunkId(n), p.score)),
                _ => None,
            })
            .collect())
    }
}

impl VectorStore for EdgeStore {
    fn name(&self) -> &str {
        "qdrant-edge"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn upsert(&self, points: &[VectorPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let list: Vec<PointStructPersisted> = points
            .iter()
            .map(|p| {
                let payload = serde_json::json!({ "groups": p.groups, "lang": p.lang, "source": p.source });
                PointStruct::new(PointId::NumId(p.id.0), Vectors::new_named([(VECTOR_NAME, p.vector.clone())]), payload)
                    .into()
            })
            .collect();
        self.update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(PointInsertOperations::PointsList(
            list,
        ))))
    }
    fn delete(&self, ids: &[ChunkId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.iter().map(|i| PointId::NumId(i.0)).collect();
        self.update(UpdateOperation::PointOperation(PointOperations::DeletePoints { ids }))
    }
    fn existing(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        let pids: Vec<PointId> = ids.iter().map(|i| PointId::NumId(i.0)).collect();
        let recs = self.shard.retrieve(&pids, Some(WithPayloadInterface::Bool(false)), None).map_err(verr)?;
        Ok(recs
            .into_iter()
            .filter_map(|r| match r.id {
                PointId::NumId(n) => Some(ChunkId(n)),
                _ => None,
            })
            .collect())
    }
    fn vectors(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<f32>>> {
        use qdrant_edge::VectorStructInternal;
        let pids: Vec<PointId> = ids.iter().map(|i| PointId::NumId(i.0)).collect();
        let recs = self
            .shard
            .retrieve(&pids, Some(WithPayloadInterface::Bool(false)), Some(WithVector::Bool(true)))
            .map_err(verr)?;
        Ok(recs
            .into_iter()
            .filter_map(|r| {
                let id = match r.id {
                    PointId::NumId(n) => ChunkId(n),
                    _ => return None,
                };
                let v = match r.vector? {
                    VectorStructInternal::Single(v) => v,
                    VectorStructInternal::Named(mut m) => match m.remove(VECTOR_NAME)? {
                        VectorInternal::Dense(v) => v,
                        _ => return None,
                    },
                    VectorStructInternal::MultiDense(_) => return None,
                };
                Some((id, v))
            })
            .collect())
    }
    fn all_ids(&self) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let req = ScrollRequest {
                offset,
                limit: Some(10_000),
                filter: None,
                with_payload: Some(WithPayloadInterface::Bool(false)),
                with_vector: WithVector::Bool(false),
                order_by: None,
            };
            let (points, next) = self.shard.scroll(req).map_err(verr)?;
            out.extend(points.into_iter().filter_map(|r| match r.id {
                PointId::NumId(n) => Some(ChunkId(n)),
                _ => None,
            }));
            match next {
                Some(n) => offset = Some(n),
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
        self.shard.flush();
        Ok(())
    }
    fn optimize(&self) -> Result<()> {
        self.shard.optimize().map_err(verr)?;
        Ok(())
    }
    fn count(&self) -> Result<usize> {
        Ok(self.shard.info().points_count)
    }
}
