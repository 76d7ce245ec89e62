//! Every socket a node listens on, bound before it asks anything of a cluster: a node that
//! cannot have its ports fails on its own, before it is admitted as a member it would leave
//! dead.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use apiary_wire::{ClusterCa, Identity, Transport};
use tokio::net::TcpListener;

use super::args::NodeArgs;
use super::export::Export;

pub struct Listeners {
    /// QUIC for peers. It is bound before the node has its certificate (a joining node gets it
    /// from the cluster), with a throwaway identity that no cluster trusts; it serves nothing
    /// until [`Listeners::identify`] gives it the node's own.
    pub transport: Arc<Transport>,
    otlp_http: Option<(SocketAddr, TcpListener)>,
    otlp_grpc: Option<(SocketAddr, TcpListener)>,
    /// The HTTP API and dashboard.
    pub api: TcpListener,
}

/// The OTLP receivers' addresses, for the banner.
pub struct Receivers {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

impl Listeners {
    /// Binds QUIC (`--listen`), OTLP/HTTP, OTLP/gRPC and the API, in that order; each failure
    /// names the address and the flag that moves it.
    pub async fn bind(args: &NodeArgs, name: &str) -> Result<Listeners> {
        // Served only until the node's real identity is loaded or granted (`identify`).
        let placeholder = apiary_wire::tls::NodeName {
            id: 0,
            name: name.to_string(),
        };
        let placeholder = ClusterCa::generate(name)?
            .issue_identity(&placeholder, std::time::Duration::from_secs(3600))?;
        let transport = Transport::bind(args.listen, &placeholder)?;
        let otlp_http = match receiver_address("--otlp-http", &args.otlp_http, 4318)? {
            None => None,
            Some(addr) => Some((addr, TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for OTLP/HTTP on {addr}: is a collector using it? pass --otlp-http HOST:PORT or off")
            })?)),
        };
        let otlp_grpc = match receiver_address("--otlp-grpc", &args.otlp_grpc, 4317)? {
            None => None,
            Some(addr) => Some((addr, TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for OTLP/gRPC on {addr}: is a collector using it? pass --otlp-grpc HOST:PORT or off")
            })?)),
        };
        let api = TcpListener::bind(args.api).await.with_context(|| {
            format!(
                "cannot listen for the API on {}: is another node using it? pass --api HOST:PORT",
                args.api
            )
        })?;
        Ok(Listeners {
            transport,
            otlp_http,
            otlp_grpc,
            api,
        })
    }

    /// Puts the node's own certificate on the QUIC socket, once the node has one.
    pub fn identify(&self, identity: &Identity) -> Result<()> {
        self.transport.reload(identity, false)?;
        Ok(())
    }

    /// Starts the OTLP receivers, feeding `export`.
    pub fn serve_receivers(&mut self, export: &Arc<Export>) -> Receivers {
        let http = self.otlp_http.take().map(|(addr, listener)| {
            let router = apiary_pipeline::sources::otlp_http::router(export.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("the OTLP/HTTP receiver stopped: {e}");
                }
            });
            addr
        });
        let grpc = self.otlp_grpc.take().map(|(addr, listener)| {
            tokio::spawn(apiary_pipeline::sources::otlp_grpc::serve(
                listener,
                export.clone(),
            ));
            addr
        });
        Receivers { grpc, http }
    }
}

fn receiver_address(flag: &str, value: &str, port: u16) -> Result<Option<SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("{flag} {value:?}: give HOST:PORT (e.g. 127.0.0.1:{port}) or off"))
}
