//! `AuthService`: tokens, join tokens, eviction and key rotation. Every call but RefreshToken
//! and GetVerificationKeys needs the admin capability; the stores are blocking, so calls run on
//! the blocking pool.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ragmesh_auth::{Capability, unix_now};
use ragmesh_proto::v1::{self, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

use crate::access::AccessControl;
use crate::api::Context;
use crate::error::MasterError;

/// The `AuthService` implementation.
#[derive(Debug, Clone)]
pub(crate) struct AuthApi(pub(crate) Context);

/// Default lifetime of a join token.
const JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);

fn timestamp(unix_seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_secs(unix_seconds))
}

/// Runs blocking credential-store work off the async threads.
async fn blocking<T: Send + 'static>(
    access: &Arc<AccessControl>,
    work: impl FnOnce(&AccessControl) -> Result<T, MasterError> + Send + 'static,
) -> Result<T, Status> {
    let access = access.clone();
    tokio::task::spawn_blocking(move || work(&access))
        .await
        .map_err(|e| Status::internal(format!("credential task failed: {e}")))?
        .map_err(Status::from)
}

fn parse_capabilities(names: &[String]) -> Result<Vec<Capability>, MasterError> {
    let mut caps = Vec::with_capacity(names.len());
    for name in names {
        caps.push(name.parse::<Capability>().map_err(MasterError::Auth)?);
    }
    if caps.is_empty() {
        return Err(MasterError::InvalidArgument(
            "no capabilities: name at least one of search, ingest, actions, admin".into(),
        ));
    }
    Ok(caps)
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn issue_token(
        &self,
        request: Request<v1::IssueTokenRequest>,
    ) -> Result<Response<v1::IssueTokenResponse>, Status> {
        let operator = self.0.require(&request, Capability::Admin)?;
        let access = self.0.access()?.clone();
        let req = request.into_inner();
        let caps = parse_capabilities(&req.capabilities)?;
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(req.ttl_seconds)));
        if let Some(ttl) = ttl
            && ttl > access.max_ttl()
        {
            return Err(MasterError::InvalidArgument(format!(
                "ttl_seconds {} exceeds the master's maximum {}: ask for less",
                ttl.as_secs(),
                access.max_ttl().as_secs()
            ))
            .into());
        }
        let response = blocking(&access, move |access| {
            let (token, claims) = access.issue(&req.subject, &req.tenant, caps.clone(), ttl)?;
            let (refresh, family) = access.refresh.issue_with_family(&req.subject, &req.tenant, caps, unix_now())?;
            Ok(v1::IssueTokenResponse {
                access_token: token,
                expires_at: Some(timestamp(claims.exp)),
                refresh_token: refresh.into_string(),
                token_id: claims.jti,
                family,
            })
        })
        .await?;
        tracing::info!(operator = %operator.subject, token.id = %response.token_id, "access token issued");
        Ok(Response::new(response))
    }

    async fn refresh_token(
        &self,
        request: Request<v1::RefreshTokenRequest>,
    ) -> Result<Response<v1::RefreshTokenResponse>, Status> {
        let access = self.0.access()?.clone();
        let presented = request.into_inner().refresh_token;
        let response = blocking(&access, move |access| {
            let (next, grant) = access.refresh.rotate(&presented, unix_now())?;
            let caps: Vec<Capability> = grant.caps.into_iter().collect();
            let (token, claims) = access.issue(&grant.subject, &grant.tenant, caps, None)?;
            Ok(v1::RefreshTokenResponse {
                access_token: token,
                expires_at: Some(timestamp(claims.exp)),
                refresh_token: next.into_string(),
            })
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn revoke_tokens(
        &self,
        request: Request<v1::RevokeTokensRequest>,
    ) -> Result<Response<v1::RevokeTokensResponse>, Status> {
        let operator = self.0.require(&request, Capability::Admin)?;
        let access = self.0.access()?.clone();
        let target = request.into_inner().target;
        let revoked = blocking(&access, move |access| match target {
            Some(v1::revoke_tokens_request::Target::Family(family)) => {
                Ok(u32::from(access.refresh.revoke_family(&family, unix_now())?))
            }
            Some(v1::revoke_tokens_request::Target::Subject(subject)) => {
                // Access tokens of the subject issued until now stop working too, not only refreshes.
                access.revoke_subject_tokens(&subject)?;
                let count = access.refresh.revoke_subject(&subject, unix_now())?;
                Ok(u32::try_from(count).unwrap_or(u32::MAX))
            }
            None => Err(MasterError::InvalidArgument("name a family or a subject to revoke".into())),
        })
        .await?;
        tracing::warn!(security_event = "tokens_revoked", operator = %operator.subject, revoked, "tokens revoked");
        Ok(Response::new(v1::RevokeTokensResponse { revoked }))
    }

    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let operator = self.0.require(&request, Capability::Admin)?;
        let access = self.0.access()?.clone();
        let req = request.into_inner();
        let ttl = if req.ttl_seconds == 0 { JOIN_TOKEN_TTL } else { Duration::from_secs(u64::from(req.ttl_seconds)) };
        let uses = (req.uses > 0).then_some(req.uses);
        let (token, info) =
            blocking(&access, move |access| Ok(access.joins.create(ttl, uses, unix_now(), &req.note)?)).await?;
        tracing::info!(operator = %operator.subject, join_token.id = %info.id, uses = info.uses_left, "join token created");
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token: token.into_string(),
            id: info.id,
            expires_at: Some(timestamp(info.expires_at)),
            uses: info.uses_left,
        }))
    }

    async fn list_join_tokens(
        &self,
        request: Request<v1::ListJoinTokensRequest>,
    ) -> Result<Response<v1::ListJoinTokensResponse>, Status> {
        self.0.require(&request, Capability::Admin)?;
        let access = self.0.access()?.clone();
        let mut tokens = blocking(&access, |access| Ok(access.joins.list(unix_now())?)).await?;
        tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at)); // newest first, as the contract says
        let tokens = tokens
            .into_iter()
            .map(|info| v1::JoinTokenInfo {
                id: info.id,
                expires_at: Some(timestamp(info.expires_at)),
                uses_left: info.uses_left,
                used_by: info.used_by,
                note: info.note,
            })
            .collect();
        Ok(Response::new(v1::ListJoinTokensResponse { tokens }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<v1::RevokeJoinTokenRequest>,
    ) -> Result<Response<v1::RevokeJoinTokenResponse>, Status> {
        self.0.require(&request, Capability::Admin)?;
        let access = self.0.access()?.clone();
        let id = request.into_inner().id;
        let shown = id.clone();
        let existed = blocking(&access, move |access| Ok(access.joins.revoke(&id)?)).await?;
        if !existed {
            return Err(MasterError::UnknownJoinToken(shown).into());
        }
        Ok(Response::new(v1::RevokeJoinTokenResponse {}))
    }

    async fn evict_node(
        &self,
        request: Request<v1::EvictNodeRequest>,
    ) -> Result<Response<v1::EvictNodeResponse>, Status> {
        let operator = self.0.require(&request, Capability::Admin)?;
        let registry = self.0.registry()?.clone();
        let name = request.into_inner().name;
        let evicted = name.clone();
        let existed = tokio::task::spawn_blocking(move || registry.remove(&evicted))
            .await
            .map_err(|e| Status::internal(format!("eviction task failed: {e}")))?
            .map_err(MasterError::from)?;
        if !existed {
            let known = self.0.registry()?.snapshot().into_iter().map(|n| n.record.name.clone()).collect();
            return Err(MasterError::UnknownNodes { unknown: vec![name], known }.into());
        }
        tracing::warn!(security_event = "node_evicted", operator = %operator.subject, node.id = %name, "node evicted");
        Ok(Response::new(v1::EvictNodeResponse {}))
    }

    async fn list_pending_nodes(
        &self,
        request: Request<v1::ListPendingNodesRequest>,
    ) -> Result<Response<v1::ListPendingNodesResponse>, Status> {
        self.0.require(&request, Capability::Admin)?;
        let nodes = self
            .0
            .access()?
            .pending()
            .into_iter()
            .map(|(name, pending)| v1::PendingNode {
                name,
                address: pending.address,
                last_attempt: Some(prost_types::Timestamp::from(pending.last_attempt)),
                reason: pending.reason,
            })
            .collect();
        Ok(Response::new(v1::ListPendingNodesResponse { nodes }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<v1::RotateSigningKeyRequest>,
    ) -> Result<Response<v1::RotateSigningKeyResponse>, Status> {
        let operator = self.0.require(&request, Capability::Admin)?;
        let access = self.0.access()?.clone();
        let kid = blocking(&access, |access| access.rotate()).await?;
        tracing::warn!(security_event = "signing_key_rotated", operator = %operator.subject, kid = %kid, "signing key rotated");
        Ok(Response::new(v1::RotateSigningKeyResponse { kid }))
    }

    async fn get_verification_keys(
        &self,
        _request: Request<v1::GetVerificationKeysRequest>,
    ) -> Result<Response<v1::GetVerificationKeysResponse>, Status> {
        Ok(Response::new(v1::GetVerificationKeysResponse { keys: self.0.access()?.public_keys() }))
    }
}
