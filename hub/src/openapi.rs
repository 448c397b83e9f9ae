//! The hub's OpenAPI 3.0 document (`GET /openapi.json`), generated from the code.
//!
//! Invariants:
//! - every route that [`crate::api::routes`] serves has exactly one [`Operation`] in
//!   [`crate::api::docs`]; `hub/tests/openapi.rs` drives the routes and fails on any that is
//!   served but not documented, or documented but not served;
//! - request, response and query schemas come from the Rust types the handlers use
//!   (`#[derive(schemars::JsonSchema)]` beside `Serialize`/`Deserialize`), so a field added
//!   to a type is in the document without anyone remembering to add it;
//! - every operation lists each status it can answer with and its content type; the ones
//!   that follow from how it is reached are added here, once: 401/403 from its
//!   [`Access`], 429 from a rate limit, 400/413 from a JSON body, 500 unless it touches
//!   nothing that can fail. Every error is the one [`ErrorBody`] shape.
//!
//! How a module contributes (one function per api module, collected by
//! [`crate::api::docs`]):
//!
//! ```ignore
//! pub fn docs() -> Vec<Operation> {
//!     vec![Operation::get("/v1/stores/{store}/stock", "storeStock", "One page of a store's stock")
//!         .tag("stock")
//!         .access(Access::AdminOrOwnStore)
//!         .path_param("store", "The store's id")
//!         .query::<StockQuery>()
//!         .json::<Page<StockFigure>>(200, "One page, by sku")
//!         .error(404, "The store is not registered")
//!         .error(422, "A bad store id, cursor or limit")]
//! }
//! ```

use std::collections::BTreeMap;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Produces the schema of one Rust type with a generator (a `$ref` into
/// `#/components/schemas` for named types).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`; `schema::<T>` is a [`SchemaFn`].
pub fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// The error every route answers with, `{"error": {"code", "message"}}`
/// ([`bazaar_shared::http::ApiError`]).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid`, `not_found`, `unauthorized`, `forbidden`,
    /// `conflict`, `rate_limited`, `unavailable`, `internal`, ...
    pub code: String,
    /// What went wrong and what to do about it, for a person.
    pub message: String,
}

/// Who may call an operation. Decides the security requirement and the 401/403 answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (health, readiness, metrics, this document, the dashboard).
    Open,
    /// The admin token only; a store token gets 403.
    Admin,
    /// The admin token, or the token of the store the request names; another store's
    /// token gets 403.
    AdminOrOwnStore,
    /// Any valid token; a store token sees its own store's data only.
    AnyToken,
    /// Like [`Access::AdminOrOwnStore`], unless the deployment opens the route by
    /// configuration (`BAZAAR_HUB_OPEN_GET_STOCK`).
    OpenByConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

#[derive(Clone)]
enum ParamSchema {
    /// A store id or sku (DESIGN §3).
    Identifier,
    Of(SchemaFn),
}

#[derive(Clone)]
struct Param {
    name: &'static str,
    location: Location,
    required: bool,
    description: &'static str,
    schema: ParamSchema,
}

#[derive(Clone)]
enum Content {
    Json(SchemaFn),
    Error,
    Other {
        content_type: &'static str,
        schema: Option<SchemaFn>,
    },
    Empty,
}

#[derive(Clone)]
struct Answer {
    status: u16,
    description: &'static str,
    content: Content,
    headers: Vec<(&'static str, &'static str)>,
}

/// One documented route: method, path template (`{name}` for each path parameter), what it
/// takes and everything it answers.
#[derive(Clone)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub id: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    tag: &'static str,
    access: Access,
    params: Vec<Param>,
    query: Option<SchemaFn>,
    body: Option<(SchemaFn, &'static str)>,
    answers: Vec<Answer>,
    rate_limited: bool,
    infallible: bool,
}

/// The pattern of store ids and skus (DESIGN §3).
pub const IDENTIFIER_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

impl Operation {
    pub fn new(
        method: &'static str,
        path: &'static str,
        id: &'static str,
        summary: &'static str,
    ) -> Operation {
        Operation {
            method,
            path,
            id,
            summary,
            description: None,
            tag: "other",
            access: Access::Open,
            params: Vec::new(),
            query: None,
            body: None,
            answers: Vec::new(),
            rate_limited: false,
            infallible: false,
        }
    }

    pub fn get(path: &'static str, id: &'static str, summary: &'static str) -> Operation {
        Operation::new("GET", path, id, summary)
    }

    pub fn post(path: &'static str, id: &'static str, summary: &'static str) -> Operation {
        Operation::new("POST", path, id, summary)
    }

    pub fn put(path: &'static str, id: &'static str, summary: &'static str) -> Operation {
        Operation::new("PUT", path, id, summary)
    }

    pub fn patch(path: &'static str, id: &'static str, summary: &'static str) -> Operation {
        Operation::new("PATCH", path, id, summary)
    }

    pub fn delete(path: &'static str, id: &'static str, summary: &'static str) -> Operation {
        Operation::new("DELETE", path, id, summary)
    }

    pub fn describe(mut self, text: &'static str) -> Operation {
        self.description = Some(text);
        self
    }

    pub fn tag(mut self, tag: &'static str) -> Operation {
        self.tag = tag;
        self
    }

    pub fn access(mut self, access: Access) -> Operation {
        self.access = access;
        self
    }

    /// A path parameter that is a store id or a sku.
    pub fn path_param(mut self, name: &'static str, description: &'static str) -> Operation {
        self.params.push(Param {
            name,
            location: Location::Path,
            required: true,
            description,
            schema: ParamSchema::Identifier,
        });
        self
    }

    /// A path parameter of another type.
    pub fn path_param_of<T: JsonSchema>(
        mut self,
        name: &'static str,
        description: &'static str,
    ) -> Operation {
        self.params.push(Param {
            name,
            location: Location::Path,
            required: true,
            description,
            schema: ParamSchema::Of(schema::<T>),
        });
        self
    }

    /// One query parameter, when the handler does not parse a query struct.
    pub fn query_param<T: JsonSchema>(
        mut self,
        name: &'static str,
        required: bool,
        description: &'static str,
    ) -> Operation {
        self.params.push(Param {
            name,
            location: Location::Query,
            required,
            description,
            schema: ParamSchema::Of(schema::<T>),
        });
        self
    }

    /// The query string is the struct `Q` (deserialized with serde): each field is a query
    /// parameter, required unless it is an `Option` or has a default; doc comments become
    /// the descriptions.
    pub fn query<Q: JsonSchema>(mut self) -> Operation {
        self.query = Some(inline_root::<Q>);
        self
    }

    pub fn header<T: JsonSchema>(
        mut self,
        name: &'static str,
        required: bool,
        description: &'static str,
    ) -> Operation {
        self.params.push(Param {
            name,
            location: Location::Header,
            required,
            description,
            schema: ParamSchema::Of(schema::<T>),
        });
        self
    }

    /// A JSON request body of type `T`; adds the 400 (not that JSON) and 413 (too large).
    pub fn body<T: JsonSchema>(mut self) -> Operation {
        self.body = Some((schema::<T>, "application/json"));
        self
    }

    /// A JSON answer of type `T`.
    pub fn json<T: JsonSchema>(mut self, status: u16, description: &'static str) -> Operation {
        self.answers.push(Answer {
            status,
            description,
            content: Content::Json(schema::<T>),
            headers: Vec::new(),
        });
        self
    }

    /// An answer in another content type (`text/plain`, `text/html`, ...), with a schema
    /// when one says anything useful.
    pub fn content(
        mut self,
        status: u16,
        content_type: &'static str,
        description: &'static str,
    ) -> Operation {
        self.answers.push(Answer {
            status,
            description,
            content: Content::Other {
                content_type,
                schema: None,
            },
            headers: Vec::new(),
        });
        self
    }

    /// An answer without a body.
    pub fn empty(mut self, status: u16, description: &'static str) -> Operation {
        self.answers.push(Answer {
            status,
            description,
            content: Content::Empty,
            headers: Vec::new(),
        });
        self
    }

    /// An error answer (the [`ErrorBody`] JSON).
    pub fn error(mut self, status: u16, description: &'static str) -> Operation {
        self.answers.push(Answer {
            status,
            description,
            content: Content::Error,
            headers: Vec::new(),
        });
        self
    }

    /// A response header on the last answer added.
    pub fn with_header(mut self, name: &'static str, description: &'static str) -> Operation {
        if let Some(last) = self.answers.last_mut() {
            last.headers.push((name, description));
        }
        self
    }

    /// Behind a per-client rate limit: adds the 429 with `Retry-After`.
    pub fn rate_limited(mut self) -> Operation {
        self.rate_limited = true;
        self
    }

    /// Touches nothing that can fail (no database, no I/O): no 500 is documented.
    pub fn infallible(mut self) -> Operation {
        self.infallible = true;
        self
    }

    /// `(method, path template)`, e.g. `("GET", "/v1/stores/{store}")`.
    pub fn key(&self) -> (&'static str, &'static str) {
        (self.method, self.path)
    }

    /// Every status this operation documents, the implied ones included.
    pub fn statuses(&self) -> Vec<u16> {
        self.all_answers().into_iter().map(|a| a.status).collect()
    }

    /// The names of the path parameters the operation declares.
    pub fn path_params(&self) -> Vec<&'static str> {
        self.params
            .iter()
            .filter(|p| p.location == Location::Path)
            .map(|p| p.name)
            .collect()
    }

    /// The answers given plus the ones implied by access, rate limit, body and failure,
    /// each status once (an explicit one wins), by status.
    fn all_answers(&self) -> Vec<Answer> {
        let mut answers: BTreeMap<u16, Answer> = BTreeMap::new();
        let implied = |status, description| Answer {
            status,
            description,
            content: Content::Error,
            headers: Vec::new(),
        };
        let mut add = |answer: Answer| {
            answers.entry(answer.status).or_insert(answer);
        };
        for answer in &self.answers {
            add(answer.clone());
        }
        match self.access {
            Access::Open => {}
            Access::AnyToken => add(implied(401, "No token, or one this hub does not know")),
            Access::Admin => {
                add(implied(401, "No token, or one this hub does not know"));
                add(implied(403, "A store token: this needs the admin token"));
            }
            Access::AdminOrOwnStore | Access::OpenByConfig => {
                add(implied(401, "No token, or one this hub does not know"));
                add(implied(403, "Another store's token"));
            }
        }
        if self.rate_limited {
            let mut answer = implied(429, "Past the per-client rate limit");
            answer.headers.push((
                "Retry-After",
                "Whole seconds to wait before the next request",
            ));
            add(answer);
        }
        if self.body.is_some() {
            add(implied(400, "The body is not the JSON this route takes"));
            add(implied(413, "The body is larger than 64 KiB"));
        }
        if !self.infallible {
            add(implied(
                500,
                "Something on the hub's side failed (see its log)",
            ));
        }
        answers.into_values().collect()
    }

    fn render(
        &self,
        responses: &mut SchemaGenerator,
        requests: &mut SchemaGenerator,
    ) -> Result<Value, String> {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(self.id));
        op.insert("summary".into(), json!(self.summary));
        if let Some(text) = self.description {
            op.insert("description".into(), json!(text));
        }
        op.insert("tags".into(), json!([self.tag]));
        match self.access {
            Access::Open => {
                op.insert("security".into(), json!([]));
            }
            Access::OpenByConfig => {
                op.insert("security".into(), json!([{}, {"bearer": []}]));
            }
            Access::Admin | Access::AdminOrOwnStore | Access::AnyToken => {
                op.insert("security".into(), json!([{"bearer": []}]));
            }
        }
        let mut params: Vec<Value> = self
            .params
            .iter()
            .map(|p| {
                let schema = match &p.schema {
                    ParamSchema::Identifier => {
                        json!({"type": "string", "pattern": IDENTIFIER_PATTERN})
                    }
                    ParamSchema::Of(f) => f(requests).to_value(),
                };
                json!({
                    "name": p.name,
                    "in": p.location.as_str(),
                    "required": p.required,
                    "description": p.description,
                    "schema": schema,
                })
            })
            .collect();
        if let Some(query) = self.query {
            params.extend(query_params(query(requests).to_value())?);
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some((body, content_type)) = self.body {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {content_type: {"schema": body(requests).to_value()}}}),
            );
        }
        let mut out = Map::new();
        for answer in self.all_answers() {
            let mut response = Map::new();
            response.insert("description".into(), json!(answer.description));
            let content = match &answer.content {
                Content::Json(f) => Some(("application/json", Some(f(responses).to_value()))),
                Content::Error => Some((
                    "application/json",
                    Some(json!({"$ref": "#/components/schemas/ErrorBody"})),
                )),
                Content::Other {
                    content_type,
                    schema,
                } => Some((*content_type, schema.map(|f| f(responses).to_value()))),
                Content::Empty => None,
            };
            if let Some((content_type, schema)) = content {
                let media = match schema {
                    Some(schema) => json!({"schema": schema}),
                    None if content_type.starts_with("application/json") => {
                        json!({"schema": {"type": "object"}})
                    }
                    None => json!({"schema": {"type": "string"}}),
                };
                response.insert("content".into(), json!({content_type: media}));
            }
            if !answer.headers.is_empty() {
                let headers: Map<String, Value> = answer
                    .headers
                    .iter()
                    .map(|(name, description)| {
                        (
                            (*name).to_owned(),
                            json!({"description": description, "schema": {"type": "string"}}),
                        )
                    })
                    .collect();
                response.insert("headers".into(), Value::Object(headers));
            }
            out.insert(answer.status.to_string(), Value::Object(response));
        }
        op.insert("responses".into(), Value::Object(out));
        Ok(Value::Object(op))
    }
}

fn inline_root<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.root_schema_for::<T>()
}

/// Turns the schema of a query struct into one parameter per property.
fn query_params(schema: Value) -> Result<Vec<Value>, String> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Err(format!(
            "a query type must be a struct with named fields: {schema}"
        ));
    };
    Ok(properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            let description = property
                .as_object_mut()
                .and_then(|p| p.remove("description"))
                .unwrap_or_else(|| json!(""));
            if let Some(p) = property.as_object_mut() {
                // A missing query parameter is how "none" is said; `nullable` means nothing here.
                p.remove("nullable");
            }
            json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "description": description,
                "schema": property,
            })
        })
        .collect())
}

/// Path parameters named in a template: `/v1/stores/{store}` → `["store"]`.
pub fn template_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// Checks what the type system cannot: each (method, path) once, each operationId once,
/// the template's parameters and the declared ones the same, at least one success answer.
pub fn validate(operations: &[Operation]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut keys = BTreeMap::new();
    let mut ids = BTreeMap::new();
    for op in operations {
        if let Some(previous) = keys.insert(op.key(), op.id) {
            problems.push(format!(
                "{} {} is documented twice ({previous} and {})",
                op.method, op.path, op.id
            ));
        }
        if let Some(previous) = ids.insert(op.id, op.key()) {
            problems.push(format!(
                "operationId {} is used by {} {} and {} {}",
                op.id, previous.0, previous.1, op.method, op.path
            ));
        }
        let mut in_template = template_params(op.path);
        let mut declared = op.path_params();
        in_template.sort_unstable();
        declared.sort_unstable();
        if in_template != declared {
            problems.push(format!(
                "{} {}: the template names {in_template:?}, the operation declares {declared:?}",
                op.method, op.path
            ));
        }
        if !op.answers.iter().any(|a| (200..400).contains(&a.status)) {
            problems.push(format!(
                "{} {} documents no success answer",
                op.method, op.path
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The whole document. Panics on what [`validate`] finds, so a bad registration fails the
/// first test that renders it rather than serving a wrong contract.
pub fn document(operations: &[Operation]) -> Value {
    if let Err(problems) = validate(operations) {
        panic!("the OpenAPI registry is inconsistent: {problems:#?}");
    }
    let mut responses = SchemaSettings::openapi3().for_serialize().into_generator();
    let mut requests = SchemaSettings::openapi3()
        .for_deserialize()
        .into_generator();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for op in operations {
        let rendered = op
            .render(&mut responses, &mut requests)
            .unwrap_or_else(|e| panic!("{} {}: {e}", op.method, op.path));
        paths
            .entry(op.path)
            .or_default()
            .insert(op.method.to_ascii_lowercase(), rendered);
    }
    let error = responses.subschema_for::<ErrorBody>();
    debug_assert!(error.get("$ref").is_some());
    let mut schemas = responses.take_definitions(true);
    // Request types are described as they deserialize; a name both sides use keeps the
    // response's form, which only matters if the two differ.
    for (name, schema) in requests.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "bazaar-hub",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The chain's central stock service (DESIGN §7). Every error is `{\"error\": {\"code\", \"message\"}}`. Store ids and skus match `^[A-Za-z0-9_-]{1,64}$`; quantities are integers in the product's base unit; times are RFC 3339 UTC. Lists page with an opaque `cursor` (pass back `next_cursor`) and `limit`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (BAZAAR_HUB_ADMIN_TOKEN), or a store's token from `bazaar-hub store add`, which acts on that store only.",
                }
            }
        }
    })
}

/// The documented routes, read back from the rendered document, for what the router
/// alone cannot say: which methods a path takes (405 with `Allow`) and what is wrong with a
/// query string, parameter by parameter (422).
pub struct RouteTable {
    routes: Vec<DocumentedRoute>,
}

struct DocumentedRoute {
    method: String,
    /// `None` for a `{parameter}` segment.
    segments: Vec<Option<String>>,
    query: Vec<QueryParam>,
}

struct QueryParam {
    name: String,
    required: bool,
    schema: Value,
}

/// What [`RouteTable::explain`] makes of a request no route took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explanation {
    /// No documented path matches.
    UnknownPath,
    /// The path is documented, not with this method; `allow` lists its methods.
    WrongMethod { allow: String },
    /// Method and path are documented; this is what is wrong with the query string.
    BadQuery(String),
    /// Method and path are documented and the query is what they take.
    Nothing,
}

fn segments(path: &str) -> Vec<&str> {
    path.strip_prefix('/').unwrap_or(path).split('/').collect()
}

impl RouteTable {
    /// The table of a document [`document`] rendered.
    pub fn of(document: &Value) -> RouteTable {
        let resolve = |schema: &Value| -> Value {
            let Some(name) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            else {
                return schema.clone();
            };
            document["components"]["schemas"][name].clone()
        };
        let mut routes = Vec::new();
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let query = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query")
                    .map(|p| QueryParam {
                        name: p["name"].as_str().unwrap_or_default().to_owned(),
                        required: p["required"] == true,
                        schema: resolve(&p["schema"]),
                    })
                    .collect();
                routes.push(DocumentedRoute {
                    method: method.to_ascii_uppercase(),
                    segments: segments(path)
                        .into_iter()
                        .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                        .collect(),
                    query,
                });
            }
        }
        RouteTable { routes }
    }

    /// Which documented operation `method path?query` is, and what is wrong with it.
    pub fn explain(&self, method: &str, path: &str, query: &str) -> Explanation {
        let asked = segments(path);
        let on_path: Vec<&DocumentedRoute> = self
            .routes
            .iter()
            .filter(|r| {
                r.segments.len() == asked.len()
                    && r.segments.iter().zip(&asked).all(|(t, s)| match t {
                        Some(literal) => literal == s,
                        None => !s.is_empty(),
                    })
            })
            .collect();
        if on_path.is_empty() {
            return Explanation::UnknownPath;
        }
        let Some(route) = on_path.iter().find(|r| r.method == method) else {
            let methods: std::collections::BTreeSet<&str> =
                on_path.iter().map(|r| r.method.as_str()).collect();
            return Explanation::WrongMethod {
                allow: methods.into_iter().collect::<Vec<_>>().join(", "),
            };
        };
        match query_problems(&route.query, query) {
            Some(problems) => Explanation::BadQuery(problems),
            None => Explanation::Nothing,
        }
    }
}

/// Everything wrong with `raw` for an operation taking `params`, one clause per problem;
/// `None` when nothing is.
fn query_problems(params: &[QueryParam], raw: &str) -> Option<String> {
    let taken = || {
        if params.is_empty() {
            "this route takes no query parameters".to_owned()
        } else {
            let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            format!("this route takes {}", names.join(", "))
        }
    };
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(raw) {
        Ok(pairs) => pairs,
        Err(e) => return Some(format!("not a form-encoded query string ({e})")),
    };
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for (name, value) in &pairs {
        *seen.entry(name.as_str()).or_default() += 1;
        match params.iter().find(|p| &p.name == name) {
            None => problems.push(format!("unknown parameter `{name}` ({})", taken())),
            Some(param) => {
                if let Some(why) = value_problem(&param.schema, value) {
                    problems.push(format!("`{name}` {why}, not `{}`", shorten(value)));
                }
            }
        }
    }
    for (name, count) in &seen {
        if *count > 1 && params.iter().any(|p| p.name == *name) {
            problems.push(format!("`{name}` is given {count} times; give it once"));
        }
    }
    for param in params {
        if param.required && !seen.contains_key(param.name.as_str()) {
            problems.push(format!(
                "the required parameter `{}` is missing",
                param.name
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn shorten(value: &str) -> String {
    let mut short: String = value.chars().take(64).collect();
    if short.len() < value.len() {
        short.push('…');
    }
    short
}

/// Why `value` is not of `schema` (the subset of JSON Schema the hub's query types use:
/// type, bounds, lengths, the identifier pattern, enums, RFC 3339 times), or `None`.
fn value_problem(schema: &Value, value: &str) -> Option<String> {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.iter().any(|a| a.as_str() == Some(value)) {
            let names: Vec<String> = allowed
                .iter()
                .filter_map(Value::as_str)
                .map(|a| format!("`{a}`"))
                .collect();
            return Some(format!("must be one of {}", names.join(", ")));
        }
    }
    let range = || match (
        schema.get("minimum").and_then(Value::as_f64),
        schema.get("maximum").and_then(Value::as_f64),
    ) {
        (Some(min), Some(max)) => format!(" from {min} to {max}"),
        (Some(min), None) => format!(" of at least {min}"),
        (None, Some(max)) => format!(" of at most {max}"),
        (None, None) => String::new(),
    };
    let in_range = |n: f64| {
        schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_none_or(|min| n >= min)
            && schema
                .get("maximum")
                .and_then(Value::as_f64)
                .is_none_or(|max| n <= max)
    };
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => match value.parse::<i128>() {
            Ok(n) if in_range(n as f64) => None,
            _ => Some(format!("must be an integer{}", range())),
        },
        Some("number") => match value.parse::<f64>() {
            Ok(n) if n.is_finite() && in_range(n) => None,
            _ => Some(format!("must be a number{}", range())),
        },
        Some("boolean") => {
            (!matches!(value, "true" | "false")).then(|| "must be `true` or `false`".to_owned())
        }
        Some("string") => {
            let chars = value.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if chars < min {
                    return Some(format!("must be at least {min} characters"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if chars > max {
                    return Some(format!("must be at most {max} characters"));
                }
            }
            if schema.get("pattern").and_then(Value::as_str) == Some(IDENTIFIER_PATTERN)
                && !is_identifier(value)
            {
                return Some(format!("must match {IDENTIFIER_PATTERN}"));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && chrono::DateTime::parse_from_rfc3339(value).is_err()
            {
                return Some("must be an RFC 3339 time".to_owned());
            }
            None
        }
        _ => None,
    }
}

fn is_identifier(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::Reply;

    #[derive(Serialize, JsonSchema)]
    struct Thing {
        /// How many.
        count: u32,
        label: Option<String>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct ThingQuery {
        /// Opaque position from `next_cursor`.
        cursor: Option<String>,
        /// Required one.
        store: String,
    }

    fn sample() -> Operation {
        Operation::get("/v1/things/{store}", "getThing", "A thing")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store")
            .query::<ThingQuery>()
            .json::<Thing>(200, "The thing")
            .error(404, "No such thing")
    }

    #[test]
    fn types_become_schemas_and_access_adds_its_answers() {
        let doc = document(&[sample()]);
        let op = &doc["paths"]["/v1/things/{store}"]["get"];
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Thing"
        );
        let thing = &doc["components"]["schemas"]["Thing"];
        assert_eq!(thing["properties"]["count"]["description"], "How many.");
        // Answers always carry every field; an Option is there as null.
        assert_eq!(thing["required"], json!(["count", "label"]));
        assert_eq!(thing["properties"]["label"]["nullable"], true);
        for status in ["401", "403", "404", "500"] {
            assert_eq!(
                op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{status}"
            );
        }
        assert!(op["responses"].get("429").is_none());
        assert_eq!(op["security"], json!([{"bearer": []}]));
        let params = op["parameters"].as_array().unwrap();
        let by_name = |n: &str| params.iter().find(|p| p["name"] == n).unwrap();
        assert_eq!(by_name("store")["in"], "path");
        assert_eq!(by_name("cursor")["in"], "query");
        assert_eq!(by_name("cursor")["required"], false);
        assert_eq!(
            by_name("cursor")["description"],
            "Opaque position from `next_cursor`."
        );
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }

    #[test]
    fn the_route_table_names_the_methods_of_a_path_and_each_bad_query_parameter() {
        #[derive(Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct PageQuery {
            #[schemars(range(min = 1, max = 1000))]
            limit: Option<u32>,
            #[schemars(pattern(IDENTIFIER_PATTERN))]
            store: String,
        }
        let list = Operation::get("/v1/things/{store}", "list", "List")
            .path_param("store", "The store")
            .query::<PageQuery>()
            .json::<Thing>(200, "ok");
        let delete = Operation::delete("/v1/things/{store}", "drop", "Drop")
            .path_param("store", "The store")
            .json::<Thing>(200, "ok");
        let table = RouteTable::of(&document(&[list, delete]));
        assert_eq!(
            table.explain("GET", "/v1/nothing", ""),
            Explanation::UnknownPath
        );
        assert_eq!(
            table.explain("GET", "/v1/things/", ""),
            Explanation::UnknownPath
        );
        assert_eq!(
            table.explain("PUT", "/v1/things/S1", "x=1"),
            Explanation::WrongMethod {
                allow: "DELETE, GET".into()
            }
        );
        assert_eq!(
            table.explain("GET", "/v1/things/S1", "store=S1&limit=10"),
            Explanation::Nothing
        );
        let Explanation::BadQuery(why) =
            table.explain("GET", "/v1/things/S1", "limit=0&limit=x&store=a%20b&y=")
        else {
            panic!("a bad query");
        };
        for part in [
            "`limit` must be an integer from 1 to 1000, not `0`",
            "`limit` is given 2 times",
            "`store` must match",
            "unknown parameter `y` (this route takes limit, store)",
        ] {
            assert!(why.contains(part), "{part}: {why}");
        }
        let Explanation::BadQuery(why) = table.explain("GET", "/v1/things/S1", "") else {
            panic!("a missing parameter");
        };
        assert!(
            why.contains("the required parameter `store` is missing"),
            "{why}"
        );
    }

    #[test]
    fn inconsistent_registrations_are_named() {
        let dup = sample();
        let missing_param = Operation::get("/v1/x/{sku}", "x", "X").json::<Thing>(200, "ok");
        let problems = validate(&[sample(), dup, missing_param]).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("documented twice")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("operationId getThing")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("[\"sku\"]")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_documented_error_shape_is_what_api_error_sends() {
        let response = bazaar_shared::http::ApiError::not_found("gone").into_response();
        let body =
            futures::executor::block_on(warp::hyper::body::to_bytes(response.into_body())).unwrap();
        let parsed: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (parsed.error.code.as_str(), parsed.error.message.as_str()),
            ("not_found", "gone")
        );
    }
}
