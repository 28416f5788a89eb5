//! The operators' console at `/ui`: a few static files (`api/ui/`) compiled into the
//! binary, so a server without internet access serves it as is — no Node.js, no CDN.
//! The page talks to the same `/v1/*` endpoints as any client, with the key the
//! operator signs in with; every rule about who sees what is enforced there, not here.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
];

/// Scripts and styles from this origin only, no inline code, no framing; the page calls
/// this API and nothing else.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /ui` and `GET /ui/`: the page.
pub async fn index() -> Response {
    asset_named("index.html")
}

/// `GET /ui/{file}`: one of the page's files.
pub async fn asset(Path(file): Path<String>) -> Response {
    asset_named(&file)
}

fn asset_named(name: &str) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let mut resp = (*body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Files change with the binary; always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_names_is_embedded() {
        let (_, _, html) = ASSETS[0];
        for (name, _, _) in &ASSETS[1..] {
            assert!(html.contains(&format!("/ui/{name}")), "{name} not linked");
        }
        assert_eq!(asset_named("app.js").status(), StatusCode::OK);
        assert_eq!(asset_named("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
