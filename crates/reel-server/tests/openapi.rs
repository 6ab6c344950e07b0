//! `docs/openapi.json` is the document the server serves; regenerate it with
//! `REEL_UPDATE_OPENAPI=1 cargo test -p reel-server --test openapi`.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = reel_server::openapi_document();
    if std::env::var_os("REEL_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date; run REEL_UPDATE_OPENAPI=1 cargo test -p reel-server --test openapi"
    );
    let document: serde_json::Value = serde_json::from_str(&generated).expect("valid JSON");
    for path in ["/streams/{stream}", "/all", "/all/live", "/subscriptions", "/health", "/metrics"] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
}
