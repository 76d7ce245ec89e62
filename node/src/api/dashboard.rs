//! The dashboard every node serves at `/`: the built `dashboard/` (see `build.rs`), embedded in
//! the binary so a node needs no separate install. The page talks to this node's API.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "../dashboard/dist"]
struct Assets;

pub async fn index() -> Response {
    serve("index.html", "no-cache")
}

pub async fn asset(Path(file): Path<String>) -> Response {
    // Vite puts a content hash in every asset name, so they never change under one name.
    serve(
        &format!("assets/{file}"),
        "public, max-age=31536000, immutable",
    )
}

fn serve(path: &str, cache: &'static str) -> Response {
    match Assets::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, file.metadata.mimetype().to_string()),
                (header::CACHE_CONTROL, cache.to_string()),
            ],
            file.data,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no dashboard file {path:?} in this build"),
        )
            .into_response(),
    }
}
