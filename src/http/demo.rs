//! `GET /`: the demo page, built into the binary (no build step, no CDN).

use actix_web::HttpResponse;

const PAGE: &str = include_str!("../../static/index.html");

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}
