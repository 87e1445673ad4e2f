//! Parameter configuration REST in Linkis's `configuration` namespace
//! (`ConfigurationRestfulApi`): the category tree, a scope's settings with
//! their values and defaults, a save, the engine types. The settings are
//! the catalogue of `crate::settings`; values live in the store
//! (`hangar_config_value`); what a job gets is `crate::param_conf`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use hangar_protocol::{Envelope, ErrorCode, HangarError, now_ms};
use hangar_store::ConfigScope;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Entrance;
use crate::api::reply;
use crate::auth::Caller;
use crate::settings::{self, ALL, RM_INSTANCE};
use crate::wire::configuration::*;

/// The global settings' creator, as the console names it (and older names).
const GLOBAL_NAMES: &[&str] = &["GlobalSettings", "全局设置", "通用设置", ALL];
const GLOBAL: &str = "GlobalSettings";
/// Creators the console lists besides the server's default one (Linkis's default apps).
const CREATORS: &[&str] = &["IDE", "nodeexecution", "Visualis"];

pub(crate) fn routes(r: OpenApiRouter<Arc<Entrance>>) -> OpenApiRouter<Arc<Entrance>> {
    r.routes(routes!(get_category))
        .routes(routes!(full_trees))
        .routes(routes!(save_full_tree))
        .routes(routes!(engine_types))
}

/// Whose values, at which creator and engine type.
struct Scope {
    user: String,
    creator: String,
    /// `spark-3.4.4` or `*`.
    engine_type: String,
}

impl Scope {
    fn store(&self) -> ConfigScope<'_> {
        ConfigScope { user: &self.user, creator: &self.creator, engine_type: &self.engine_type }
    }
    /// The catalogue tree: `*` or the engine's name.
    fn tree(&self) -> &str {
        settings::engine_name(&self.engine_type)
    }
}

fn is_global(creator: &str) -> bool {
    GLOBAL_NAMES.contains(&creator)
}

/// The user a call reads or writes: the caller's own, or (admins) anyone's or `*`.
fn whose(caller: &Caller, user: Option<String>) -> Result<String, HangarError> {
    match user.filter(|u| !u.is_empty()) {
        None => Ok(caller.user.clone()),
        Some(u) if u == caller.user => Ok(u),
        Some(u) if !caller.admin => Err(HangarError::new(
            ErrorCode::PermissionDenied,
            format!(
                "user '{}' may only read and save their own settings; '{u}' needs an admin (auth.admins)",
                caller.user
            ),
        )),
        Some(u) if u == ALL || crate::auth::valid_user_name(&u) => Ok(u),
        Some(u) => Err(HangarError::invalid(format!("user '{u}' is not a valid user name (or * for the defaults)"))),
    }
}

impl Entrance {
    /// `spark` + version (or `spark-3.4.4`) as the configuration keys it.
    fn config_engine_type(&self, engine_type: &str, version: Option<&str>) -> Result<String, HangarError> {
        let (engine, v) = match engine_type.split_once('-') {
            Some((e, v)) => (e, Some(v)),
            None => (engine_type, version.filter(|v| !v.is_empty())),
        };
        let plugin = self.plugins.iter().find(|p| p.engine_type() == engine).ok_or_else(|| {
            let known: Vec<&str> = self.plugins.iter().map(|p| p.engine_type()).collect();
            HangarError::new(
                ErrorCode::UnknownEngineType,
                format!("unknown engine type '{engine}'; this server has {}", known.join(", ")),
            )
        })?;
        let version = match v {
            Some(v) => v.to_string(),
            None => plugin.default_version(),
        };
        Ok(self.canonical_engine_type(engine, &version))
    }

    fn scope(
        &self,
        caller: &Caller,
        user: Option<String>,
        creator: Option<String>,
        engine_type: Option<String>,
        version: Option<&str>,
    ) -> Result<Scope, HangarError> {
        let user = whose(caller, user)?;
        let creator = creator.filter(|c| !c.is_empty()).unwrap_or_else(|| GLOBAL.to_string());
        if is_global(&creator) {
            return Ok(Scope { user, creator: ALL.into(), engine_type: ALL.into() });
        }
        if !crate::auth::valid_user_name(&creator) {
            return Err(HangarError::invalid(format!("creator '{creator}' is not a valid creator name")));
        }
        let engine_type = match engine_type.filter(|e| !e.is_empty() && e != ALL) {
            Some(e) => self.config_engine_type(&e, version)?,
            None => ALL.into(),
        };
        Ok(Scope { user, creator, engine_type })
    }

    async fn trees(&self, scope: &Scope) -> Result<FullTreesData, HangarError> {
        let values = self.store.config_values_for(scope.store()).await?;
        let own = (scope.user.as_str(), scope.creator.as_str(), scope.engine_type.as_str());
        let defaults = crate::param_conf::resolve(&values, scope.store(), Some(own));
        let mut trees: Vec<TreeVo> = Vec::new();
        for (i, st) in settings::CATALOGUE.iter().enumerate().filter(|(_, s)| s.engine == scope.tree()) {
            let stored = values
                .iter()
                .find(|v| (v.user.as_str(), v.creator.as_str(), v.engine_type.as_str()) == own && v.key == st.key);
            let default_value = match defaults.get(st.key) {
                Some(v) => v.clone(),
                None if st.key == RM_INSTANCE => self.cfg.max_running_per_group.to_string(),
                None => st.default.to_string(),
            };
            let vo = SettingVo {
                id: i64::try_from(i + 1).unwrap_or(0),
                key: st.key.into(),
                name: st.name.into(),
                description: st.description.into(),
                default_value,
                validate_type: st.validate_type().into(),
                validate_range: st.validate_range(),
                is_advanced: st.advanced,
                is_hidden: false,
                level: st.level,
                engine_type: if st.engine == ALL { String::new() } else { st.engine.into() },
                tree_name: st.tree.into(),
                value_id: None,
                config_value: stored.map(|v| v.value.clone()).unwrap_or_default(),
                config_label_id: None,
                unit: st.unit.into(),
                is_user_defined: false,
                special_limit: st.allowed(),
            };
            match trees.iter_mut().find(|t| t.name == st.tree) {
                Some(t) => t.settings.push(vo),
                None => trees.push(TreeVo { name: st.tree.into(), description: st.tree.into(), settings: vec![vo] }),
            }
        }
        Ok(FullTreesData { full_tree: trees })
    }

    async fn save(&self, caller: &Caller, req: SaveFullTreeRequest) -> Result<SaveFullTreeData, HangarError> {
        if let Some(et) = req.engine_type.as_deref().filter(|e| !e.is_empty())
            && et.split('-').filter(|p| !p.is_empty()).count() != 2
        {
            return Err(HangarError::invalid(format!(
                "engineType '{et}' must be an engine type and its version, e.g. spark-3.4.4"
            )));
        }
        let creator = req
            .creator
            .filter(|c| !c.is_empty())
            .ok_or_else(|| HangarError::invalid(format!("creator is required: IDE, nodeexecution, ... or {GLOBAL}")))?;
        let scope = self.scope(caller, req.user, Some(creator), req.engine_type, None)?;
        let mut changes: Vec<(String, Option<String>)> = Vec::new();
        for s in req.full_tree.iter().flat_map(|t| &t.settings) {
            let Some(st) = settings::find(scope.tree(), &s.key) else {
                let known: Vec<&str> = settings::settings_of(scope.tree()).map(|s| s.key).collect();
                let of =
                    if scope.tree() == ALL { "the global settings".to_string() } else { scope.engine_type.clone() };
                return Err(HangarError::invalid(format!(
                    "{} is not a setting of {of}; its settings are {}",
                    s.key,
                    known.join(", ")
                )));
            };
            if changes.iter().any(|(k, _)| k == &s.key) {
                return Err(HangarError::invalid(format!("{} is given twice", s.key)));
            }
            let value = s.config_value.clone().map(crate::wire::Scalar::into_text).unwrap_or_default();
            let value = value.trim();
            if value.is_empty() {
                changes.push((s.key.clone(), None));
                continue;
            }
            st.validate(value)?;
            if st.key == "spark.conf"
                && let Some(dup) =
                    settings::pair_keys(value).into_iter().find(|k| settings::find(scope.tree(), k).is_some())
            {
                return Err(HangarError::invalid(format!(
                    "spark.conf sets {dup}, which is a setting of its own: set it there instead"
                )));
            }
            changes.push((s.key.clone(), Some(value.to_string())));
        }
        self.store.save_config(scope.store(), &changes, &caller.user, now_ms()).await?;
        tracing::info!(by = %caller.user, user = %scope.user, creator = %scope.creator, engine_type = %scope.engine_type, keys = changes.len(), "parameter configuration saved");
        let (saved, cleared): (Vec<_>, Vec<_>) = changes.into_iter().partition(|(_, v)| v.is_some());
        Ok(SaveFullTreeData {
            saved: saved.into_iter().map(|(k, _)| k).collect(),
            cleared: cleared.into_iter().map(|(k, _)| k).collect(),
        })
    }

    fn categories(&self) -> CategoryData {
        let mut creators: Vec<String> = vec![self.cfg.default_creator.clone()];
        creators.extend(CREATORS.iter().map(|c| c.to_string()).filter(|c| *c != self.cfg.default_creator));
        let mut id = 0;
        let mut next = || {
            id += 1;
            id
        };
        let mut out = vec![CategoryVo {
            category_id: next(),
            label_id: 0,
            category_name: GLOBAL.into(),
            child_category: Vec::new(),
            description: "Settings of every creator and engine".into(),
            tag: None,
            level: 1,
            father_category_name: None,
        }];
        for c in creators {
            let children = self
                .plugins
                .iter()
                .map(|p| CategoryVo {
                    category_id: next(),
                    label_id: 0,
                    category_name: format!("{}-{}", p.engine_type(), p.default_version()),
                    child_category: Vec::new(),
                    description: String::new(),
                    tag: None,
                    level: 2,
                    father_category_name: Some(c.clone()),
                })
                .collect();
            out.push(CategoryVo {
                category_id: next(),
                label_id: 0,
                category_name: c,
                child_category: children,
                description: String::new(),
                tag: None,
                level: 1,
                father_category_name: None,
            });
        }
        CategoryData { category: out }
    }
}

/// The creators and, under each, the engine types whose settings may be set.
#[utoipa::path(get, path = "/api/rest_j/v1/configuration/getCategory", tag = "configuration",
    responses((status = 200, description = "The category tree", body = Envelope<CategoryData>)))]
async fn get_category(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e.caller(&headers).await.map(|_| e.categories());
    reply(&uri, r)
}

/// The settings of a creator and engine type (or the global settings) with
/// the caller's values (admins: `user`'s, or `*` for the defaults).
#[utoipa::path(get, path = "/api/rest_j/v1/configuration/getFullTreesByAppName", tag = "configuration",
    params(FullTreesQuery),
    responses((status = 200, description = "The settings and their values", body = Envelope<FullTreesData>)))]
async fn full_trees(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let q: FullTreesQuery = crate::wire::query(&uri)?;
        let scope = e.scope(&c, q.user, q.creator, q.engine_type, q.version.as_deref())?;
        e.trees(&scope).await
    }
    .await;
    reply(&uri, r)
}

/// Save values: the caller's own, or (admins) a user's or a default (`user: "*"`).
/// Every value is checked first; one out of range refuses the whole save, naming the key.
#[utoipa::path(post, path = "/api/rest_j/v1/configuration/saveFullTree", tag = "configuration",
    request_body = SaveFullTreeRequest,
    responses((status = 200, description = "The keys saved and cleared", body = Envelope<SaveFullTreeData>)))]
async fn save_full_tree(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let c = e.caller(&headers).await?;
        let req: SaveFullTreeRequest = crate::wire::body(&body)?;
        e.save(&c, req).await
    }
    .await;
    reply(&uri, r)
}

/// The engine types settings may be set for.
#[utoipa::path(get, path = "/api/rest_j/v1/configuration/engineType", tag = "configuration",
    responses((status = 200, description = "The engine types", body = Envelope<EngineTypesData>)))]
async fn engine_types(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    let r = e
        .caller(&headers)
        .await
        .map(|_| EngineTypesData { engine_type: e.plugins.iter().map(|p| p.engine_type().to_string()).collect() });
    reply(&uri, r)
}
