//! `GET /`: the demo page, and `GET /openapi.yaml`: the API description; both built into the binary.

use actix_web::HttpResponse;

const PAGE: &str = include_str!("../../static/index.html");

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/yaml").body(OPENAPI)
}
