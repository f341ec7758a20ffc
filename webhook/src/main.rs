//! vaultkeeper admission webhook (pod injection). Not built yet: this binary only parses its flags
//! and exits, so the workspace has its final shape; the injection work is tracked in its own issue.

use clap::Parser;

/// vaultkeeper webhook: injects the vaultkeeper agent into annotated pods (not implemented yet).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to serve admission reviews on.
    #[arg(long, env = "VAULTKEEPER_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    addr: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    anyhow::bail!(
        "the webhook is not implemented yet (would serve on {})",
        args.addr
    )
}
