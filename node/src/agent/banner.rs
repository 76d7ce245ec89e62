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
    api_token: Option<&str>,
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
    match api_token {
        Some(token) if dir.api_token_path().exists() => println!(
            "  API token   {token}   (admin; also in {})",
            dir.api_token_path().display()
        ),
        Some(_) => println!("  API token   the one in --token-file (admin on this node)"),
        None => println!(
            "  API token   none on this node: use a token from `apiary token create` (the first \
             node's DATA_DIR/api-token is an admin token)"
        ),
    }
    match &identity.join_token {
        Some(token) if dir.join_token_path().exists() => {
            println!(
                "  join token  {token}   (expires 1 h after it was made; also in {})",
                dir.join_token_path().display()
            );
            println!(
                "  add a node  apiary node --name NAME --data-dir DIR --listen HOST:PORT --api \
                 HOST:PORT --join {advertise} --join-token $(cat {})",
                dir.join_token_path().display()
            );
        }
        _ => println!(
            "  add a node  make a join token with `apiary join-token create`, then: apiary node \
             --join {advertise} --join-token TOKEN …"
        ),
    }
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
