//! The API through its router, with `tower::ServiceExt::oneshot` (no sockets), on a real
//! SQLite store in a temporary directory.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use api::AppState;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token-123";

struct Api {
    app: Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store::SqliteStore::open(&dir.path().join("data")).unwrap());
        let state = AppState::new(store, TOKEN.into());
        Api {
            app: api::router(state.clone()),
            state,
            _dir: dir,
        }
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = auth {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, text) = self
            .raw(method, uri, Some(TOKEN), body.map(|b| b.to_string()))
            .await;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(body)).await
    }

    async fn patch(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, uri, Some(body)).await
    }

    async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, uri, None).await
    }

    async fn gateway(&self, name: &str) -> String {
        let (s, v) = self
            .post(
                "/v1/vpn-gateways",
                json!({"name": name, "ipsec_addresses": ["192.0.2.1", "192.0.2.2"], "local_networks": ["10.0.0.0/16"]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    async fn cgw(&self, name: &str, asn: Option<Value>) -> String {
        let mut body = json!({"name": name, "ip_address": "203.0.113.7"});
        if let Some(a) = asn {
            body["asn"] = a;
        }
        let (s, v) = self.post("/v1/customer-gateways", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    async fn connection(&self, gw: &str, cgw: &str, extra: Value) -> Value {
        let mut body = json!({
            "name": "to-branch",
            "vpn_gateway_id": gw,
            "tunnels": [
                {"customer_gateway_id": cgw, "pre_shared_key": "Tunnel1Secret!"},
                {"customer_gateway_id": cgw}
            ]
        });
        model::merge_patch(&mut body, &extra);
        let (s, v) = self.post("/v1/vpn-connections", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }
}

fn assert_error(v: &Value, code: &str, field: Option<&str>) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    match field {
        Some(f) => assert_eq!(v["error"]["field"], f, "{v}"),
        None => assert!(v["error"]["field"].is_null(), "{v}"),
    }
}

#[tokio::test]
async fn healthz_is_open_everything_else_needs_the_token() {
    let api = Api::new();
    let (s, body) = api.raw(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
    for uri in [
        "/v1/vpn-gateways",
        "/metrics",
        "/v1/openapi.json",
        "/v1/vpn-connections/vco-x/logs",
    ] {
        let (s, body) = api.raw(Method::GET, uri, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
        assert_error(&serde_json::from_str(&body).unwrap(), "Unauthorized", None);
        let (s, _) = api.raw(Method::GET, uri, Some("wrong"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (s, _) = api
        .raw(
            Method::POST,
            "/v1/vpn-gateways",
            Some("wrong"),
            Some("{}".into()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn gateway_crud() {
    let api = Api::new();
    let id = api.gateway("hq").await;
    assert!(id.starts_with("vpn-"));
    let (s, v) = api.get(&format!("/v1/vpn-gateways/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["gateway_type"], "public");
    assert_eq!(v["status"], "creating");
    assert_eq!(v["connection_count"], 0);
    let (s, v) = api
        .patch(
            &format!("/v1/vpn-gateways/{id}"),
            json!({"name": "head office", "tags": {"env": "prod"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "head office");
    assert_eq!(v["tags"]["env"], "prod");
    let (s, v) = api
        .patch(
            &format!("/v1/vpn-gateways/{id}"),
            json!({"ipsec_addresses": ["192.0.2.9"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("ipsec_addresses"));
    let (s, v) = api
        .patch(&format!("/v1/vpn-gateways/{id}"), json!({"id": "vpn-x"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("id"));
    let (s, v) = api.get("/v1/vpn-gateways").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert!(v["next_page_token"].is_null());
    let (s, _) = api.delete(&format!("/v1/vpn-gateways/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.get(&format!("/v1/vpn-gateways/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "NotFound", None);
    let (s, v) = api.delete(&format!("/v1/vpn-gateways/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "NotFound", None);
    let (s, v) = api.get("/v1/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "NotFound", None);
}

#[tokio::test]
async fn body_and_validation_errors_name_the_field() {
    let api = Api::new();
    let cases = [
        (
            json!({"name": "", "ipsec_addresses": ["192.0.2.1"], "local_networks": ["10.0.0.0/16"]}),
            "name",
        ),
        (
            json!({"name": "g", "ipsec_addresses": ["192.0.2.1", "nope"], "local_networks": ["10.0.0.0/16"]}),
            "ipsec_addresses[1]",
        ),
        (
            json!({"name": "g", "ipsec_addresses": ["192.0.2.1"]}),
            "local_networks",
        ),
        (
            json!({"name": "g", "ipsec_addresses": ["192.0.2.1"], "local_networks": ["10.0.0.0/16"], "gateway_type": "secret"}),
            "gateway_type",
        ),
        (
            json!({"name": "g", "ipsec_addresses": ["192.0.2.1"], "local_networks": ["10.0.0.0/16"], "colour": "red"}),
            "colour",
        ),
        (json!({"name": 5}), "name"),
        (
            json!({"name": "g", "ipsec_addresses": ["192.0.2.1"], "local_networks": ["10.0.0.0/16"], "client_token": 7}),
            "client_token",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = api.post("/v1/vpn-gateways", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&v, "InvalidParameter", Some(field));
    }
    let (s, v) = api
        .post("/v1/vpn-gateways", json!({"gateway_type": "secret"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("private"),
        "{v}"
    );
    let (s, body) = api
        .raw(
            Method::POST,
            "/v1/vpn-gateways",
            Some(TOKEN),
            Some("{not json".into()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(
        &serde_json::from_str(&body).unwrap(),
        "InvalidParameter",
        None,
    );
    let (s, body) = api
        .raw(
            Method::POST,
            "/v1/vpn-gateways",
            Some(TOKEN),
            Some("[1]".into()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(
        &serde_json::from_str(&body).unwrap(),
        "InvalidParameter",
        None,
    );
    let (s, _) = api
        .raw(Method::POST, "/v1/vpn-gateways", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let conn = |t0: Value| json!({"name": "c", "vpn_gateway_id": gw, "tunnels": [t0, {"customer_gateway_id": cgw}]});
    let cases = [
        (
            conn(json!({"customer_gateway_id": cgw, "pre_shared_key": "has space"})),
            "tunnels[0].pre_shared_key",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "ike": {"encryption": "blowfish"}})),
            "tunnels[0].ike.encryption",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "ike": {"mode": "aggressive"}})),
            "tunnels[0].ike.mode",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "ike": {"lifetime_s": 90000}})),
            "tunnels[0].ike.lifetime_s",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "ike": {"lifetime_s": -1}})),
            "tunnels[0].ike.lifetime_s",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "ipsec": {"pfs": "group3"}})),
            "tunnels[0].ipsec.pfs",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "ike": {"local_id": "a b"}})),
            "tunnels[0].ike.local_id",
        ),
        (
            conn(
                json!({"customer_gateway_id": cgw, "bgp": {"tunnel_cidr": "169.254.1.0/30", "local_ip": "169.254.1.1"}}),
            ),
            "tunnels[0].bgp.tunnel_cidr",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "psk": "x"})),
            "tunnels[0].psk",
        ),
        (
            conn(json!({"customer_gateway_id": "cgw-missing"})),
            "tunnels[0].customer_gateway_id",
        ),
        (
            conn(json!({"customer_gateway_id": cgw, "id": "tun-x"})),
            "tunnels[0].id",
        ),
        (
            json!({"name": "c", "vpn_gateway_id": "vpn-missing", "customer_gateway_id": cgw}),
            "vpn_gateway_id",
        ),
        (
            json!({"name": "c", "vpn_gateway_id": gw, "tunnels": [{"customer_gateway_id": cgw}]}),
            "tunnels",
        ),
        (
            json!({"name": "c", "vpn_gateway_id": gw, "customer_gateway_id": cgw, "enable_bgp": true}),
            "tunnels[0].customer_gateway_id",
        ),
        (
            json!({"name": "c", "vpn_gateway_id": gw, "customer_gateway_id": cgw, "local_subnets": ["10.9.0.0/24"]}),
            "local_subnets[0]",
        ),
        (
            json!({"name": "c", "vpn_gateway_id": gw, "customer_gateway_id": cgw, "routing_mode": "policy"}),
            "routing_mode",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = api.post("/v1/vpn-connections", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&v, "InvalidParameter", Some(field));
    }
    let (_, v) = api
        .post(
            "/v1/vpn-connections",
            conn(json!({"customer_gateway_id": cgw, "ike": {"encryption": "blowfish"}})),
        )
        .await;
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("aes-gcm-256") && m.contains("3des"), "{m}");
    let (_, v) = api
        .post(
            "/v1/vpn-connections",
            conn(json!({"customer_gateway_id": cgw, "pre_shared_key": "has space"})),
        )
        .await;
    assert!(
        !v.to_string().contains("has space"),
        "the key must not be echoed: {v}"
    );
    let (_, v) = api.get("/v1/vpn-connections").await;
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        0,
        "nothing was created"
    );
}

#[tokio::test]
async fn customer_gateway_crud_and_in_use_conflict() {
    let api = Api::new();
    let id = api.cgw("branch", Some(json!("1.10"))).await;
    let (s, v) = api.get(&format!("/v1/customer-gateways/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["asn"], 65546);
    assert_eq!(v["tunnel_count"], 0);
    let (s, v) = api
        .post(
            "/v1/customer-gateways",
            json!({"name": "x", "ip_address": "203.0.113.9", "asn": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("asn"));
    let (s, v) = api
        .patch(
            &format!("/v1/customer-gateways/{id}"),
            json!({"asn": 65001, "description": "d"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["asn"], 65001);
    let (s, v) = api
        .patch(
            &format!("/v1/customer-gateways/{id}"),
            json!({"ip_address": "203.0.113.99"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("ip_address"));

    let gw = api.gateway("hq").await;
    let conn = api
        .connection(&gw, &id, json!({"enable_bgp": true, "tunnels": [
            {"customer_gateway_id": id, "bgp": {"tunnel_cidr": "169.254.10.0/30", "local_ip": "169.254.10.1"}},
            {"customer_gateway_id": id, "bgp": {"tunnel_cidr": "169.254.11.0/30", "local_ip": "169.254.11.1"}}]}))
        .await;
    let (_, v) = api.get(&format!("/v1/customer-gateways/{id}")).await;
    assert_eq!(v["tunnel_count"], 2);
    let (s, v) = api.delete(&format!("/v1/customer-gateways/{id}")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "Conflict", None);
    let (s, v) = api
        .patch(&format!("/v1/customer-gateways/{id}"), json!({"asn": null}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "Conflict", Some("asn"));
    let (s, v) = api.delete(&format!("/v1/vpn-gateways/{gw}")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "Conflict", None);
    // A second connection may not reuse a tunnel CIDR on the same gateway.
    let (s, v) = api
        .post("/v1/vpn-connections", json!({"name": "dup", "vpn_gateway_id": gw, "tunnels": [
            {"customer_gateway_id": id, "bgp": {"tunnel_cidr": "169.254.11.0/30", "local_ip": "169.254.11.2"}},
            {"customer_gateway_id": id}]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("tunnels[0].bgp.tunnel_cidr"));
    let cid = conn["id"].as_str().unwrap();
    assert_eq!(
        api.delete(&format!("/v1/vpn-connections/{cid}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete(&format!("/v1/customer-gateways/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete(&format!("/v1/vpn-gateways/{gw}")).await.0,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn connection_defaults_and_psk_redaction() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let c = api.connection(&gw, &cgw, json!({})).await;
    let id = c["id"].as_str().unwrap();
    assert!(id.starts_with("vco-"));
    assert_eq!(c["status"], "creating");
    assert_eq!(c["connection_state"], "idle");
    assert_eq!(c["routing_mode"], "destination");
    assert_eq!(c["local_asn"], 45104);
    assert_eq!(
        c["health_check"],
        json!({"enabled": false, "source_ip": null, "destination_ip": null, "interval_s": 3, "retries": 3, "switch_route": true})
    );
    let t0 = &c["tunnels"][0];
    assert_eq!(t0["role"], "primary");
    assert_eq!(c["tunnels"][1]["role"], "secondary");
    assert_eq!(t0["gateway_address"], "192.0.2.1");
    assert_eq!(
        t0["ike"],
        json!({"version": "ikev2", "mode": "main", "encryption": "aes", "integrity": "sha1",
        "dh_group": "group2", "lifetime_s": 86400, "local_id": "192.0.2.1", "remote_id": "203.0.113.7"})
    );
    assert_eq!(
        t0["ipsec"],
        json!({"protocol": "esp", "encryption": "aes", "integrity": "sha1", "pfs": "group2", "lifetime_s": 86400})
    );
    assert_eq!(
        (t0["dpd"].clone(), t0["nat_traversal"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(
        (t0["dpd_interval_s"].clone(), t0["dpd_timeout_s"].clone()),
        (json!(10), json!(130))
    );
    assert_eq!(t0["status"]["phase"], "idle");
    assert_eq!(t0["state"], "active");
    assert!(t0.get("pre_shared_key").is_none());

    let t0_id = t0["id"].as_str().unwrap();
    let t1_id = c["tunnels"][1]["id"].as_str().unwrap();
    let (_, t) = api
        .get(&format!(
            "/v1/vpn-connections/{id}/tunnels/{t1_id}?reveal=pre_shared_key"
        ))
        .await;
    let generated = t["pre_shared_key"].as_str().unwrap().to_string();
    assert_eq!(generated.len(), 16);
    let (s, t) = api
        .get(&format!(
            "/v1/vpn-connections/{id}/tunnels/{t0_id}?reveal=pre_shared_key"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(t["pre_shared_key"], "Tunnel1Secret!");
    let (_, t) = api
        .get(&format!("/v1/vpn-connections/{id}/tunnels/{t0_id}"))
        .await;
    assert!(t.get("pre_shared_key").is_none());
    let (s, v) = api
        .get(&format!(
            "/v1/vpn-connections/{id}/tunnels/{t0_id}?reveal=everything"
        ))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("reveal"));
    let (s, _) = api
        .get(&format!("/v1/vpn-connections/{id}/tunnels/tun-nope"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // No other response carries a key.
    for uri in [
        format!("/v1/vpn-connections/{id}"),
        "/v1/vpn-connections".into(),
        format!("/v1/vpn-connections/{id}/logs"),
    ] {
        let (_, v) = api.get(&uri).await;
        let text = v.to_string();
        assert!(
            !text.contains("Tunnel1Secret!") && !text.contains(&generated),
            "{uri}: {text}"
        );
    }
    let (_, v) = api
        .patch(
            &format!("/v1/vpn-connections/{id}"),
            json!({"name": "renamed"}),
        )
        .await;
    assert!(!v.to_string().contains("Tunnel1Secret!"));
    let (_, v) = api
        .patch(
            &format!("/v1/vpn-connections/{id}/tunnels/{t0_id}"),
            json!({"pre_shared_key": "Changed-Key1"}),
        )
        .await;
    assert!(!v.to_string().contains("Changed-Key1"), "{v}");
    let (_, t) = api
        .get(&format!(
            "/v1/vpn-connections/{id}/tunnels/{t0_id}?reveal=pre_shared_key"
        ))
        .await;
    assert_eq!(t["pre_shared_key"], "Changed-Key1");
}

#[tokio::test]
async fn connection_patch_rules_and_updating_status() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let other_cgw = api.cgw("other", None).await;
    let c = api.connection(&gw, &cgw, json!({})).await;
    let id = c["id"].as_str().unwrap();
    let uri = format!("/v1/vpn-connections/{id}");
    let t1 = c["tunnels"][1]["id"].as_str().unwrap();

    let (s, v) = api
        .patch(
            &uri,
            json!({"name": "renamed", "effective_immediately": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "creating", "a rename renegotiates nothing");
    assert_eq!(v["tunnels"][0]["state"], "active");

    let (s, v) = api
        .patch(
            &uri,
            json!({"tunnels": [{}, {"ike": {"encryption": "aes256", "dh_group": "group14"}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "updating");
    assert_eq!(v["tunnels"][0]["state"], "active");
    assert_eq!(v["tunnels"][1]["state"], "updating");
    assert_eq!(v["tunnels"][1]["ike"]["encryption"], "aes256");
    assert_eq!(
        v["tunnels"][1]["ike"]["integrity"], "sha1",
        "merge keeps the rest"
    );
    assert_eq!(v["tunnels"][1]["id"], t1);

    let (s, v) = api
        .patch(
            &format!("{uri}/tunnels/{t1}"),
            json!({"dpd": false, "ike": {"version": "ikev1", "mode": "aggressive"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dpd"], false);
    assert_eq!(v["ike"]["mode"], "aggressive");

    let bad = [
        (
            uri.clone(),
            json!({"vpn_gateway_id": "vpn-other"}),
            "vpn_gateway_id",
        ),
        (uri.clone(), json!({"status": "running"}), "status"),
        (uri.clone(), json!({"tunnels": [{}]}), "tunnels"),
        (
            uri.clone(),
            json!({"tunnels": [{"customer_gateway_id": other_cgw}, {}]}),
            "tunnels[0].customer_gateway_id",
        ),
        (
            uri.clone(),
            json!({"tunnels": [{"state": "active"}, {}]}),
            "tunnels[0].state",
        ),
        (
            uri.clone(),
            json!({"local_subnets": ["10.0.1.0/24", "10.0.2.0/24"]}),
            "local_subnets",
        ),
        (
            format!("{uri}/tunnels/{t1}"),
            json!({"customer_gateway_id": other_cgw}),
            "customer_gateway_id",
        ),
        (
            format!("{uri}/tunnels/{t1}"),
            json!({"ike": {"version": "ikev2"}}),
            "ike.mode",
        ),
        (
            format!("{uri}/tunnels/{t1}"),
            json!({"role": "primary"}),
            "role",
        ),
    ];
    for (u, body, field) in bad {
        let (s, v) = api.patch(&u, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&v, "InvalidParameter", Some(field));
    }
    let (s, _) = api
        .patch("/v1/vpn-connections/vco-nope", json!({"name": "x"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Observed status written by the node shows in GET.
    let status = model::TunnelStatus {
        phase: model::TunnelPhase::Established,
        carrying_traffic: true,
        ..Default::default()
    };
    api.state
        .store
        .set_tunnel_status(c["tunnels"][0]["id"].as_str().unwrap(), &status)
        .await
        .unwrap();
    let (_, v) = api.get(&uri).await;
    assert_eq!(v["connection_state"], "established");
    assert_eq!(v["tunnels"][0]["status"]["phase"], "established");
    assert_eq!(v["tunnels"][0]["status"]["carrying_traffic"], true);
}

#[tokio::test]
async fn routes_policy_routes_and_route_table() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let a = api.connection(&gw, &cgw, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = api
        .connection(&gw, &cgw, json!({"routing_mode": "protected_flows", "local_subnets": ["10.0.1.0/24"], "remote_subnets": ["172.16.0.0/24"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let routes = format!("/v1/vpn-gateways/{gw}/routes");
    let (s, r1) = api
        .post(
            &routes,
            json!({"destination": "172.20.0.0/16", "next_hop": a, "publish": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r1}");
    assert!(r1["id"].as_str().unwrap().starts_with("vrt-"));
    assert_eq!(r1["weight"], 100);
    let (s, _) = api
        .post(
            &routes,
            json!({"destination": "172.20.0.0/16", "next_hop": b, "weight": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = api
        .post(
            &routes,
            json!({"destination": "172.20.0.0/16", "next_hop": a}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "Conflict", None);
    for (body, field) in [
        (
            json!({"destination": "172.21.0.0/16", "next_hop": a, "weight": 50}),
            "weight",
        ),
        (
            json!({"destination": "172.21.0.1/16", "next_hop": a}),
            "destination",
        ),
        (
            json!({"destination": "172.21.0.0/16", "next_hop": "vco-nope"}),
            "next_hop",
        ),
        (json!({"next_hop": a}), "destination"),
    ] {
        let (s, v) = api.post(&routes, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_error(&v, "InvalidParameter", Some(field));
    }
    let (s, _) = api
        .post(
            "/v1/vpn-gateways/vpn-nope/routes",
            json!({"destination": "172.21.0.0/16", "next_hop": a}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let policy = format!("/v1/vpn-gateways/{gw}/policy-routes");
    let (s, p) = api
        .post(&policy, json!({"source": "10.0.0.0/24", "destination": "192.168.50.0/24", "next_hop": a, "priority": 5}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert!(p["id"].as_str().unwrap().starts_with("vpr-"));
    let (s, v) = api
        .post(&policy, json!({"source": "10.0.0.0/24", "destination": "192.168.50.0/24", "next_hop": a, "priority": 101}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("priority"));

    let (_, list) = api.get(&routes).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (_, list) = api.get(&policy).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let (s, table) = api.get(&format!("/v1/vpn-gateways/{gw}/route-table")).await;
    assert_eq!(s, StatusCode::OK);
    let items = table["items"].as_array().unwrap();
    let origins: Vec<&str> = items
        .iter()
        .map(|e| e["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["static", "static", "policy", "auto"]);
    assert_eq!(items[0]["state"], "active");
    assert_eq!(items[0]["published"], true);
    assert_eq!(items[1]["state"], "standby");
    assert!(items[1]["reason"].as_str().unwrap().contains(&a));
    assert_eq!(items[2]["priority"], 5);
    assert_eq!(items[2]["source"], "10.0.0.0/24");
    assert_eq!(items[3]["next_hop"], b.as_str());
    assert_eq!(items[3]["destination"], "172.16.0.0/24");

    // A connection that is a next hop cannot go; its routes first.
    let (s, v) = api.delete(&format!("/v1/vpn-connections/{a}")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "Conflict", None);
    let r1_id = r1["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("{routes}/{r1_id}")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.delete(&format!("{routes}/{r1_id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete(&format!("{routes}/{r1_id}")).await.0,
        StatusCode::NOT_FOUND
    );
    let p_id = p["id"].as_str().unwrap();
    assert_eq!(
        api.delete(&format!("{policy}/{p_id}")).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, table) = api.get(&format!("/v1/vpn-gateways/{gw}/route-table")).await;
    assert_eq!(table["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn client_token_makes_posts_idempotent() {
    let api = Api::new();
    let body = json!({"name": "hq", "ipsec_addresses": ["192.0.2.1"], "local_networks": ["10.0.0.0/16"], "client_token": "abc-1"});
    let (s1, v1) = api.post("/v1/vpn-gateways", body.clone()).await;
    let (s2, v2) = api.post("/v1/vpn-gateways", body.clone()).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(v1["id"], v2["id"]);
    let (_, list) = api.get("/v1/vpn-gateways").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let mut other = body.clone();
    other["name"] = json!("different");
    let (s, v) = api.post("/v1/vpn-gateways", other).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "IdempotentParameterMismatch", Some("client_token"));

    let cgw = api.cgw("branch", None).await;
    let gw = v1["id"].as_str().unwrap();
    let conn = json!({"name": "c", "vpn_gateway_id": gw, "customer_gateway_id": cgw, "client_token": "conn-1"});
    let (_, c1) = api.post("/v1/vpn-connections", conn.clone()).await;
    let (s, c2) = api.post("/v1/vpn-connections", conn.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(c1["id"], c2["id"]);
    assert_eq!(c1["tunnels"][0]["id"], c2["tunnels"][0]["id"]);
    let (_, list) = api.get("/v1/vpn-connections").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let route =
        json!({"destination": "172.16.0.0/16", "next_hop": c1["id"], "client_token": "r-1"});
    let (_, r1) = api
        .post(&format!("/v1/vpn-gateways/{gw}/routes"), route.clone())
        .await;
    let (_, r2) = api
        .post(&format!("/v1/vpn-gateways/{gw}/routes"), route)
        .await;
    assert_eq!(r1["id"], r2["id"]);

    // Once the first result is gone, a retry with the token is a conflict.
    let cid = c1["id"].as_str().unwrap();
    api.delete(&format!(
        "/v1/vpn-gateways/{gw}/routes/{}",
        r1["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(
        api.delete(&format!("/v1/vpn-connections/{cid}")).await.0,
        StatusCode::NO_CONTENT
    );
    let (s, v) = api.post("/v1/vpn-connections", conn).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "Conflict", Some("client_token"));
}

#[tokio::test]
async fn lists_page_and_filter() {
    let api = Api::new();
    for i in 0..5 {
        let env = if i < 2 { "prod" } else { "dev" };
        let (s, _) = api
            .post(
                "/v1/vpn-gateways",
                json!({"name": format!("{env}-gw-{i}"), "ipsec_addresses": ["192.0.2.1"],
                "local_networks": ["10.0.0.0/16"], "tags": {"env": env}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let mut names = vec![];
    let mut uri = "/v1/vpn-gateways?page_size=2".to_string();
    let mut pages = 0;
    loop {
        let (s, v) = api.get(&uri).await;
        assert_eq!(s, StatusCode::OK);
        pages += 1;
        names.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["name"].as_str().unwrap().to_string()),
        );
        match v["next_page_token"].as_str() {
            Some(t) => uri = format!("/v1/vpn-gateways?page_size=2&page_token={t}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        ["prod-gw-0", "prod-gw-1", "dev-gw-2", "dev-gw-3", "dev-gw-4"]
    );
    let (_, v) = api.get("/v1/vpn-gateways?name=PROD").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let (_, v) = api.get("/v1/vpn-gateways?tag.env=dev&name=gw-4").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    for (uri, field) in [
        ("/v1/vpn-gateways?page_size=0", "page_size"),
        ("/v1/vpn-gateways?page_size=x", "page_size"),
        ("/v1/vpn-gateways?page_token=bogus", "page_token"),
        ("/v1/vpn-gateways?colour=red", "colour"),
    ] {
        let (s, v) = api.get(uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_error(&v, "InvalidParameter", Some(field));
    }
    let gw = api.gateway("other").await;
    let cgw = api.cgw("branch", None).await;
    api.connection(&gw, &cgw, json!({})).await;
    let (_, v) = api
        .get(&format!("/v1/vpn-connections?vpn_gateway_id={gw}"))
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (_, v) = api.get("/v1/vpn-connections?vpn_gateway_id=vpn-none").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    let (_, v) = api.get("/v1/customer-gateways?name=bran").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn logs_record_api_events() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let c = api.connection(&gw, &cgw, json!({})).await;
    let id = c["id"].as_str().unwrap();
    api.patch(
        &format!("/v1/vpn-connections/{id}"),
        json!({"tunnels": [{"dpd": false}, {}]}),
    )
    .await;
    let (s, v) = api.get(&format!("/v1/vpn-connections/{id}/logs")).await;
    assert_eq!(s, StatusCode::OK);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["event"], "created");
    assert_eq!(items[1]["event"], "config_changed");
    assert!(
        items[1]["message"]
            .as_str()
            .unwrap()
            .contains(c["tunnels"][0]["id"].as_str().unwrap())
    );
    for key in ["at", "tunnel_id", "level", "event", "message"] {
        assert!(items[0].get(key).is_some(), "{key}");
    }
    let (_, v) = api
        .get(&format!("/v1/vpn-connections/{id}/logs?limit=1"))
        .await;
    assert_eq!(v["items"][0]["event"], "config_changed");
    let (_, v) = api
        .get(&format!(
            "/v1/vpn-connections/{id}/logs?since=2000-01-01T00:00:00Z&limit=1"
        ))
        .await;
    assert_eq!(v["items"][0]["event"], "created");
    let (s, v) = api
        .get(&format!("/v1/vpn-connections/{id}/logs?since=yesterday"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("since"));
    let (s, _) = api.get("/v1/vpn-connections/vco-none/logs").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_openapi_and_change_notifications() {
    let api = Api::new();
    let mut changes = api.state.subscribe();
    let before = *changes.borrow_and_update();
    api.gateway("hq").await;
    assert!(changes.has_changed().unwrap());
    assert_ne!(*changes.borrow_and_update(), before);

    let (s, text) = api.raw(Method::GET, "/metrics", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        text.contains("vpngw_resources{kind=\"vpn_gateway\"} 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE vpngw_resources gauge"));
    assert!(text.contains("process_start_time_seconds"));

    struct Extra;
    impl api::MetricsSource for Extra {
        fn render(&self, out: &mut String) {
            out.push_str("vpngw_node_extra{node=\"n1\"} 1\n");
        }
    }
    api.state.add_metrics_source(Arc::new(Extra));
    let (_, text) = api.raw(Method::GET, "/metrics", Some(TOKEN), None).await;
    assert!(text.contains("vpngw_node_extra{node=\"n1\"} 1"));

    let (s, doc) = api.get("/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/vpn-gateways",
        "/v1/vpn-gateways/{id}",
        "/v1/vpn-gateways/{id}/routes",
        "/v1/vpn-gateways/{id}/routes/{route_id}",
        "/v1/vpn-gateways/{id}/policy-routes",
        "/v1/vpn-gateways/{id}/route-table",
        "/v1/customer-gateways",
        "/v1/customer-gateways/{id}",
        "/v1/vpn-connections",
        "/v1/vpn-connections/{id}",
        "/v1/vpn-connections/{id}/tunnels/{tunnel_id}",
        "/v1/vpn-connections/{id}/logs",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(doc["components"]["schemas"]["VpnConnection"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(doc, serde_json::to_value(api::openapi()).unwrap());
}

impl Api {
    /// GET with the token; (status, content type, body text).
    async fn text(&self, uri: &str) -> (StatusCode, String, String) {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let content_type = header("content-type");
        if status == StatusCode::OK {
            assert_eq!(header("cache-control"), "no-store", "{uri}");
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }
}

#[tokio::test]
async fn peer_config_has_both_tunnels_keys_and_swapped_addresses() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let conn = api.connection(&gw, &cgw, json!({})).await;
    let id = conn["id"].as_str().unwrap();
    let t1 = conn["tunnels"][1]["id"].as_str().unwrap();
    let (_, t1v) = api
        .get(&format!(
            "/v1/vpn-connections/{id}/tunnels/{t1}?reveal=pre_shared_key"
        ))
        .await;
    let psk2 = t1v["pre_shared_key"].as_str().unwrap().to_string();
    assert_eq!(psk2.len(), 16);

    // Default format: swanctl.
    let (s, ct, text) = api
        .text(&format!("/v1/vpn-connections/{id}/peer-config"))
        .await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert!(
        text.contains("connections {") && text.contains("secrets {"),
        "{text}"
    );
    // Both tunnels, each with its own key.
    assert!(text.contains("secret = \"Tunnel1Secret!\""), "{text}");
    // The generated key may hold `\` or `"`, which swanctl.conf escapes inside quotes.
    let psk2_quoted = psk2.replace('\\', "\\\\").replace('"', "\\\"");
    assert!(
        text.contains(&format!("secret = \"{psk2_quoted}\"")),
        "{text}"
    );
    assert!(text.contains(conn["tunnels"][0]["id"].as_str().unwrap()));
    assert!(text.contains(t1));
    // The peer's view: local is the customer gateway, remote the gateway's addresses.
    assert_eq!(
        text.matches("local_addrs = 203.0.113.7").count(),
        2,
        "{text}"
    );
    assert!(text.contains("remote_addrs = 192.0.2.1"), "{text}");
    assert!(text.contains("remote_addrs = 192.0.2.2"), "{text}");
    assert!(!text.contains("local_addrs = 192.0.2."), "{text}");
    let (s, _, explicit) = api
        .text(&format!(
            "/v1/vpn-connections/{id}/peer-config?format=swanctl"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(explicit, text);

    // Every format renders; json is JSON with its media type.
    let (_, formats) = api.get("/v1/peer-config-formats").await;
    let names: Vec<&str> = formats["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 9);
    for name in names.iter().filter(|n| **n != "frr") {
        let (s, ct, text) = api
            .text(&format!(
                "/v1/vpn-connections/{id}/peer-config?format={name}"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{name}: {text}");
        assert!(text.contains("Tunnel1Secret!"), "{name}: {text}");
        if *name == "json" {
            assert_eq!(ct, "application/json");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v.is_object());
        } else {
            assert!(ct.starts_with("text/plain"), "{name}: {ct}");
        }
    }

    // The key appears in this output only: the connection itself never shows it.
    let (_, shown) = api.get(&format!("/v1/vpn-connections/{id}")).await;
    assert!(!shown.to_string().contains("Tunnel1Secret!"));
    assert!(!shown.to_string().contains(&psk2));
}

#[tokio::test]
async fn peer_config_errors() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let conn = api.connection(&gw, &cgw, json!({})).await;
    let id = conn["id"].as_str().unwrap();

    // No token, wrong token.
    let uri = format!("/v1/vpn-connections/{id}/peer-config");
    let (s, body) = api.raw(Method::GET, &uri, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&serde_json::from_str(&body).unwrap(), "Unauthorized", None);
    assert!(!body.contains("Tunnel1Secret!"));
    let (s, _) = api.raw(Method::GET, &uri, Some("wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = api
        .raw(Method::GET, "/v1/peer-config-formats", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Unknown connection.
    let (s, v) = api.get("/v1/vpn-connections/vco-nope/peer-config").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "NotFound", None);

    // Unknown format: 400 naming the field and listing the allowed ones.
    let (s, v) = api.get(&format!("{uri}?format=cisco")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("format"));
    let m = v["error"]["message"].as_str().unwrap();
    for name in [
        "swanctl",
        "ipsec-conf",
        "frr",
        "json",
        "cisco-ios",
        "juniper-srx",
        "huawei-vrp",
        "fortigate",
        "paloalto",
    ] {
        assert!(m.contains(name), "{m}");
    }
    // Unknown query parameter.
    let (s, v) = api.get(&format!("{uri}?fromat=json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "InvalidParameter", Some("fromat"));

    // frr without BGP: a conflict with the connection's settings.
    let (s, v) = api.get(&format!("{uri}?format=frr")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "Conflict", Some("format"));
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("BGP is not enabled") && m.contains("swanctl"),
        "{m}"
    );

    // With BGP, frr renders the neighbors.
    let bgp_cgw = api.cgw("bgp-branch", Some(json!(65010))).await;
    let bgp = api
        .connection(
            &gw,
            &bgp_cgw,
            json!({"enable_bgp": true, "tunnels": [
                {"customer_gateway_id": bgp_cgw, "bgp": {"tunnel_cidr": "169.254.10.0/30", "local_ip": "169.254.10.1"}},
                {"customer_gateway_id": bgp_cgw, "bgp": {"tunnel_cidr": "169.254.11.0/30", "local_ip": "169.254.11.1"}}
            ]}),
        )
        .await;
    let (s, ct, text) = api
        .text(&format!(
            "/v1/vpn-connections/{}/peer-config?format=frr",
            bgp["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(ct.starts_with("text/plain"));
    assert!(
        text.contains("router bgp 65010") && text.contains("169.254.10.1"),
        "{text}"
    );

    // The formats list.
    let (s, v) = api.get("/v1/peer-config-formats").await;
    assert_eq!(s, StatusCode::OK);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items[0]["name"], "swanctl");
    assert_eq!(items[3]["name"], "json");
    assert_eq!(items[3]["content_type"], "application/json");
    assert!(
        items
            .iter()
            .all(|f| f["title"].is_string() && f["targets"].is_string())
    );

    // Both endpoints are in the OpenAPI document.
    let (_, doc) = api.get("/v1/openapi.json").await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/vpn-connections/{id}/peer-config"));
    assert!(paths.contains_key("/v1/peer-config-formats"));
    let params = doc["paths"]["/v1/vpn-connections/{id}/peer-config"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params.iter().any(|p| p["name"] == "format"));
}

#[tokio::test]
async fn ikev1_cannot_use_gcm_for_phase1() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let body = |ike: Value, ipsec: Value| {
        json!({"name": "c", "vpn_gateway_id": gw, "tunnels": [
            {"customer_gateway_id": cgw, "ike": ike, "ipsec": ipsec},
            {"customer_gateway_id": cgw}
        ]})
    };
    for enc in ["aes-gcm-128", "aes-gcm-256"] {
        let (s, v) = api
            .post(
                "/v1/vpn-connections",
                body(json!({"version": "ikev1", "encryption": enc}), json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_error(&v, "InvalidParameter", Some("tunnels[0].ike.encryption"));
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains(enc) && m.contains("aes256") && m.contains("ikev2"),
            "{m}"
        );
    }
    // ESP may use GCM with IKEv1; IKEv2 may use it for the IKE SA.
    let (s, v) = api
        .post(
            "/v1/vpn-connections",
            body(
                json!({"version": "ikev1", "encryption": "aes256"}),
                json!({"encryption": "aes-gcm-256"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap();
    let t0 = v["tunnels"][0]["id"].as_str().unwrap();
    let (s, v) = api
        .post(
            "/v1/vpn-connections",
            body(json!({"encryption": "aes-gcm-128"}), json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A PATCH that would make it IKEv1 + GCM is refused too, naming the tunnel's field.
    let (s, v) = api
        .patch(
            &format!("/v1/vpn-connections/{id}/tunnels/{t0}"),
            json!({"ike": {"encryption": "aes-gcm-128"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_error(&v, "InvalidParameter", Some("ike.encryption"));
}

#[tokio::test]
async fn metrics_per_tunnel_from_the_stored_status_and_events() {
    use model::{ChildSaStatus, LogEntry, LogLevel, TunnelPhase, TunnelStatus};
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let conn = api.connection(&gw, &cgw, json!({})).await;
    let id = conn["id"].as_str().unwrap();
    let t0 = conn["tunnels"][0]["id"].as_str().unwrap();
    let t1 = conn["tunnels"][1]["id"].as_str().unwrap();

    // Before any node reported: the series exist, at zero.
    let (_, text) = api.raw(Method::GET, "/metrics", Some(TOKEN), None).await;
    let l0 = format!("gateway=\"{gw}\",connection=\"{id}\",tunnel=\"{t0}\",role=\"primary\"");
    let l1 = format!("gateway=\"{gw}\",connection=\"{id}\",tunnel=\"{t1}\",role=\"secondary\"");
    for line in [
        "# TYPE vpngw_tunnel_up gauge".to_string(),
        "# TYPE vpngw_tunnel_bytes_total counter".to_string(),
        "# TYPE vpngw_tunnel_packets_total counter".to_string(),
        "# TYPE vpngw_ike_negotiations_total counter".to_string(),
        format!("vpngw_tunnel_up{{{l0}}} 0"),
        format!("vpngw_tunnel_bytes_total{{{l0},direction=\"in\"}} 0"),
        format!("vpngw_ike_negotiations_total{{{l1},phase=\"phase1\",result=\"failure\"}} 0"),
        format!("vpngw_gateway_up{{gateway=\"{gw}\"}} 0"),
    ] {
        assert!(text.contains(&line), "missing {line}:\n{text}");
    }

    // What a node stores: tunnel 1 up with two Child SAs (make-before-break), tunnel 2
    // failing; negotiation events in the log.
    let child = |b_in, p_in, b_out, p_out| ChildSaStatus {
        spi_in: "c0000001".into(),
        spi_out: "d0000001".into(),
        local_ts: vec!["0.0.0.0/0".into()],
        remote_ts: vec!["0.0.0.0/0".into()],
        algorithms: "aes128-sha1".into(),
        bytes_in: b_in,
        bytes_out: b_out,
        packets_in: p_in,
        packets_out: p_out,
    };
    let status = TunnelStatus {
        phase: TunnelPhase::Established,
        carrying_traffic: true,
        child_sas: vec![child(1000, 10, 2000, 20), child(500, 5, 0, 0)],
        ..Default::default()
    };
    api.state
        .store
        .set_tunnel_status(t0, &status)
        .await
        .unwrap();
    let failed = TunnelStatus {
        phase: TunnelPhase::Phase1Failed,
        ..Default::default()
    };
    api.state
        .store
        .set_tunnel_status(t1, &failed)
        .await
        .unwrap();
    for (tunnel, event) in [
        (t0, "phase1_established"),
        (t0, "phase2_established"),
        (t0, "phase1_established"),
        (t0, "phase2_established"),
        (t0, "ike_rekeyed"),
        (t1, "phase1_failed"),
        (t1, "phase1_failed"),
        (t1, "phase1_failed"),
    ] {
        let entry = LogEntry {
            at: chrono::Utc::now(),
            tunnel_id: Some(tunnel.into()),
            level: LogLevel::Info,
            event: event.into(),
            message: "m".into(),
        };
        api.state.store.append_log(id, &entry).await.unwrap();
    }
    api::apply_without_node(&api.state).await.unwrap();

    let (_, text) = api.raw(Method::GET, "/metrics", Some(TOKEN), None).await;
    for line in [
        format!("vpngw_tunnel_up{{{l0}}} 1"),
        format!("vpngw_tunnel_up{{{l1}}} 0"),
        format!("vpngw_tunnel_bytes_total{{{l0},direction=\"in\"}} 1500"),
        format!("vpngw_tunnel_bytes_total{{{l0},direction=\"out\"}} 2000"),
        format!("vpngw_tunnel_packets_total{{{l0},direction=\"in\"}} 15"),
        format!("vpngw_tunnel_packets_total{{{l0},direction=\"out\"}} 20"),
        format!("vpngw_tunnel_bytes_total{{{l1},direction=\"in\"}} 0"),
        format!("vpngw_ike_negotiations_total{{{l0},phase=\"phase1\",result=\"success\"}} 2"),
        format!("vpngw_ike_negotiations_total{{{l0},phase=\"phase2\",result=\"success\"}} 2"),
        format!("vpngw_ike_negotiations_total{{{l0},phase=\"phase1\",result=\"failure\"}} 0"),
        format!("vpngw_ike_negotiations_total{{{l1},phase=\"phase1\",result=\"failure\"}} 3"),
        format!("vpngw_gateway_up{{gateway=\"{gw}\"}} 1"),
        format!("vpngw_gateway_tunnels_established{{gateway=\"{gw}\"}} 1"),
    ] {
        assert!(text.contains(&line), "missing {line}:\n{text}");
    }
    // Every sample line parses as `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn without_a_node_the_controller_applies_its_desired_state() {
    let api = Api::new();
    let gw = api.gateway("hq").await;
    let cgw = api.cgw("branch", None).await;
    let conn = api.connection(&gw, &cgw, json!({})).await;
    let id = conn["id"].as_str().unwrap().to_string();
    let t0 = conn["tunnels"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(conn["status"], "creating");
    let (_, g) = api.get(&format!("/v1/vpn-gateways/{gw}")).await;
    assert_eq!(g["status"], "creating");

    // One pass, deterministic.
    api::apply_without_node(&api.state).await.unwrap();
    let (_, g) = api.get(&format!("/v1/vpn-gateways/{gw}")).await;
    assert_eq!(g["status"], "running", "{g}");
    assert_eq!(g["status_reason"], api::NO_NODE_REASON);
    assert!(api::NO_NODE_REASON.contains("no gateway node attached"));
    let (_, c) = api.get(&format!("/v1/vpn-connections/{id}")).await;
    assert_eq!(c["status"], "running", "{c}");
    // Tunnel status is a node's observation: untouched.
    assert_eq!(c["tunnels"][0]["status"]["phase"], "idle");

    // A change: updating, then applied again.
    let (s, t) = api
        .patch(
            &format!("/v1/vpn-connections/{id}/tunnels/{t0}"),
            json!({"pre_shared_key": "Changed-Key1"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["state"], "updating");
    api::apply_without_node(&api.state).await.unwrap();
    let (_, c) = api.get(&format!("/v1/vpn-connections/{id}")).await;
    assert_eq!(c["status"], "running", "{c}");
    assert_eq!(c["tunnels"][0]["state"], "active", "{c}");

    // The long-running form reacts to changes made through the API.
    let task = tokio::spawn(api::run_without_node(api.state.clone()));
    let gw2 = api.gateway("branch-office").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, g) = api.get(&format!("/v1/vpn-gateways/{gw2}")).await;
        if g["status"] == "running" {
            assert_eq!(g["status_reason"], api::NO_NODE_REASON);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway stayed {}",
            g["status"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    task.abort();
}

#[test]
fn admin_token_is_created_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t1 = api::load_or_create_admin_token(dir.path()).unwrap();
    assert!(t1.len() >= 32);
    let path = dir.path().join("admin.token");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let t2 = api::load_or_create_admin_token(dir.path()).unwrap();
    assert_eq!(t1, t2);
}
