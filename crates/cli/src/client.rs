//! Talking to the master: TLS settings and the optional bearer token from the global flags, one
//! tonic channel, typed calls bounded by a deadline, and the one place where gRPC failures
//! become messages that say what to do (transport and TLS failures through
//! [`ragmesh_tls::explain_error_in`]).

use std::error::Error as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ragmesh_proto::ErrorKind;
use ragmesh_proto::v1::{self, auth_service_client::AuthServiceClient, master_service_client::MasterServiceClient};
use ragmesh_tls::{ErrorContext, LoadedTls, TlsFiles};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::args::GlobalArgs;
use crate::error::usage;

/// Deadline of an RPC when `--timeout-ms` is not given.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the master is and how to authenticate to it, validated.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as given.
    pub addr: String,
    /// The host part: the name the master's certificate must hold.
    pub host: String,
    /// Client TLS; `None` with `--insecure`.
    pub tls: Option<Arc<LoadedTls>>,
    /// Deadline of every RPC unless the caller picks its own.
    pub timeout: Duration,
    /// Access token sent with every call (`--token`); `None`: the certificate is the identity.
    pub bearer: Option<Bearer>,
}

/// The `authorization: Bearer <token>` value sent with every call. `Debug` never shows it.
#[derive(Clone)]
pub struct Bearer(AsciiMetadataValue);

impl Bearer {
    /// Validates an access token as given on the command line: a pasted `Bearer ` prefix and
    /// surrounding whitespace are dropped; an empty token or one with characters a JWT never
    /// holds is refused with a message naming the flag.
    pub fn new(token: &str) -> Result<Bearer, String> {
        let trimmed = token.trim();
        let token = if trimmed == "Bearer" { "" } else { trimmed.strip_prefix("Bearer ").unwrap_or(trimmed).trim() };
        if token.is_empty() {
            return Err("--token (or RAGMESH_TOKEN) is empty: pass the access_token printed by \
                        `ragmeshctl token issue`, or unset it to use the client certificate"
                .to_owned());
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err("--token (or RAGMESH_TOKEN) holds spaces or characters a token never has: \
                        pass the access_token exactly as `ragmeshctl token issue` printed it"
                .to_owned());
        }
        let mut value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "--token (or RAGMESH_TOKEN) is not a valid header value".to_owned())?;
        // Keeps the token out of HPACK tables (and any debug output of the header map).
        value.set_sensitive(true);
        Ok(Bearer(value))
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

impl Target {
    /// Validates the global flags: the address must be HOST:PORT, and without `--insecure` all
    /// three TLS files must be given and valid. Problems are usage errors naming every missing
    /// flag and the command that creates the files.
    pub fn from_args(global: &GlobalArgs) -> anyhow::Result<Target> {
        let (host, _port) = split_host_port(&global.master).map_err(usage)?;
        let timeout = global.timeout_ms.map_or(DEFAULT_RPC_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)));
        let tls = if global.insecure {
            None
        } else {
            let files = tls_files(global).map_err(usage)?;
            Some(Arc::new(files.load().map_err(|err| usage(err.to_string()))?))
        };
        let bearer = match &global.token {
            Some(token) => Some(Bearer::new(token.expose()).map_err(usage)?),
            None => None,
        };
        Ok(Target { addr: global.master.clone(), host, tls, timeout, bearer })
    }

    /// What `explain_error_in` should know about this connection.
    fn error_context(&self) -> ErrorContext {
        ErrorContext {
            addr: Some(self.addr.clone()),
            ca: self.tls.as_ref().map(|tls| tls.files().ca.clone()),
            tls: Some(self.tls.is_some()),
        }
    }
}

/// The three TLS paths, or a message naming each missing one.
fn tls_files(global: &GlobalArgs) -> Result<TlsFiles, String> {
    let flags = [
        ("--ca", "RAGMESH_CA", &global.ca),
        ("--cert", "RAGMESH_CERT", &global.cert),
        ("--key", "RAGMESH_KEY", &global.key),
    ];
    let missing: Vec<String> = flags
        .iter()
        .filter(|(_, _, value)| value.is_none())
        .map(|(flag, env, _)| format!("{flag} (or {env})"))
        .collect();
    match (&global.ca, &global.cert, &global.key) {
        (Some(ca), Some(cert), Some(key)) => Ok(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() }),
        _ => Err(format!(
            "missing {}: the master is reached over mutual TLS; create a CA and a client \
             certificate with `ragmeshctl certs init --dir certs` and `ragmeshctl certs issue \
             --dir certs client`, then pass --ca certs/ca.pem --cert certs/client.pem --key \
             certs/client.key (or pass --insecure for a master started with --insecure)",
            missing.join(", ")
        )),
    }
}

/// Splits `host:port` (`[v6]:port` too) into the host, without brackets, and the port.
pub fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let invalid = || format!("--master {addr:?} is not HOST:PORT: use e.g. 127.0.0.1:7400 or master.internal:7400");
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(invalid)?,
        None if host.contains(':') => return Err(invalid()),
        None => host,
    };
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if host.is_empty() || port == 0 {
        return Err(invalid());
    }
    Ok((host.to_owned(), port))
}

/// A connected client of the master's `MasterService` and `AuthService`.
#[derive(Debug)]
pub struct Master {
    client: MasterServiceClient<Channel>,
    auth: AuthServiceClient<Channel>,
    target: Target,
}

impl Master {
    /// Connects (TCP and, with TLS, the handshake) within the target's timeout. A failure is
    /// explained: nothing listening, untrusted certificate, plaintext/TLS mismatch, ...
    pub async fn connect(target: Target) -> anyhow::Result<Master> {
        let scheme = if target.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", target.addr))
            .map_err(|err| usage(format!("--master {:?} is not a usable address: {err}", target.addr)))?
            .connect_timeout(target.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &target.tls {
            endpoint = endpoint
                .tls_config(tls.client_config(&target.host))
                .map_err(|err| usage(format!("cannot use the TLS files: {err}")))?;
        }
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(err) => {
                let explanation = ragmesh_tls::explain_error_in(&err, &target.error_context());
                anyhow::bail!("cannot reach the master at {}: {explanation}", target.addr);
            }
        };
        Ok(Master { client: MasterServiceClient::new(channel.clone()), auth: AuthServiceClient::new(channel), target })
    }

    /// The master's address, as given.
    pub fn addr(&self) -> &str {
        &self.target.addr
    }

    /// The default deadline of calls.
    pub fn timeout(&self) -> Duration {
        self.target.timeout
    }

    /// `ListNodes`, within the default deadline.
    pub async fn list_nodes(&self) -> anyhow::Result<Vec<v1::NodeInfo>> {
        Ok(self.list_nodes_and_groups().await?.nodes)
    }

    /// Document counts and index sizes (`Stats`).
    pub async fn stats(&self) -> anyhow::Result<v1::StatsResponse> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        self.invoke(timeout, client.stats(self.request(v1::StatsRequest {}, timeout)))
            .await
            .map_err(|status| self.describe("stats", &status))
    }

    /// Every node and every shard group.
    pub async fn list_nodes_and_groups(&self) -> anyhow::Result<v1::ListNodesResponse> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        self.invoke(timeout, client.list_nodes(self.request(v1::ListNodesRequest {}, timeout)))
            .await
            .map_err(|status| self.describe("list nodes", &status))
    }

    /// `WatchEvents` of `kinds` (empty: all): a stream without a deadline.
    pub async fn watch_events(&self, kinds: Vec<i32>) -> anyhow::Result<tonic::Streaming<v1::WatchEventsResponse>> {
        let mut client = self.client.clone();
        let mut request = Request::new(v1::WatchEventsRequest { kinds });
        if let Some(Bearer(value)) = &self.target.bearer {
            request.metadata_mut().insert("authorization", value.clone());
        }
        let opened = tokio::time::timeout(self.target.timeout, client.watch_events(request)).await;
        match opened {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.describe("watch events", &status)),
            Err(_) => {
                anyhow::bail!("watch events: the master did not answer within {} ms", self.target.timeout.as_millis())
            }
        }
    }

    /// `GetNode`, within the default deadline.
    pub async fn get_node(&self, name: &str) -> anyhow::Result<v1::NodeInfo> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        let message = v1::GetNodeRequest { name: name.to_owned() };
        let response = self
            .invoke(timeout, client.get_node(self.request(message, timeout)))
            .await
            .map_err(|status| self.describe("get node", &status))?;
        response.node.ok_or_else(|| anyhow::anyhow!("the master answered GetNode without a node: upgrade the master"))
    }

    /// `IssueToken`, within the default deadline.
    pub async fn issue_token(&self, message: v1::IssueTokenRequest) -> anyhow::Result<v1::IssueTokenResponse> {
        let mut client = self.auth.clone();
        let call = client.issue_token(self.request(message, self.target.timeout));
        self.unary("issue token", call).await
    }

    /// `RefreshToken`, within the default deadline.
    pub async fn refresh_token(&self, message: v1::RefreshTokenRequest) -> anyhow::Result<v1::RefreshTokenResponse> {
        let mut client = self.auth.clone();
        let call = client.refresh_token(self.request(message, self.target.timeout));
        self.unary("refresh token", call).await
    }

    /// `RevokeTokens`, within the default deadline.
    pub async fn revoke_tokens(&self, message: v1::RevokeTokensRequest) -> anyhow::Result<v1::RevokeTokensResponse> {
        let mut client = self.auth.clone();
        let call = client.revoke_tokens(self.request(message, self.target.timeout));
        self.unary("revoke tokens", call).await
    }

    /// `CreateJoinToken`, within the default deadline.
    pub async fn create_join_token(
        &self,
        message: v1::CreateJoinTokenRequest,
    ) -> anyhow::Result<v1::CreateJoinTokenResponse> {
        let mut client = self.auth.clone();
        let call = client.create_join_token(self.request(message, self.target.timeout));
        self.unary("create join token", call).await
    }

    /// `ListJoinTokens`, within the default deadline.
    pub async fn list_join_tokens(&self) -> anyhow::Result<Vec<v1::JoinTokenInfo>> {
        let mut client = self.auth.clone();
        let call = client.list_join_tokens(self.request(v1::ListJoinTokensRequest {}, self.target.timeout));
        Ok(self.unary("list join tokens", call).await?.tokens)
    }

    /// `RevokeJoinToken`, within the default deadline.
    pub async fn revoke_join_token(&self, id: &str) -> anyhow::Result<()> {
        let mut client = self.auth.clone();
        let message = v1::RevokeJoinTokenRequest { id: id.to_owned() };
        let call = client.revoke_join_token(self.request(message, self.target.timeout));
        self.unary("revoke join token", call).await.map(|_| ())
    }

    /// `EvictNode`, within the default deadline.
    pub async fn evict_node(&self, name: &str) -> anyhow::Result<()> {
        let mut client = self.auth.clone();
        let message = v1::EvictNodeRequest { name: name.to_owned() };
        let call = client.evict_node(self.request(message, self.target.timeout));
        self.unary("evict node", call).await.map(|_| ())
    }

    /// `ListPendingNodes`, within the default deadline.
    pub async fn list_pending_nodes(&self) -> anyhow::Result<Vec<v1::PendingNode>> {
        let mut client = self.auth.clone();
        let call = client.list_pending_nodes(self.request(v1::ListPendingNodesRequest {}, self.target.timeout));
        Ok(self.unary("list pending nodes", call).await?.nodes)
    }

    /// `RotateSigningKey`, within the default deadline; returns the new key id.
    pub async fn rotate_signing_key(&self) -> anyhow::Result<String> {
        let mut client = self.auth.clone();
        let call = client.rotate_signing_key(self.request(v1::RotateSigningKeyRequest {}, self.target.timeout));
        Ok(self.unary("rotate signing key", call).await?.kid)
    }

    /// `GetVerificationKeys`, within the default deadline.
    pub async fn verification_keys(&self) -> anyhow::Result<Vec<v1::VerificationKey>> {
        let mut client = self.auth.clone();
        let call = client.get_verification_keys(self.request(v1::GetVerificationKeysRequest {}, self.target.timeout));
        Ok(self.unary("get verification keys", call).await?.keys)
    }

    /// `Search` with a gRPC deadline of `deadline`.
    pub async fn search(&self, message: v1::SearchRequest, deadline: Duration) -> anyhow::Result<v1::SearchResponse> {
        self.search_traced(message, deadline).await.map(|(response, _trace_id)| response)
    }

    /// [`Master::search`] and the id of the trace the master served it in (response metadata
    /// `x-ragmesh-trace-id`), when the master exports traces and sampled this one.
    pub async fn search_traced(
        &self,
        message: v1::SearchRequest,
        deadline: Duration,
    ) -> anyhow::Result<(v1::SearchResponse, Option<String>)> {
        let mut client = self.client.clone();
        let call = client.search(self.request(message, deadline));
        let response = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => return Err(self.describe("search", &status)),
            Err(_elapsed) => {
                let status = Status::deadline_exceeded(format!("no answer within {} ms", deadline.as_millis()));
                return Err(self.describe("search", &status));
            }
        };
        let trace_id = response
            .metadata()
            .get(ragmesh_proto::TRACE_ID_METADATA)
            .and_then(|value| value.to_str().ok())
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        Ok((response.into_inner(), trace_id))
    }

    /// `IngestDocuments` with a gRPC deadline of `deadline`. The raw status is returned so the
    /// caller can tell rejected documents (`InvalidArgument`) from other failures; pass it to
    /// [`Master::describe`] for a message.
    pub async fn ingest(
        &self,
        message: v1::IngestDocumentsRequest,
        deadline: Duration,
    ) -> Result<v1::IngestDocumentsResponse, Status> {
        let mut client = self.client.clone();
        self.invoke(deadline, client.ingest_documents(self.request(message, deadline))).await
    }

    /// `ListNodeActions` of `nodes` (empty: every node that is up), within the default deadline.
    pub async fn list_node_actions(&self, nodes: Vec<String>) -> Result<v1::ListNodeActionsResponse, Status> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        self.invoke(timeout, client.list_node_actions(self.request(v1::ListNodeActionsRequest { nodes }, timeout)))
            .await
    }

    /// `ExecuteAction` with a gRPC deadline of `deadline`; the raw status on failure, so the
    /// caller can tell a refused request from a failed call.
    pub async fn execute_action(
        &self,
        message: v1::ExecuteActionRequest,
        deadline: Duration,
    ) -> Result<v1::ExecuteActionResponse, Status> {
        let mut client = self.client.clone();
        self.invoke(deadline, client.execute_action(self.request(message, deadline))).await
    }

    /// `GetActionJob`, within the default deadline.
    pub async fn get_action_job(&self, job_id: &str) -> Result<v1::GetActionJobResponse, Status> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        let message = v1::GetActionJobRequest { job_id: job_id.to_owned() };
        self.invoke(timeout, client.get_action_job(self.request(message, timeout))).await
    }

    /// `WatchActionJob`: a stream without a deadline (opening it is bounded by the default one).
    pub async fn watch_action_job(&self, job_id: &str) -> Result<tonic::Streaming<v1::WatchActionJobResponse>, Status> {
        let mut client = self.client.clone();
        let mut request = Request::new(v1::WatchActionJobRequest { job_id: job_id.to_owned() });
        if let Some(Bearer(value)) = &self.target.bearer {
            request.metadata_mut().insert("authorization", value.clone());
        }
        self.invoke(self.target.timeout, client.watch_action_job(request)).await
    }

    /// `ExecuteTransaction` with a gRPC deadline of `deadline`; the raw status on failure.
    pub async fn execute_transaction(
        &self,
        message: v1::ExecuteTransactionRequest,
        deadline: Duration,
    ) -> Result<v1::ExecuteTransactionResponse, Status> {
        let mut client = self.client.clone();
        self.invoke(deadline, client.execute_transaction(self.request(message, deadline))).await
    }

    /// `GetTransaction`, within the default deadline.
    pub async fn get_transaction(&self, tx_id: &str) -> Result<v1::GetTransactionResponse, Status> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        let message = v1::GetTransactionRequest { tx_id: tx_id.to_owned() };
        self.invoke(timeout, client.get_transaction(self.request(message, timeout))).await
    }

    /// `ListTransactions`, within the default deadline.
    pub async fn list_transactions(
        &self,
        message: v1::ListTransactionsRequest,
    ) -> Result<v1::ListTransactionsResponse, Status> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        self.invoke(timeout, client.list_transactions(self.request(message, timeout))).await
    }

    /// `ActionHistory`, within the default deadline.
    pub async fn action_history(&self, message: v1::ActionHistoryRequest) -> Result<v1::ActionHistoryResponse, Status> {
        let mut client = self.client.clone();
        let timeout = self.target.timeout;
        self.invoke(timeout, client.action_history(self.request(message, timeout))).await
    }

    /// Runs one call within the default deadline; a failure becomes a message saying what to do
    /// (`what` names the call).
    async fn unary<T>(&self, what: &str, call: impl Future<Output = Result<Response<T>, Status>>) -> anyhow::Result<T> {
        self.invoke(self.target.timeout, call).await.map_err(|status| self.describe(what, &status))
    }

    /// A request carrying `deadline` as its `grpc-timeout`, so the master stops working when we
    /// stop waiting, and the bearer token when there is one.
    fn request<T>(&self, message: T, deadline: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(deadline);
        if let Some(Bearer(value)) = &self.target.bearer {
            request.metadata_mut().insert("authorization", value.clone());
        }
        request
    }

    /// Runs one call, turning a missed deadline into `DEADLINE_EXCEEDED` even when the network
    /// swallows the server's answer.
    async fn invoke<T>(
        &self,
        deadline: Duration,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status),
            Err(_elapsed) => Err(Status::deadline_exceeded(format!("no answer within {} ms", deadline.as_millis()))),
        }
    }

    /// A message for a failed call (`what` names it: "search", "list nodes"), saying what to do.
    pub fn describe(&self, what: &str, status: &Status) -> anyhow::Error {
        let addr = &self.target.addr;
        // Transport failures (TLS refused, connection reset) carry their cause as the source.
        if status.source().is_some() {
            let explanation = ragmesh_tls::explain_error_in(status, &self.target.error_context());
            return anyhow::anyhow!("{what}: cannot talk to the master at {addr}: {explanation}");
        }
        let message = status.message();
        match ErrorKind::of(status) {
            ErrorKind::DeadlineExceeded => anyhow::anyhow!(
                "{what}: the master at {addr} did not answer in time ({message}): raise \
                 --timeout-ms, or look at the master's log"
            ),
            ErrorKind::Unimplemented => anyhow::anyhow!(
                "{what}: {addr} does not serve this call ({message}): point --master at the \
                 master (not at an agent), and run a master as new as this ragmeshctl"
            ),
            // The master's message names the credential it refused and what to do about it.
            ErrorKind::Unauthenticated | ErrorKind::PermissionDenied => {
                anyhow::anyhow!("{what}: the master refused the call: {message}")
            }
            kind => anyhow::anyhow!("{what}: the master answered {kind}: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(list: &[&str]) -> GlobalArgs {
        use clap::Parser as _;
        let cli = crate::args::Cli::try_parse_from(["ragmeshctl"].iter().chain(list).chain(&["nodes"]).copied())
            .expect("parses");
        cli.global
    }

    #[test]
    fn host_and_port_are_split_including_ipv6() {
        assert_eq!(split_host_port("127.0.0.1:7400"), Ok(("127.0.0.1".to_owned(), 7400)));
        assert_eq!(split_host_port("master.internal:1"), Ok(("master.internal".to_owned(), 1)));
        assert_eq!(split_host_port("[::1]:7400"), Ok(("::1".to_owned(), 7400)));
        for bad in ["7400", "host:", ":7400", "host:0", "host:99999", "::1:7400", "[::1:7400"] {
            let err = split_host_port(bad).expect_err(bad);
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_tls_flags_are_all_named_with_the_fix() {
        let args = global(&["--cert", "client.pem"]);
        let err = Target::from_args(&args).expect_err("ca and key missing");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        let message = err.to_string();
        assert!(message.starts_with("missing --ca (or RAGMESH_CA), --key (or RAGMESH_KEY):"), "{message}");
        assert!(message.contains("ragmeshctl certs issue"), "{message}");
        assert!(message.contains("--insecure"), "{message}");
    }

    #[test]
    fn unreadable_tls_files_are_usage_errors() {
        let args =
            global(&["--ca", "/nonexistent/ca.pem", "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/c.key"]);
        let err = Target::from_args(&args).expect_err("files missing");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn insecure_needs_no_files() {
        let target =
            Target::from_args(&global(&["--insecure", "--master", "[::1]:9", "--timeout-ms", "250"])).expect("valid");
        assert!(target.tls.is_none());
        assert_eq!(target.host, "::1");
        assert_eq!(target.timeout, Duration::from_millis(250));
    }

    #[test]
    fn bearer_tokens_are_validated_and_never_debug_printed() {
        let target = Target::from_args(&global(&["--insecure", "--token", "  Bearer eyJ.a.b \n"])).expect("valid");
        let bearer = target.bearer.as_ref().expect("bearer");
        assert_eq!(bearer.0.to_str().expect("ascii"), "Bearer eyJ.a.b");
        assert!(bearer.0.is_sensitive());
        assert_eq!(format!("{bearer:?}"), "Bearer(<redacted>)");
        assert!(!format!("{target:?}").contains("eyJ"), "{target:?}");

        for bad in ["", "   ", "Bearer ", "two words", "caf\u{e9}"] {
            let err = Target::from_args(&global(&["--insecure", "--token", bad])).expect_err(bad);
            assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE, "{bad:?}");
            assert!(err.to_string().starts_with("--token (or RAGMESH_TOKEN)"), "{bad:?}: {err}");
        }
        let without = Target::from_args(&global(&["--insecure"])).expect("valid");
        assert!(without.bearer.is_none());
    }

    fn lazy_master(bearer: Option<&str>) -> Master {
        let mut args = vec!["--insecure"];
        if let Some(token) = bearer {
            args.extend(["--token", token]);
        }
        let target = Target::from_args(&global(&args)).expect("valid");
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Master { client: MasterServiceClient::new(channel.clone()), auth: AuthServiceClient::new(channel), target }
    }

    #[tokio::test]
    async fn requests_carry_the_bearer_token_only_when_given() {
        let with = lazy_master(Some("eyJ.a.b"));
        let request = with.request(v1::ListNodesRequest {}, Duration::from_secs(1));
        let header = request.metadata().get("authorization").expect("authorization header");
        assert_eq!(header.to_str().expect("ascii"), "Bearer eyJ.a.b");
        assert!(request.metadata().get("grpc-timeout").is_some());

        let without = lazy_master(None);
        let request = without.request(v1::ListNodesRequest {}, Duration::from_secs(1));
        assert!(request.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn refusals_show_the_masters_own_advice() {
        let master = lazy_master(None);
        let status = Status::permission_denied("token lacks capability \"admin\": ask an operator");
        let message = master.describe("list nodes", &status).to_string();
        assert_eq!(
            message,
            "list nodes: the master refused the call: token lacks capability \"admin\": ask an operator"
        );
        let err = master.describe("refresh token", &Status::unauthenticated("refresh token was already used"));
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_FAILURE);
    }

    #[tokio::test]
    async fn nothing_listening_is_explained() {
        // A port that stays bound for the whole test but never listens: connections are refused,
        // and no other program can start listening there meanwhile.
        let closed = tokio::net::TcpSocket::new_v4().expect("socket");
        closed.bind("127.0.0.1:0".parse().expect("loopback address")).expect("bind");
        let addr = closed.local_addr().expect("bound address").to_string();
        let target = Target::from_args(&global(&["--insecure", "--master", &addr])).expect("valid");
        let err = Master::connect(target).await.expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("nothing is listening"), "{message}");
        assert!(message.contains(&addr), "{message}");
    }
}
