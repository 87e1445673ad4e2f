//! HTTP client of the engines' RPC endpoint, shared by the manager and the Entrance.
//! Every call carries the key of the engine it goes to.

use std::time::Duration;

use hangar_protocol::rpc::{ENGINE_RPC_PATH, EngineReply, EngineRequest, RPC_TOKEN_HEADER};
use hangar_protocol::{ErrorCode, HangarError};

#[derive(Clone)]
pub struct EngineClient {
    http: reqwest::Client,
}

impl EngineClient {
    pub fn new() -> Result<Self, HangarError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| HangarError::internal(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { http })
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Send one request to the engine at `instance` (`host:port`), with that
    /// engine's own key: no other engine accepts it.
    pub async fn call(&self, instance: &str, key: &str, req: &EngineRequest) -> Result<EngineReply, HangarError> {
        self.call_within(instance, key, req, Duration::from_secs(10)).await
    }

    /// As [`EngineClient::call`], giving up after `within` (an engine behind
    /// a cut link must not hold up an ask that can use another).
    pub async fn call_within(
        &self,
        instance: &str,
        key: &str,
        req: &EngineRequest,
        within: Duration,
    ) -> Result<EngineReply, HangarError> {
        let url = format!("http://{instance}{ENGINE_RPC_PATH}");
        let lost =
            |e: String| HangarError::new(ErrorCode::EngineLost, format!("engine {instance} cannot be reached: {e}"));
        let resp = self
            .http
            .post(&url)
            .header(RPC_TOKEN_HEADER, key)
            .json(req)
            .timeout(within)
            .send()
            .await
            .map_err(|e| lost(e.to_string()))?;
        let reply: EngineReply = resp.json().await.map_err(|e| lost(format!("bad reply: {e}")))?;
        match reply {
            EngineReply::Error { code, message } => Err(HangarError::new(code, message)),
            other => Ok(other),
        }
    }
}
