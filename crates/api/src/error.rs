use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::FieldError;
use serde::Serialize;
use store::{ClientTokenRecord, StoreError};
use utoipa::ToSchema;

/// Every failure of the API, shown to clients as
/// `{"error": {"code", "message", "field"}}` with the matching HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Set when the store refused a create because its `client_token` was already used:
    /// the handler replays the first result instead of failing.
    pub(crate) token_taken: Option<Box<ClientTokenRecord>>,
}

/// The error document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `InvalidParameter`, `Unauthorized`, `NotFound`, `Conflict`,
    /// `IdempotentParameterMismatch` or `InternalError`.
    pub code: String,
    pub message: String,
    /// JSON path of the offending field, e.g. `tunnels[0].pre_shared_key`.
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            token_taken: None,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        ApiError {
            field: (!field.is_empty()).then_some(field),
            ..Self::new(StatusCode::BAD_REQUEST, "InvalidParameter", message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    pub fn conflict_field(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.to_string()),
            ..Self::conflict(message)
        }
    }

    pub fn token_mismatch() -> Self {
        ApiError {
            field: Some("client_token".into()),
            ..Self::new(
                StatusCode::CONFLICT,
                "IdempotentParameterMismatch",
                "this client_token was used within the last 24 h for a different request: use a new token for a new request",
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::ClientTokenTaken(rec) => ApiError {
                token_taken: Some(Box::new(rec)),
                ..ApiError::conflict("client_token already used")
            },
            StoreError::InvalidPageToken => ApiError::invalid(
                "page_token",
                "is not a page token from this API: pass next_page_token of the previous page",
            ),
            StoreError::Backend(m) => {
                tracing::error!(error = %m, "store failure");
                ApiError::internal("internal storage error; see the server log")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
