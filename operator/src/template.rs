//! Destination templates: Go-template text over the Vault data, rendered with `gtmpl` (a maintained
//! Go text/template implementation), so `{{ .username }}` works as users expect from Go tools.

use std::collections::{BTreeMap, HashMap};

use agent_contract::template_funcs::{self, Output};
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

/// Parses one template. gtmpl 0.7.1 never returns on an action that is not closed (`{{ .a `), and
/// panics or loops on some text (non-ASCII code in actions, `}}` in quotes, some escapes: see
/// `agent_contract::template_text`), so the text is checked first: a tenant's template must give
/// an error, not crash or hang the operator. `print`, `println`, `printf` and `urlquery` are
/// gtmpl's behind the agent's checks and size bound (`agent_contract::template_funcs`), and so is
/// the rendered text: a 700-byte template could otherwise ask for gigabytes.
fn parse(key: &str, text: &str) -> Result<Template, TemplateError> {
    agent_contract::template_text::lexable(text).map_err(|problem| TemplateError {
        key: key.to_owned(),
        problem,
    })?;
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
    template.add_funcs(template_funcs::BUILTINS);
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
        let mut rendered = Output::default();
        template
            .execute(&mut rendered, &context)
            .map_err(|e| TemplateError {
                key: key.clone(),
                problem: format!("failed to render: {}", redact(&e.to_string(), data)),
            })?;
        out.insert(key.clone(), rendered.into_string());
    }
    Ok(out)
}

/// Replaces every secret value that occurs in `message` (renderer errors may quote the data).
fn redact(message: &str, data: &SecretData) -> String {
    // Every value's text, and every string of four or more characters nested in a JSON value (an
    // error may quote just one; shorter ones would blank out ordinary words), longest first so
    // that a value containing another is replaced whole.
    let mut values: Vec<String> = data.to_text_map().into_values().collect();
    fn nested(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) if s.chars().count() >= 4 => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| nested(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| nested(v, out)),
            _ => {}
        }
    }
    for value in data.0.values().filter(|v| v.is_array() || v.is_object()) {
        nested(value, &mut values);
    }
    values.retain(|v| !v.is_empty());
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    // One pass over the message, so a marker is never rewritten by a shorter value.
    let mut text = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(c) = rest.chars().next() {
        match values.iter().find(|v| rest.starts_with(v.as_str())) {
            Some(value) => {
                text.push_str("<redacted>");
                rest = &rest[value.len()..];
            }
            None => {
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
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

    #[test]
    fn text_gtmpl_cannot_take_is_refused_not_crashed_on() {
        // Inputs of crashes the fuzzer found (fuzz/regressions/operator_template/).
        for text in [
            "{{ é }}",
            r#"{{ "}}" "#,
            "{{ `a\\` }}",
            r#"{{ "a\x" }}"#,
            r#"{{ printf "%70000d" 1 }}"#,
            r#"{{ printf "%[0]d" 1 }}"#,
        ] {
            let templates = BTreeMap::from([("k".to_owned(), text.to_owned())]);
            let data: SecretData = serde_json::from_value(serde_json::json!({"a": "1"})).unwrap();
            assert!(render(&templates, &data).is_err(), "{text:?}");
        }
    }

    #[test]
    fn text_growth_is_refused_with_a_clear_error() {
        // Reported by the fuzz target (fuzz/known/operator_template/gtmpl-print-doubling-oom.txt):
        // a value printed with itself in 31 nested blocks asked for gigabytes.
        let doubling = format!(
            "{{{{ with print .password .password }}}}{}{{{{ . }}}}{}",
            "{{ with print . . }}".repeat(30),
            "{{ end }}".repeat(31)
        );
        let templates = BTreeMap::from([("k".to_owned(), doubling)]);
        let err = render(&templates, &data())
            .map(|out| out.len())
            .unwrap_err();
        assert!(
            err.problem
                .contains("print: the result would be longer than 1048576 bytes"),
            "{err}"
        );
        assert!(!err.problem.contains("canary-pw"), "{err}");
        let templates = BTreeMap::from([("k".to_owned(), "{{ .username }}".repeat(400_000))]);
        let err = render(&templates, &data())
            .map(|out| out.len())
            .unwrap_err();
        assert!(
            err.problem.contains("rendered text would be longer"),
            "{err}"
        );
    }

    #[test]
    fn nested_values_are_redacted_from_render_errors() {
        let data: SecretData = serde_json::from_value(
            serde_json::json!({"nested": {"token": "nested-token-value"}, "n": 42}),
        )
        .unwrap();
        let message = redact("error near nested-token-value and 42", &data);
        assert!(!message.contains("nested-token-value"), "{message}");
    }

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
