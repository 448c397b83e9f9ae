//! Thresholds, alerts, forecasts, reorder and transfer suggestions.

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
