//! The OpenAPI document, generated from the handlers' annotations (served at `/openapi.json`
//! and kept in `docs/openapi.json`, which a test compares).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(title = "Reel", description = "Append events to streams, read and follow the log, operate subscriptions."),
    paths(
        api::streams::append,
        api::streams::read,
        api::live::stream_live,
        api::system::streams,
        api::all::read_all,
        api::all::head,
        api::query::query,
        api::live::all_live,
        api::devices::heartbeat,
        api::devices::list,
        api::subscriptions::list,
        api::subscriptions::pause,
        api::subscriptions::reactivate,
        api::subscriptions::remove,
        api::system::health,
        api::system::metrics,
        api::system::stats,
    ),
    components(schemas(api::streams::DirectionParam)),
    modifiers(&BearerToken),
    security(("token" = []))
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("reel token").build()),
        );
    }
}

/// The document as pretty JSON.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
