//! What a started node prints on standard output: where to reach it, its tokens, how to add a
//! node, and where its telemetry goes.

use super::args::NodeArgs;
use super::export::Export;
use super::identity::{DataDir, NodeIdentity};
use super::listeners::Receivers;

pub fn print(
    identity: &NodeIdentity,
    args: &NodeArgs,
    advertise: &str,
    api_token: &str,
    dir: &DataDir,
    receivers: &Receivers,
    export: &Export,
) {
    let data = dir.path().display();
    println!(
        "apiary node {:?} (id {}) is running",
        identity.node.name, identity.node.id
    );
    println!(
        "  API         http://{}   (try: apiary status --peer http://{})",
        args.api, args.api
    );
    println!("  peers       {advertise} (QUIC, mutual TLS)");
    println!("  data        {data}");
    println!(
        "  API token   {api_token}   (also in {})",
        dir.api_token_path().display()
    );
    println!(
        "  join token  {}   (also in {})",
        identity.join_token,
        dir.join_token_path().display()
    );
    println!(
        "  add a node  apiary node --name NAME --data-dir DIR --listen HOST:PORT --api HOST:PORT \
         --join {advertise} --join-token $(cat {})",
        dir.join_token_path().display()
    );
    if let Some(addr) = receivers.grpc {
        println!(
            "  OTLP/gRPC   http://{addr}   (apps' OTEL_EXPORTER_OTLP_ENDPOINT, protocol grpc)"
        );
    }
    if let Some(addr) = receivers.http {
        println!("  OTLP/HTTP   http://{addr}   (apps' OTEL_EXPORTER_OTLP_ENDPOINT, protocol http/protobuf)");
    }
    for destination in export.status() {
        println!(
            "  exporting   {} → {} ({})",
            destination.name, destination.endpoint, destination.protocol
        );
    }
}
