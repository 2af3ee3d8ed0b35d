//! The frame of `GET /api/openapi.json`: title, auth scheme and tags. The paths and
//! schemas come from the handlers and types themselves (see `routes::api`); the
//! functions here add, on the finished document, the rules the derives cannot state.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "buildd",
        description = "A task broker for AI coding agents. Every request but /healthz, /readyz, /api/openapi.json and /api/github/webhook (signed by GitHub instead) takes `Authorization: Bearer TOKEN`: the admin token or an account key (`buildd_<type>_…`). Every error is `{\"error\": \"…\"}`. A claim's `workerToken` (`buildd_worker_…`) opens only its run's own tools at `/mcp`, buildd's Model Context Protocol endpoint (Streamable HTTP, JSON-RPC; described in the README, not here), and is refused here with 403."
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Accounts, their keys and workspace grants"),
        (name = "workspaces", description = "The repositories agents work on"),
        (name = "tasks", description = "Queued work and what became of it"),
        (name = "workers", description = "One attempt of one task by one account"),
        (name = "schedules", description = "Tasks made on a cron cadence"),
        (name = "triggers", description = "Tasks made by another system, with a trigger's own token"),
        (name = "webhooks", description = "Notifications of task events, and how each delivery went"),
        (name = "github", description = "GitHub's webhook deliveries: issues, comments, CI, reviews, merges"),
        (name = "agents", description = "The agents connected now: where, what they run, whether they work"),
        (name = "events", description = "The live event stream"),
        (name = "operations", description = "Health, readiness, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the document's `security` names.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Adds what the schema derive cannot say: rules that tie two fields together. Runs on
/// the finished document, once every route has added its schemas.
pub fn add_cross_field_rules(openapi: &mut utoipa::openapi::OpenApi) {
    let schemas = openapi.components.get_or_insert_with(Default::default);
    if let Some(RefOr::T(Schema::Object(account))) = schemas.schemas.get_mut("NewAccount") {
        // core::validate::auth_type: CI runners cannot hold an OAuth seat.
        account
            .extensions
            .get_or_insert_with(Default::default)
            .insert(
                "not".into(),
                json!({
                    "description": "action accounts cannot use authType oauth",
                    "required": ["type", "authType"],
                    "properties": {"type": {"const": "action"}, "authType": {"const": "oauth"}},
                }),
            );
    }
}

/// States what the items of an agent's report must be ([`crate::core::agents`]);
/// the derive describes a list's length, not its items'.
pub fn add_agent_report_rules(spec: &mut Value) {
    use crate::core::agents::{MAX_ID_LEN, MAX_RUNNER_NAME_LEN};
    let id_pattern = format!("^[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}$");
    if let Some(params) = spec["paths"]["/api/agents/{id}"]["put"]["parameters"].as_array_mut() {
        for param in params.iter_mut().filter(|p| p["name"] == "id") {
            param["schema"]["pattern"] = json!(id_pattern);
        }
    }
    let report = &mut spec["components"]["schemas"]["AgentReport"]["properties"];
    if report.is_object() {
        report["runners"]["items"] = json!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_RUNNER_NAME_LEN,
            "pattern": NOT_BLANK,
        });
        report["running"]["items"] = json!({ "type": "string", "pattern": id_pattern });
    }
}

/// States what a runner's name may not be ([`crate::core::runners::check_name`]): a
/// runner preference, which `--runner` also takes. And the items of a claim's
/// `runners`, whose pattern the derive cannot put on a list's items.
pub fn add_runner_rules(spec: &mut Value) {
    use crate::core::model::RunnerPreference;
    use crate::core::runners::MAX_NAME_LEN;
    let preferences: Vec<&str> = RunnerPreference::ALL.iter().map(|p| p.as_str()).collect();
    let name = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_LEN,
        "pattern": "^[a-z0-9][a-z0-9._-]*$",
        "not": { "enum": preferences },
    });
    let schemas = &mut spec["components"]["schemas"];
    for (schema, fields) in [
        ("NewTask", &["runner", "fallbackRunner"][..]),
        ("TaskTemplate", &["runner", "fallbackRunner"][..]),
        ("WorkerUpdate", &["runner"][..]),
    ] {
        for field in fields {
            let property = &mut schemas[schema]["properties"][*field];
            if property.is_object() {
                property["not"] = json!({ "enum": preferences });
            }
        }
    }
    let claim = &mut schemas["ClaimBody"]["properties"]["runners"];
    if claim.is_object() {
        claim["items"] = name;
    }
}

/// A string with something other than white space in it, and no NUL character.
const NOT_BLANK: &str = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$";

/// The component that describes "any JSON value", as buildd takes it: anything but a
/// NUL character in a string or a key ([`crate::core::validate::NUL_REFUSED`]).
const ANY_VALUE: &str = "AnyValue";

/// A pattern every string of a request matches: no NUL character.
const NO_NUL: &str = "^[^\\u0000]*$";

/// States, in every schema a JSON request body reaches, the two rules the server
/// applies to every body: no string or key holds a NUL character, and a property the
/// schema does not name may hold any other JSON value (or none may be given, for the
/// bodies that refuse unknown fields). A client generated from the description then
/// never meets a refusal it did not announce.
pub fn add_body_rules(spec: &mut Value) {
    refuse_nul_in_parameters(spec);
    let mut bodies = BTreeSet::new();
    if let Some(paths) = spec["paths"].as_object() {
        for operation in paths
            .values()
            .filter_map(Value::as_object)
            .flat_map(|p| p.values())
        {
            collect_refs(
                &operation["requestBody"]["content"]["application/json"]["schema"],
                &mut bodies,
            );
        }
    }
    let Some(schemas) = spec["components"]["schemas"].as_object_mut() else {
        return;
    };
    // Everything the bodies' schemas refer to, transitively.
    let mut reached: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = bodies.into_iter().collect();
    while let Some(name) = todo.pop() {
        if reached.insert(name.clone())
            && let Some(schema) = schemas.get(&name)
        {
            let mut refs = BTreeSet::new();
            collect_refs(schema, &mut refs);
            todo.extend(refs);
        }
    }
    for name in &reached {
        if let Some(schema) = schemas.get_mut(name) {
            refuse_nul(schema);
        }
    }
    // One schema of every type rather than a choice of several, so that no type
    // change of a value can be mistaken for a violation: each keyword applies only to
    // values of its type.
    let any_value = format!("#/components/schemas/{ANY_VALUE}");
    schemas.insert(
        ANY_VALUE.into(),
        json!({
            "description": "Any JSON value without a NUL character in a string or a key.",
            "type": ["string", "number", "boolean", "null", "array", "object"],
            "pattern": NO_NUL,
            "items": {"$ref": any_value},
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": any_value},
        }),
    );
}

/// The names of the components `schema` refers to.
fn collect_refs(schema: &Value, into: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                into.insert(name.to_owned());
            }
            map.values().for_each(|v| collect_refs(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

/// Adds the NUL rule to a schema and everything inside it: strings get the pattern
/// (beside any they have), a value of any type becomes [`ANY_VALUE`], and objects say
/// what their unnamed properties may hold.
fn refuse_nul(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    if map.contains_key("$ref") {
        return;
    }
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(properties)) = map.get_mut(key) {
            properties.values_mut().for_each(refuse_nul);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(inner) = map.get_mut(key).filter(|v| v.is_object()) {
            refuse_nul(inner);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = map.get_mut(key) {
            options.iter_mut().for_each(refuse_nul);
        }
    }
    let any_value = json!({ "$ref": format!("#/components/schemas/{ANY_VALUE}") });
    let types = types_of(map);
    let constrained = map
        .keys()
        .any(|k| is_combinator(k) || k == "enum" || k == "const");
    if types.is_empty() && !constrained {
        // No type at all: any JSON value.
        let description = map.remove("description");
        map.clear();
        map.extend(any_value.as_object().cloned().unwrap_or_default());
        if let Some(description) = description {
            map.insert("description".into(), description);
        }
        return;
    }
    if types.iter().any(|t| t == "string") && !map.contains_key("format") {
        refuse_nul_in_string(map);
    }
    if types.iter().any(|t| t == "object") {
        map.insert("propertyNames".into(), json!({ "pattern": NO_NUL }));
        let extra = map
            .entry("additionalProperties")
            .or_insert_with(|| any_value.clone());
        if extra == &Value::Bool(true) {
            *extra = any_value;
        }
    }
}

/// Adds the NUL rule to a string schema. A pattern of its own that cannot match a NUL
/// already says it; any other moves beside the rule, so that both must match.
fn refuse_nul_in_string(map: &mut Map<String, Value>) {
    let own = map
        .get("pattern")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match own {
        Some(own) if !admits_nul(&own) => {}
        Some(own) => {
            map.insert("pattern".into(), NO_NUL.into());
            let all = map.entry("allOf").or_insert_with(|| json!([]));
            if let Some(all) = all.as_array_mut() {
                all.push(json!({ "pattern": own }));
            }
        }
        None => {
            map.insert("pattern".into(), NO_NUL.into());
        }
    }
}

/// Whether a string matching `pattern` may hold a NUL character, for the patterns
/// buildd writes: those that name NUL do so to exclude it, and an anchored pattern of
/// listed characters only matches those.
fn admits_nul(pattern: &str) -> bool {
    if pattern.contains("\\x00") || pattern.contains("\\u0000") {
        return false;
    }
    let anchored = pattern.starts_with('^') && pattern.ends_with('$');
    !anchored || has_open_class(pattern)
}

/// Whether a pattern has a part that matches characters it does not list: `.` outside
/// a class, a negated class, or `\S`, `\W`, `\D`.
fn has_open_class(pattern: &str) -> bool {
    let (mut in_class, mut chars) = (false, pattern.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if matches!(chars.next(), Some('S' | 'W' | 'D')) {
                    return true;
                }
            }
            '[' if !in_class => {
                in_class = true;
                if chars.peek() == Some(&'^') {
                    return true;
                }
            }
            ']' if in_class => in_class = false,
            '.' if !in_class => return true,
            _ => {}
        }
    }
    false
}

/// Adds the NUL rule to the string query and path parameters of every operation: the
/// server refuses a NUL in them too.
fn refuse_nul_in_parameters(spec: &mut Value) {
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|p| p.values_mut())
    {
        let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for parameter in parameters {
            let located = matches!(parameter["in"].as_str(), Some("query" | "path"));
            if let Some(schema) = parameter
                .get_mut("schema")
                .and_then(Value::as_object_mut)
                .filter(|_| located)
                && types_of(schema).iter().any(|t| t == "string")
            {
                refuse_nul_in_string(schema);
            }
        }
    }
}

fn is_combinator(key: &str) -> bool {
    matches!(key, "allOf" | "anyOf" | "oneOf" | "not")
}

/// The `type` of a schema, one name or several.
fn types_of(map: &Map<String, Value>) -> Vec<String> {
    match map.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_that_cannot_match_nul_are_told_apart() {
        assert!(!admits_nul("^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$"));
        assert!(!admits_nul("^[a-z0-9_]{1,50}$"));
        assert!(!admits_nul(r"^[^/\\\x00-\x1f]*$"));
        assert!(admits_nul(r"\S"));
        assert!(admits_nul("^a.b$"));
        assert!(admits_nul("^[^/]*$"));
        assert!(admits_nul(r"^\S+$"));
    }

    #[test]
    fn every_body_string_and_extra_property_refuses_nul() {
        let mut spec = json!({
            "paths": {"/x": {"post": {
                "parameters": [{"in": "query", "name": "q", "schema": {"type": "string"}}],
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Body"}}}},
            }}},
            "components": {"schemas": {
                "Body": {"type": "object", "properties": {
                    "title": {"type": "string", "pattern": "\\S"},
                    "kind": {"type": "string", "pattern": "^[a-z]+$"},
                    "anything": {"description": "any"},
                    "inner": {"$ref": "#/components/schemas/Inner"},
                }},
                "Inner": {"type": "object", "additionalProperties": false},
                "Unused": {"type": "string"},
            }},
        });
        add_body_rules(&mut spec);
        let schemas = &spec["components"]["schemas"];
        let body = &schemas["Body"];
        assert_eq!(body["properties"]["title"]["pattern"], NO_NUL);
        assert_eq!(body["properties"]["title"]["allOf"][0]["pattern"], "\\S");
        assert_eq!(body["properties"]["kind"]["pattern"], "^[a-z]+$");
        assert_eq!(
            body["properties"]["anything"]["$ref"],
            "#/components/schemas/AnyValue"
        );
        assert_eq!(
            body["additionalProperties"]["$ref"],
            "#/components/schemas/AnyValue"
        );
        assert_eq!(body["propertyNames"]["pattern"], NO_NUL);
        assert_eq!(schemas["Inner"]["additionalProperties"], false);
        assert!(schemas["Unused"].get("pattern").is_none());
        let q = &spec["paths"]["/x"]["post"]["parameters"][0]["schema"];
        assert_eq!(q["pattern"], NO_NUL);
        // Nothing is added where there was nothing: no operation grows a null field.
        let mut bare =
            json!({"paths": {"/y": {"get": {"responses": {}}}}, "components": {"schemas": {}}});
        add_body_rules(&mut bare);
        assert!(bare["paths"]["/y"]["get"].get("parameters").is_none());
    }
}
