//! A node that cannot start (here: a TUN device name the kernel refuses, which fails
//! before any device or socket exists) returns the reason, and
//! `Node::report_unavailable` shows it on every gateway, also ones created later.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{GatewayStatus, VpnGatewaySpec};
use node::{Node, NodeConfig, NodeError};
use store::{SqliteStore, Store};

fn gateway(id: &str) -> model::VpnGateway {
    VpnGatewaySpec {
        name: Some(id.into()),
        ipsec_addresses: Some(vec!["192.0.2.1".into()]),
        local_networks: Some(vec!["10.0.0.0/16".into()]),
        ..Default::default()
    }
    .build(id.into(), chrono::Utc::now())
    .unwrap()
}

async fn wait_error(store: &dyn Store, id: &str) -> String {
    let start = Instant::now();
    loop {
        let g = store.gateway(id).await.unwrap();
        if g.status == GatewayStatus::Error {
            return g.status_reason.unwrap_or_default();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{g:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_that_cannot_start_puts_gateways_in_error() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    store.create_gateway(&gateway("vpn-a"), None).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(0u64);

    let config = NodeConfig {
        tun_name: "no such/name".into(),
        ..NodeConfig::default()
    };
    let err = Node::start(config, Arc::clone(&store), rx.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Dataplane(_)), "{err}");

    let reason = format!("the gateway node could not start: {err}");
    let task = Node::report_unavailable(Arc::clone(&store), rx, reason.clone());
    assert_eq!(wait_error(&*store, "vpn-a").await, reason);

    // A gateway created afterwards gets the same status on the next change.
    store.create_gateway(&gateway("vpn-b"), None).await.unwrap();
    tx.send_modify(|v| *v += 1);
    assert_eq!(wait_error(&*store, "vpn-b").await, reason);

    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops when the change channel closes")
        .unwrap();
}
