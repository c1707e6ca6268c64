//! `GET /events?topic=a&topic=b[&lastEventId=<id>]`: an SSE stream of the topics' events. The logic is
//! `crate::subscribe`; this file turns its answer into an actix response.

use actix_web::http::header::{self, CacheDirective};
use actix_web::http::{Method, Version};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};

use super::{head, query_pairs};
use crate::error::ApiError;
use crate::node::Node;
use crate::subscribe::{open, Open};

pub async fn subscribe(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string())?;
    let asked = if req.method() == Method::HEAD {
        Open::Check
    } else {
        Open::Stream
    };
    let Some(connection) = open(&node, &head(&req, &pairs), asked).await? else {
        // What a GET would answer, without opening a stream (no slot, no hub membership).
        return Ok(stream_head(&mut HttpResponse::Ok()).finish());
    };
    let mut response = stream_head(&mut HttpResponse::Ok()).streaming(connection.into_stream());
    if req.version() <= Version::HTTP_11 {
        // The stream runs until the connection closes, which delimits the body: no chunked encoding (HTTP/1.0
        // has none), so the bytes on the wire are the events themselves, as on the lean path
        // (`http::front`).
        response.head_mut().no_chunking(true);
    }
    Ok(response)
}

/// The headers of an SSE response.
fn stream_head(builder: &mut HttpResponseBuilder) -> &mut HttpResponseBuilder {
    builder
        .content_type("text/event-stream")
        .insert_header(header::CacheControl(vec![CacheDirective::NoCache]))
        // Tells nginx and similar proxies not to buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        // When the stream ends the client reconnects anyway, maybe to another node: close the socket.
        .force_close()
}
