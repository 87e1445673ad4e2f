//! The material library's records (Linkis BML): versioned user resources.
//! The bytes live in the control plane's blob directory, named by their
//! SHA-256; a row ties `resourceId` + `version` to a digest and an owner.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError};

/// One version of a resource.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaterialVersion {
    pub resource_id: String,
    pub version: String,
    pub owner: String,
    pub file_name: String,
    pub sha256: String,
    pub size: i64,
    pub created_ms: i64,
}

/// The material library's schema (run inside the store's migration).
pub(crate) const DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS hangar_bml_version (
        resource_id TEXT NOT NULL,
        version TEXT NOT NULL,
        owner TEXT NOT NULL,
        file_name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (resource_id, version)
    )",
    "CREATE INDEX IF NOT EXISTS hangar_bml_owner ON hangar_bml_version(owner)",
];

const COLUMNS: &str = "resource_id, version, owner, file_name, sha256, size, created_ms";

/// `v000001` for 1: Linkis's version format.
pub fn version_name(n: u32) -> String {
    format!("v{n:06}")
}

fn version_number(v: &str) -> Option<u32> {
    v.strip_prefix('v').and_then(|d| d.parse().ok())
}

impl Store {
    /// Add the next version of a resource (the first creates it). Two writers
    /// racing for the same version number: the loser tries the next one.
    pub async fn add_material_version(
        &self,
        resource_id: &str,
        owner: &str,
        file_name: &str,
        sha256: &str,
        size: u64,
        now_ms: i64,
    ) -> Result<MaterialVersion> {
        for _ in 0..5 {
            let latest = self.material_versions(resource_id).await?.last().and_then(|v| version_number(&v.version));
            let version = version_name(latest.unwrap_or(0) + 1);
            let r = sqlx::query(
                "INSERT INTO hangar_bml_version (resource_id, version, owner, file_name, sha256, size, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(resource_id)
            .bind(&version)
            .bind(owner)
            .bind(file_name)
            .bind(sha256)
            .bind(size as i64)
            .bind(now_ms)
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => {
                    return Ok(MaterialVersion {
                        resource_id: resource_id.into(),
                        version,
                        owner: owner.into(),
                        file_name: file_name.into(),
                        sha256: sha256.into(),
                        size: size as i64,
                        created_ms: now_ms,
                    });
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError(format!("resource {resource_id} is being updated by others; try again")))
    }

    /// Every version of a resource, oldest first (empty when unknown).
    pub async fn material_versions(&self, resource_id: &str) -> Result<Vec<MaterialVersion>> {
        let sql = format!("SELECT {COLUMNS} FROM hangar_bml_version WHERE resource_id = $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(resource_id).fetch_all(&self.pool).await?;
        let mut v: Vec<MaterialVersion> = rows.iter().map(version_from_row).collect::<Result<_>>()?;
        v.sort_by_key(|m| version_number(&m.version).unwrap_or(0));
        Ok(v)
    }

    /// The latest version of every resource a user owns.
    pub async fn materials_of(&self, owner: &str) -> Result<Vec<MaterialVersion>> {
        let sql = format!("SELECT {COLUMNS} FROM hangar_bml_version WHERE owner = $1 ORDER BY created_ms");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner).fetch_all(&self.pool).await?;
        let mut latest: std::collections::BTreeMap<String, MaterialVersion> = Default::default();
        for row in &rows {
            let v = version_from_row(row)?;
            let newer =
                latest.get(&v.resource_id).is_none_or(|old| version_number(&old.version) < version_number(&v.version));
            if newer {
                latest.insert(v.resource_id.clone(), v);
            }
        }
        Ok(latest.into_values().collect())
    }

    /// Delete one version (`Some`) or the whole resource; returns rows removed.
    pub async fn delete_material(&self, resource_id: &str, version: Option<&str>) -> Result<u64> {
        let r = match version {
            Some(v) => {
                sqlx::query("DELETE FROM hangar_bml_version WHERE resource_id = $1 AND version = $2")
                    .bind(resource_id)
                    .bind(v)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM hangar_bml_version WHERE resource_id = $1")
                    .bind(resource_id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(r.rows_affected())
    }

    /// Whether any version of any resource still refers to a blob.
    pub async fn blob_in_use(&self, sha256: &str) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM hangar_bml_version WHERE sha256 = $1")
            .bind(sha256)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }
}

fn version_from_row(r: &AnyRow) -> Result<MaterialVersion> {
    Ok(MaterialVersion {
        resource_id: r.try_get("resource_id")?,
        version: r.try_get("version")?,
        owner: r.try_get("owner")?,
        file_name: r.try_get("file_name")?,
        sha256: r.try_get("sha256")?,
        size: r.try_get("size")?,
        created_ms: r.try_get("created_ms")?,
    })
}
