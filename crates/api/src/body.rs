//! Request bodies and query strings, with serde errors turned into API errors that name
//! the field.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use store::{ClientToken, ClientTokenRecord, StoreError};

use crate::{ApiError, ApiResult, AppState};

/// A JSON object body. Anything else (no body, bad JSON, an array) is a 400 in the API's
/// error shape, unlike axum's plain-text rejections.
pub struct JsonBody(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::invalid("", format!("cannot read the request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid(
                "",
                "the request needs a JSON object body",
            ));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(JsonBody(m)),
            Ok(_) => Err(ApiError::invalid("", "the body must be a JSON object")),
            Err(e) => Err(ApiError::invalid(
                "",
                format!("the body is not valid JSON: {e}"),
            )),
        }
    }
}

/// Deserializes with the JSON path of any failure: `tunnels[0].ike.encryption`.
pub fn parse<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.inner().to_string();
        // A missing field is reported at its parent; name the field itself. (An unknown
        // field's path already ends with its name.)
        let field = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(|name| {
                if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                }
            })
            .unwrap_or(path);
        ApiError::invalid(field, message)
    })
}

/// Rejects read-only fields in a create or update body with a clear message.
pub fn reject_read_only(
    body: &serde_json::Map<String, Value>,
    prefix: &str,
    fields: &[&str],
) -> ApiResult<()> {
    for f in fields {
        if body.contains_key(*f) {
            let field = if prefix.is_empty() {
                f.to_string()
            } else {
                format!("{prefix}.{f}")
            };
            return Err(ApiError::invalid(field, "is read-only"));
        }
    }
    Ok(())
}

/// Takes `client_token` out of a POST body and checks it.
pub fn take_client_token(body: &mut serde_json::Map<String, Value>) -> ApiResult<Option<String>> {
    match body.remove("client_token") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(Some(s))
        }
        Some(_) => Err(ApiError::invalid(
            "client_token",
            "must be a string of 1–64 printable ASCII characters without spaces",
        )),
    }
}

/// Runs an idempotent create: a `client_token` seen within 24 h (in the same scope)
/// returns the resource its first request created, and a different body with the same
/// token is a 409.
pub async fn idempotent_create<T, C, CF, G, GF>(
    state: &AppState,
    scope: String,
    token: Option<String>,
    body: &serde_json::Map<String, Value>,
    create: C,
    fetch: G,
) -> ApiResult<T>
where
    C: FnOnce(Option<ClientToken>) -> CF,
    CF: Future<Output = ApiResult<T>>,
    G: Fn(String) -> GF,
    GF: Future<Output = Result<T, StoreError>>,
{
    let Some(token) = token else {
        return create(None).await;
    };
    let request_hash = body_hash(body);
    let now = Utc::now();
    if let Some(first) = state.store.client_token(&scope, &token, now).await? {
        return replay(first, &request_hash, fetch).await;
    }
    let ct = ClientToken {
        scope,
        token,
        request_hash: request_hash.clone(),
        created_at: now,
    };
    match create(Some(ct)).await {
        Err(ApiError {
            token_taken: Some(first),
            ..
        }) => replay(*first, &request_hash, fetch).await,
        other => other,
    }
}

async fn replay<T, G, GF>(first: ClientTokenRecord, request_hash: &str, fetch: G) -> ApiResult<T>
where
    G: Fn(String) -> GF,
    GF: Future<Output = Result<T, StoreError>>,
{
    if first.token.request_hash != request_hash {
        return Err(ApiError::token_mismatch());
    }
    match fetch(first.resource_id.clone()).await {
        Ok(v) => Ok(v),
        Err(StoreError::NotFound { .. }) => Err(ApiError::conflict_field(
            "client_token",
            format!(
                "this client_token created {} which has since been deleted: use a new token",
                first.resource_id
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// SHA-256 of the canonical body (object keys sorted at every level), so that a key
/// inside never has to be stored to tell requests apart.
fn body_hash(body: &serde_json::Map<String, Value>) -> String {
    let mut canonical = String::new();
    write_canonical(&Value::Object(body.clone()), &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = m.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The query string of a list: `name=`, `tag.<key>=<value>`, `page_size=`,
/// `page_token=`, and the extra keys a collection allows.
pub fn list_query(
    pairs: Vec<(String, String)>,
    extra: &[&str],
) -> ApiResult<(store::ListQuery, Vec<(String, String)>)> {
    let mut q = store::ListQuery::default();
    let mut rest = Vec::new();
    for (k, v) in pairs {
        if let Some(tag) = k.strip_prefix("tag.") {
            q.tags.push((tag.to_string(), v));
            continue;
        }
        match k.as_str() {
            "name" => q.name_contains = Some(v),
            "page_token" => q.page_token = Some(v),
            "page_size" => {
                q.page_size = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=store::ListQuery::MAX_PAGE_SIZE).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid("page_size", format!("must be 1–1000, got `{v}`"))
                    })?;
            }
            k if extra.contains(&k) => rest.push((k.to_string(), v)),
            _ => {
                let mut allowed = vec!["name", "tag.<key>", "page_size", "page_token"];
                allowed.extend_from_slice(extra);
                return Err(ApiError::invalid(
                    k,
                    format!("unknown query parameter; allowed: {}", allowed.join(", ")),
                ));
            }
        }
    }
    Ok((q, rest))
}

/// A query string as key/value pairs; a malformed one is a 400.
pub type Pairs =
    Result<axum::extract::Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

pub fn pairs(p: Pairs) -> ApiResult<Vec<(String, String)>> {
    p.map(|q| q.0)
        .map_err(|e| ApiError::invalid("", format!("malformed query string: {e}")))
}

/// Merges a PATCH body onto the current spec (RFC 7396) and parses the result.
pub fn merged<T: serde::Serialize + DeserializeOwned>(
    current: &T,
    patch: serde_json::Map<String, Value>,
) -> ApiResult<T> {
    let mut base = serde_json::to_value(current)
        .map_err(|e| ApiError::internal(format!("encoding the current resource: {e}")))?;
    model::merge_patch(&mut base, &Value::Object(patch));
    parse(base)
}
