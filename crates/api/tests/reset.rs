//! `POST /v1/vpn-connections/{id}/tunnels/{tunnel_id}/reset` without a node, and with a
//! node that refuses; the path with a real node is proven against strongSwan in the
//! `node` crate's interop tests.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::{Arc, Mutex};

use api::{AppState, NodeControl, NodeFuture};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token-123";

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Records the tunnels it was asked to reset.
struct RecordingNode(Mutex<Vec<String>>);

impl NodeControl for RecordingNode {
    fn reset_tunnel(&self, tunnel_id: String) -> NodeFuture {
        if let Ok(mut v) = self.0.lock() {
            v.push(tunnel_id);
        }
        Box::pin(async { Ok(()) })
    }
}

/// Refuses, as a node does for a tunnel it cannot run.
struct RefusingNode;

impl NodeControl for RefusingNode {
    fn reset_tunnel(&self, _tunnel_id: String) -> NodeFuture {
        Box::pin(async { Err("IKEv1 is not supported by this gateway node yet".to_string()) })
    }
}

#[tokio::test]
async fn reset_needs_a_node_and_an_existing_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store::SqliteStore::open(&dir.path().join("data")).unwrap());
    let state = AppState::new(store, TOKEN.into());
    let app = api::router(state.clone());
    let (_, gw) = call(
        &app,
        Method::POST,
        "/v1/vpn-gateways",
        Some(json!({
        "name": "gw", "ipsec_addresses": ["192.0.2.1"], "local_networks": ["10.0.0.0/16"]})),
    )
    .await;
    let (_, cgw) = call(
        &app,
        Method::POST,
        "/v1/customer-gateways",
        Some(json!({
        "name": "peer", "ip_address": "198.51.100.1"})),
    )
    .await;
    let (s, conn) = call(
        &app,
        Method::POST,
        "/v1/vpn-connections",
        Some(json!({
        "name": "c", "vpn_gateway_id": gw["id"], "tunnels": [{"customer_gateway_id": cgw["id"]}]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{conn}");
    let conn_id = conn["id"].as_str().unwrap();
    let tunnel_id = conn["tunnels"][0]["id"].as_str().unwrap();
    let reset = format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}/reset");

    let (s, v) = call(&app, Method::POST, &reset, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no gateway node"),
        "{v}"
    );

    let node = Arc::new(RecordingNode(Mutex::new(Vec::new())));
    state.set_node_control(node.clone());
    let (s, v) = call(&app, Method::POST, &reset, None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["id"], tunnel_id);
    assert!(v.get("pre_shared_key").is_none());
    assert_eq!(*node.0.lock().unwrap(), vec![tunnel_id.to_string()]);

    let (s, v) = call(
        &app,
        Method::POST,
        &format!("/v1/vpn-connections/{conn_id}/tunnels/tun-nope/reset"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = call(
        &app,
        Method::POST,
        &format!("/v1/vpn-connections/vco-nope/tunnels/{tunnel_id}/reset"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    state.set_node_control(Arc::new(RefusingNode));
    let (s, v) = call(&app, Method::POST, &reset, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("IKEv1"),
        "{v}"
    );

    let schema = api::openapi();
    let doc = serde_json::to_value(&schema).unwrap();
    assert!(doc["paths"]["/v1/vpn-connections/{id}/tunnels/{tunnel_id}/reset"]["post"].is_object());
}
