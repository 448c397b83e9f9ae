//! The one error shape of both HTTP APIs, `{"error": {"code", "message"}}`, the one
//! rejection handler that turns warp's own rejections into it too, and the filter that
//! reads a refused request's body before it is answered ([`drain_refused_body`]).
//!
//! How a refusal is chosen when several routes refused one request (warp keeps every
//! route's rejection): our own [`ApiError`] first (a route that got as far as its handler
//! knows best), then what is wrong with the body, the headers or the query string of a
//! route whose path and method matched, and only then 405: a wrong method is the answer
//! only when no route of the path takes the request's method. An unknown path is 404.

use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt as _;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// The `Allow` header of a 405: the methods the path takes, e.g. `DELETE, GET, PUT`.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            allow: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}; see the server log"),
        )
    }
}

impl warp::reject::Reject for ApiError {}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(value) = warp::http::HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        if let Some(allow) = &self.allow {
            if let Ok(value) = warp::http::HeaderValue::from_str(allow) {
                response.headers_mut().insert("allow", value);
            }
        }
        response
    }
}

/// A path the service documents, asked with a method none of its routes take: 405 with
/// `Allow`, unless a route of the path that does take the method refused the request for
/// something more specific. Raised by a service's last-resort filter, which knows its
/// routes (the hub's comes from its OpenAPI document).
#[derive(Debug, Clone)]
pub struct WrongMethod {
    pub method: String,
    /// The methods the path takes, in `Allow` form: `DELETE, GET, PUT`.
    pub allow: String,
}

impl warp::reject::Reject for WrongMethod {}

/// What is wrong with a request's query string, parameter by parameter (unknown names,
/// missing required ones, values not of their type), for the 422 when a route refused
/// the query. Raised by the same last-resort filter as [`WrongMethod`].
#[derive(Debug, Clone)]
pub struct QueryProblems {
    pub message: String,
}

impl warp::reject::Reject for QueryProblems {}

/// Every rejection, ours or warp's, becomes the JSON error with the right status, in the
/// order of the module's documentation: a handler's own error, then the request's body,
/// headers and query, then the method, then "no such route".
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(refusal(&rejection).into_response())
}

/// The error [`recover`] answers with for `rejection`.
pub fn refusal(rejection: &Rejection) -> ApiError {
    if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        no_such_route()
    } else if let Some(e) = rejection.find::<warp::reject::PayloadTooLarge>() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{e}: send a smaller body (see /openapi.json for this route's limit)"),
        )
    } else if let Some(e) = rejection.find::<warp::reject::UnsupportedMediaType>() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        )
    } else if let Some(e) = rejection.find::<warp::reject::LengthRequired>() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            format!("{e}: send the body with a Content-Length"),
        )
    } else if let Some(e) = rejection.find::<warp::body::BodyDeserializeError>() {
        ApiError::bad_request(format!("request body: {e}"))
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(e.to_string())
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some()
        || rejection.find::<QueryProblems>().is_some()
    {
        match rejection.find::<QueryProblems>() {
            Some(problems) => {
                ApiError::unprocessable(format!("invalid query string: {}", problems.message))
            }
            None => ApiError::unprocessable(
                "invalid query string: an unknown parameter or a value not of its type; see /openapi.json for the parameters this route takes",
            ),
        }
    } else if let Some(wrong) = rejection.find::<WrongMethod>() {
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "this path does not take {}; it takes {}",
                wrong.method, wrong.allow
            ),
        );
        error.allow = Some(wrong.allow.clone());
        error
    } else if let Some(e) = rejection.find::<warp::reject::MethodNotAllowed>() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{e}; see /openapi.json for the methods each path takes"),
        )
    } else if rejection.find::<DrainedBody>().is_some() {
        no_such_route()
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unhandled rejection",
        )
    }
}

fn no_such_route() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json for the routes this service serves")
}

/// At most this much of a refused request's body is read (and thrown away) before the
/// refusal is sent: 1 MiB, 16 times the hub's 64 KiB body limit. A client that does not
/// wait for `100 Continue` (Python's urllib, many SDKs) is still writing its body when a
/// route refuses it on its headers (413, 401, 404, ...); answering and closing then
/// resets the connection under it, and it sees a broken pipe instead of the JSON error.
/// A body declared larger than this is not read: the refusal is sent at once and the
/// connection closed.
pub const DRAIN_LIMIT_BYTES: u64 = 1024 * 1024;

/// How long reading a refused body may take before the refusal is sent anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Marks a refused request whose body was read; it never decides the answer.
#[derive(Debug)]
struct DrainedBody;

impl warp::reject::Reject for DrainedBody {}

/// Whether a refused request's body should be read before the refusal: it has one, the
/// client is not waiting for `100 Continue` (then it sends nothing until told to, and is
/// not told), and it is declared within [`DRAIN_LIMIT_BYTES`] (a chunked body is read up
/// to that bound).
fn worth_draining(headers: &warp::http::HeaderMap) -> bool {
    let continue_expected = headers
        .get_all("expect")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if continue_expected {
        return false;
    }
    match headers.get("content-length") {
        Some(length) => length
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > 0 && l <= DRAIN_LIMIT_BYTES),
        None => headers.contains_key("transfer-encoding"),
    }
}

/// Put after every route, before [`recover`] (`routes.or(drain_refused_body()).recover(recover)`):
/// it is reached only when every route refused the request, reads what is left of its body
/// (bounded by [`DRAIN_LIMIT_BYTES`] and [`DRAIN_TIMEOUT`]) and refuses too, so the answer
/// is the routes' refusal, sent once the client has finished writing. It never succeeds.
pub fn drain_refused_body() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(|headers: warp::http::HeaderMap| async move {
            if worth_draining(&headers) {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(|body| async move {
            let read = tokio::time::timeout(DRAIN_TIMEOUT, discard(body)).await;
            if read.is_err() {
                tracing::debug!("a refused request's body did not arrive within {DRAIN_TIMEOUT:?}");
            }
            Err::<Response, _>(warp::reject::custom(DrainedBody))
        })
        // The body may be gone already (a route read it, then refused): nothing to do.
        .or_else(|rejection: Rejection| async move {
            if rejection.find::<DrainedBody>().is_some() {
                Err(rejection)
            } else {
                Err(warp::reject::not_found())
            }
        })
}

/// Reads `body` to its end or to [`DRAIN_LIMIT_BYTES`], whichever comes first.
async fn discard<S, B>(body: S)
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: warp::hyper::body::Buf,
{
    let mut body = std::pin::pin!(body);
    let mut read = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                read = read.saturating_add(chunk.remaining() as u64);
                if read > DRAIN_LIMIT_BYTES {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Parses a JSON body, refusing unknown fields when `T` does: a clear 400 that names the
/// problem, never warp's plain-text reply.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// `Authorization: Bearer <token>` → `<token>`.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
