//! `vpngw serve`: the API on an embedded SQLite store.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use store::{SqliteStore, Store};

pub fn run(
    listen: SocketAddr,
    data_dir: &Path,
    with_node: bool,
    node_config: node::NodeConfig,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", data_dir.display()))?;
    let store = Arc::new(
        SqliteStore::open(data_dir)
            .with_context(|| format!("opening the store in {}", data_dir.display()))?,
    );
    let token = api::load_or_create_admin_token(data_dir)
        .with_context(|| format!("reading or writing {}/admin.token", data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // The SAs, BGP sessions and health checks of the previous run ended with its
        // process: what it stored about them is history before anything reads it.
        let now = chrono::Utc::now();
        let reason = format!(
            "vpngw restarted at {}: the SAs of the previous run ended with it",
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let ended = store
            .end_observed_state(&reason, now)
            .await
            .context("clearing the tunnel status of the previous run")?;
        if ended > 0 {
            tracing::info!(tunnels = ended, "tunnel status of the previous run cleared");
        }
        let state = api::AppState::new(store.clone(), token);
        tokio::spawn(purge_client_tokens(store));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        tracing::info!(
            address = %listen,
            data_dir = %data_dir.display(),
            "vpngw API listening (token in {}/admin.token)",
            data_dir.display()
        );
        let node = if with_node {
            start_node(&state, state.store.clone(), node_config).await
        } else {
            // Controller only: no node will move resources out of `creating`, so the
            // controller applies its desired state itself (gateways say no node is
            // attached).
            tokio::spawn(api::run_without_node(state.clone()));
            None
        };
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving the API")?;
        if let Some(node) = node {
            node.shutdown().await;
        }
        tracing::info!("vpngw stopped");
        Ok(())
    })
}

/// Starts the gateway node beside the API. If it cannot start (not root, no
/// /dev/net/tun, port 500 in use), the API keeps serving and every gateway shows `error`
/// with the reason.
async fn start_node(
    state: &api::AppState,
    store: Arc<dyn Store>,
    config: node::NodeConfig,
) -> Option<node::NodeHandle> {
    node::fix_malloc_mmap_threshold();
    match node::Node::start(config, store.clone(), state.subscribe()).await {
        Ok(node) => {
            state.set_node_control(Arc::new(node.commands()));
            state.add_metrics_source(Arc::new(node.metrics()));
            Some(node)
        }
        Err(e) => {
            let reason = format!("the gateway node could not start: {e}");
            tracing::error!("{reason}; serving the API only");
            node::Node::report_unavailable(store, state.subscribe(), reason);
            None
        }
    }
}

/// Drops `client_token` records once they are older than 24 h.
async fn purge_client_tokens(store: Arc<SqliteStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match store.purge_client_tokens(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired client tokens dropped"),
            Err(e) => tracing::warn!(error = %e, "purging client tokens failed"),
        }
    }
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
