//! `buildd mcp`: buildd's MCP tools over stdio, for a person's own agent session
//! (`claude mcp add buildd -- buildd mcp`, or Claude Desktop's configuration),
//! forwarded to the server's `/mcp` with the key `buildd login` saved.
//!
//! The tools are the server's own: this process carries the session's requests to
//! the server with the person's key and the answers back (the official SDK on both
//! sides), so the tools, their rules and their errors are exactly those of `/mcp`.

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, ErrorData,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, RoleServer, ServerHandler, ServiceExt};

use crate::client::Client;
use crate::core::version::VERSION;

/// Serves the tools on stdin and stdout until the session closes its end.
pub async fn run(server: &str, token: &str) -> Result<(), String> {
    // A wrong key or an unreachable server says so once, here, in one line on stderr,
    // rather than as a session that cannot list its tools.
    let client = Client::new(server, token).map_err(|e| e.to_string())?;
    client.me().await.map_err(|e| e.to_string())?;
    let url = client.mcp_url();
    let http = reqwest::Client::builder()
        .user_agent(format!("buildd/{VERSION}"))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let transport = StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header(token),
    );
    let remote = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("buildd mcp", VERSION),
    )
    .serve(transport)
    .await
    .map_err(|e| format!("cannot open an MCP session with {url}: {e}"))?;
    let bridge = Bridge { remote, url };
    let session = bridge
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("the MCP session on stdio did not start: {e}"))?;
    session
        .waiting()
        .await
        .map_err(|e| format!("the MCP session on stdio ended badly: {e}"))?;
    Ok(())
}

/// The stdio server, passing each request on to the remote `/mcp`.
struct Bridge {
    remote: RunningService<RoleClient, ClientConfig>,
    url: String,
}

impl Bridge {
    /// A failure to reach the server, as the protocol's error for the session: the
    /// server's own errors pass as they came.
    fn unreachable(&self, e: ServiceError) -> ErrorData {
        match e {
            ServiceError::McpError(error) => error,
            other => ErrorData::internal_error(
                format!("cannot reach the buildd server at {}: {other}", self.url),
                None,
            ),
        }
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let remote = self.remote.peer_info();
        let mut config = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("buildd", VERSION));
        if let Some(instructions) = remote.and_then(|info| info.instructions.clone()) {
            config = config.with_instructions(instructions);
        }
        config
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.remote
            .list_tools(request)
            .await
            .map_err(|e| self.unreachable(e))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.remote
            .call_tool_once(request)
            .await
            .map_err(|e| self.unreachable(e))
    }
}
