//! An EngineConnManager in another process, driven over HTTP.

use std::time::Duration;

use async_trait::async_trait;
use hangar_protocol::rpc::{ECM_RPC_PATH, EcmReply, EcmRequest, EngineConnBuildRequest, RPC_TOKEN_HEADER};
use hangar_protocol::{ErrorCode, HangarError};

use crate::{EcmClient, EngineLog, LaunchedEngine};

pub(crate) struct RemoteEcm {
    pub instance: String,
    pub http: reqwest::Client,
    pub token: String,
}

impl RemoteEcm {
    async fn call(&self, req: &EcmRequest, timeout: Duration) -> Result<EcmReply, HangarError> {
        let url = format!("http://{}{ECM_RPC_PATH}", self.instance);
        let lost =
            |e: String| HangarError::new(ErrorCode::NoEcm, format!("ECM {} cannot be reached: {e}", self.instance));
        let resp = self
            .http
            .post(&url)
            .header(RPC_TOKEN_HEADER, &self.token)
            .timeout(timeout)
            .json(req)
            .send()
            .await
            .map_err(|e| lost(e.to_string()))?;
        match resp.json::<EcmReply>().await.map_err(|e| lost(format!("bad reply: {e}")))? {
            EcmReply::Error { code, message } => Err(HangarError::new(code, message)),
            other => Ok(other),
        }
    }
}

fn unexpected(r: EcmReply) -> HangarError {
    HangarError::internal(format!("unexpected ECM reply {r:?}"))
}

#[async_trait]
impl EcmClient for RemoteEcm {
    async fn launch(
        &self,
        build: EngineConnBuildRequest,
        manager_url: &str,
        engine_conf: &[(String, String)],
    ) -> Result<LaunchedEngine, HangarError> {
        let req = EcmRequest::Launch { build, manager_url: manager_url.to_string(), engine_conf: engine_conf.to_vec() };
        match self.call(&req, Duration::from_secs(60)).await? {
            EcmReply::Launched { pid, log_dir } => Ok(LaunchedEngine { pid, log_dir }),
            other => Err(unexpected(other)),
        }
    }

    async fn kill(&self, ticket_id: &str) -> Result<(), HangarError> {
        match self.call(&EcmRequest::Kill { ticket_id: ticket_id.to_string() }, Duration::from_secs(60)).await? {
            EcmReply::Killed => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn engine_log(
        &self,
        ticket_id: &str,
        log_type: &str,
        from_line: usize,
        page_size: usize,
    ) -> Result<EngineLog, HangarError> {
        let req =
            EcmRequest::EngineLog { ticket_id: ticket_id.into(), log_type: log_type.into(), from_line, page_size };
        match self.call(&req, Duration::from_secs(20)).await? {
            EcmReply::Log { log_path, logs, end_line, .. } => Ok(EngineLog { log_path, logs, end_line }),
            other => Err(unexpected(other)),
        }
    }
}
