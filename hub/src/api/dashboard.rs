//! The HQ dashboard (DESIGN §7): `GET /` and its script and style sheet under `/static/`.
//!
//! Invariants: the files are compiled into the binary (`include_str!`), so a hub always
//! serves the page that matches its own API, and there is nothing to deploy beside it;
//! they are open, as the design says of the dashboard's static files — the page holds no
//! data and asks for the admin token itself, then reads everything through the token
//! routes of the JSON API; every answer says its content type, `nosniff` and
//! `Cache-Control: no-cache` (revalidate on each load, so a hub upgrade never leaves a
//! browser running an older script against a newer API), and the page's Content Security
//! Policy allows scripts, styles and requests from the hub itself only.
//! `hub/tests/dashboard.rs` checks that every API path `app.js` calls is a documented one.

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::openapi::{Access, Operation};

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "application/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// No inline script or style, no third party: the page talks to this hub only.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> BoxedFilter<(Response,)> {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| page(INDEX_HTML, HTML, Some(PAGE_POLICY)));
    let script = warp::path!("static" / "app.js")
        .and(warp::get())
        .map(|| page(APP_JS, JAVASCRIPT, None));
    let style = warp::path!("static" / "style.css")
        .and(warp::get())
        .map(|| page(STYLE_CSS, CSS, None));
    index.or(script).unify().or(style).unify().boxed()
}

fn page(body: &'static str, content_type: &'static str, policy: Option<&'static str>) -> Response {
    let mut response = warp::http::Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer");
    if let Some(policy) = policy {
        response = response
            .header("content-security-policy", policy)
            .header("x-frame-options", "DENY");
    }
    response
        .body(body)
        .map(Reply::into_response)
        // Every header above is a valid static value, so the builder cannot fail.
        .unwrap_or_else(|_| warp::http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// For `/openapi.json` (see [`crate::openapi`]).
pub fn docs() -> Vec<Operation> {
    vec![
        Operation::get("/", "dashboard", "The HQ dashboard")
            .describe("A page that asks for the admin token (kept in the tab's sessionStorage) and shows, from this API: the stores paged, filtered by health and searched by id; alerts filtered by kind, severity and store (with acknowledge); reorder and transfer suggestions; and charts drawn as SVG (a sku's sales history with its forecast, band and reorder point; the chain's stock of a sku by store; a store's sync lag and movements over the last hours). Compiled into the hub; no third-party code.")
            .tag("dashboard")
            .access(Access::Open)
            .content(200, HTML, "The page")
            .infallible(),
        Operation::get("/static/app.js", "dashboardScript", "The dashboard's script")
            .tag("dashboard")
            .access(Access::Open)
            .content(200, JAVASCRIPT, "The script")
            .infallible(),
        Operation::get("/static/style.css", "dashboardStyle", "The dashboard's style sheet")
            .tag("dashboard")
            .access(Access::Open)
            .content(200, CSS, "The style sheet")
            .infallible(),
    ]
}
