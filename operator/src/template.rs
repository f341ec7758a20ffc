//! Destination templates: Go-template text over the Vault data, rendered with `gtmpl` (a maintained
//! Go text/template implementation), so `{{ .username }}` works as users expect from Go tools.

use std::collections::{BTreeMap, HashMap};

use gtmpl::{Context, Template};
use gtmpl_value::Value;
use vault::SecretData;

/// A template that did not parse or render. The message never contains secret values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template for key {key:?} {problem}")]
pub struct TemplateError {
    pub key: String,
    pub problem: String,
}

/// Checks that every template parses (no data needed).
pub fn check(templates: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    for (key, text) in templates {
        parse(key, text)?;
    }
    Ok(())
}

/// Parses one template. gtmpl 0.7.1 never returns on an action that is not closed (`{{ .a `), so
/// delimiters are checked first: a user's typo must give an error, not hang the operator.
fn parse(key: &str, text: &str) -> Result<Template, TemplateError> {
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        match after.find("}}") {
            Some(close) if !after[..close].contains("{{") => rest = &after[close + 2..],
            _ => {
                return Err(TemplateError {
                    key: key.to_owned(),
                    problem: "does not parse: an action opened with {{ is not closed with }}"
                        .to_owned(),
                });
            }
        }
    }
    let mut template = Template::default();
    template.parse(text).map_err(|e| TemplateError {
        key: key.to_owned(),
        problem: format!("does not parse: {e}"),
    })?;
    Ok(template)
}

/// Renders every template over `data`; each top-level key of `data` is `.<key>`.
pub fn render(
    templates: &BTreeMap<String, String>,
    data: &SecretData,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let context = Context::from(to_value(&serde_json::Value::Object(
        data.0.clone().into_iter().collect(),
    )));
    let mut out = BTreeMap::new();
    for (key, text) in templates {
        let template = parse(key, text)?;
        let rendered = template.render(&context).map_err(|e| TemplateError {
            key: key.clone(),
            problem: format!("failed to render: {}", redact(&e.to_string(), data)),
        })?;
        out.insert(key.clone(), rendered);
    }
    Ok(out)
}

/// Replaces every secret value that occurs in `message` (renderer errors may quote the data).
fn redact(message: &str, data: &SecretData) -> String {
    let mut text = message.to_owned();
    for value in data.to_text_map().values() {
        if !value.is_empty() {
            text = text.replace(value.as_str(), "<redacted>");
        }
    }
    text
}

fn to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (_, _, Some(f)) => Value::from(f),
            _ => Value::String(n.to_string()),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        serde_json::Value::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> SecretData {
        serde_json::from_value(serde_json::json!({
            "username": "app", "password": "canary-pw", "port": 5432, "hosts": ["a", "b"], "nested": {"x": "y"}
        }))
        .unwrap()
    }

    fn templates(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_keys_numbers_and_nesting() {
        let out = render(
            &templates(&[
                (
                    "DATABASE_URL",
                    "postgres://{{ .username }}:{{ .password }}@db:{{ .port }}/app",
                ),
                ("first", "{{ index .hosts 0 }}"),
                ("nested", "{{ .nested.x }}"),
                (
                    "all",
                    "{{ range $k, $v := .nested }}{{ $k }}={{ $v }}{{ end }}",
                ),
            ]),
            &data(),
        )
        .unwrap();
        assert_eq!(out["DATABASE_URL"], "postgres://app:canary-pw@db:5432/app");
        assert_eq!(out["first"], "a");
        assert_eq!(out["nested"], "y");
        assert_eq!(out["all"], "x=y");
    }

    #[test]
    fn parse_errors_name_the_key() {
        let err = check(&templates(&[("url", "{{ .username "), ("ok", "x")])).unwrap_err();
        assert_eq!(err.key, "url");
        assert!(
            err.to_string()
                .starts_with("template for key \"url\" does not parse"),
            "{err}"
        );
        assert!(check(&templates(&[("a", "{{ .a {{ .b }}")])).is_err());
        assert!(check(&templates(&[("a", "{{ .a }} and {{ if .b }}x{{ end }}")])).is_ok());
        let err = check(&templates(&[("a", "{{ .a }}{{ end }}")])).unwrap_err();
        assert!(err.problem.starts_with("does not parse"), "{err}");
    }

    #[test]
    fn render_errors_never_show_values() {
        let err = redact("cannot index canary-pw with x", &data());
        assert_eq!(err, "cannot index <redacted> with x");
    }
}
