//! Hub-origin movements (`POST /v1/stores/{s}/movements`, the seed's `POST /update-stock`) and what agents fetch to follow the hub.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use crate::startup::Hub;

pub fn routes(_hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    // Placeholder until the routes of this module land: matches nothing.
    warp::any()
        .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
        .boxed()
}
