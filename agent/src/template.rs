//! consul-template style templates as vault-k8s users write them, rendered with `gtmpl`:
//! `{{ with secret "<path>" }}{{ .Data.data.x }}{{ end }}`, trim markers, `range`, `index` and the
//! common functions. gtmpl functions are plain synchronous `fn`s, so the agent first scans a
//! template for its `secret "<path>"` calls, fetches those, and renders with a `secret` function
//! that answers from the prefetched set (held in a thread-local for the duration of one render).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use agent_contract::template_funcs::{self, MAX_TEXT, Output, bounded, printed_len, too_long};
use base64::Engine as _;
use gtmpl::{Context, Template};
use gtmpl_value::{Func, FuncError, Value};

/// One `secret` call: the path and, for endpoints that issue on write (`pki/issue/x`), the
/// `key=value` parameters that follow it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    pub path: String,
    pub params: Vec<String>,
}

impl SourceKey {
    /// A plain read of `path`.
    pub fn read(path: &str) -> Self {
        Self {
            path: path.trim_matches('/').to_owned(),
            params: Vec::new(),
        }
    }

    /// How logs name it (parameters may be data such as a common name: only their count shows).
    pub fn describe(&self) -> String {
        if self.params.is_empty() {
            self.path.clone()
        } else {
            format!("{} ({} parameters)", self.path, self.params.len())
        }
    }
}

/// Checks delimiters, then parses (with every function registered). gtmpl 0.7.1 never returns on
/// an action that is not closed (`{{ .a `), so an unbalanced template must be caught first.
pub fn check(text: &str) -> Result<(), String> {
    parse(&rewrite_ranges(text)?).map(|_| ())
}

/// The sources a template reads, in the order they first appear.
pub fn secret_calls(text: &str) -> Result<Vec<SourceKey>, String> {
    let mut keys = Vec::new();
    for action in actions(text)? {
        let tokens = lex(action.body);
        for (i, token) in tokens.iter().enumerate() {
            if *token != Token::Word("secret") {
                continue;
            }
            let args: Vec<String> = tokens[i + 1..]
                .iter()
                .map_while(|t| match t {
                    Token::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let Some((path, params)) = args.split_first() else {
                return Err("secret must be called with a literal path, such as secret \"kv/data/app\" (the agent fetches every path before rendering)".into());
            };
            let key = SourceKey {
                path: path.trim_matches('/').to_owned(),
                params: params.to_vec(),
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// Renders `text` with `answers` (each source's whole Vault answer) behind `secret`. Errors are
/// returned with every secret value redacted.
pub fn render(
    text: &str,
    answers: &BTreeMap<SourceKey, serde_json::Value>,
) -> Result<String, String> {
    let template = parse(&rewrite_ranges(text)?)?;
    let prefetched = answers
        .iter()
        .map(|(key, answer)| (call_id(&key.path, &key.params), answer_value(answer)))
        .collect();
    PREFETCHED.with(|slot| *slot.borrow_mut() = prefetched);
    let mut out = Output::default();
    let result = template
        .execute(&mut out, &Context::empty())
        .map(|()| out.into_string());
    PREFETCHED.with(|slot| slot.borrow_mut().clear());
    result.map_err(|e| redact(&format!("failed to render: {e}"), answers))
}

/// The file written without a template: one `key: value` line per data key, in key order (the
/// inner `data` for KV v2), as the Vault Agent Injector writes by default.
pub fn default_format(data: &serde_json::Map<String, serde_json::Value>) -> String {
    let sorted: BTreeMap<_, _> = data.iter().collect();
    let mut out = String::new();
    for (key, value) in sorted {
        out.push_str(key);
        out.push_str(": ");
        match value {
            serde_json::Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        out.push('\n');
    }
    out
}

thread_local! {
    static PREFETCHED: RefCell<HashMap<String, Value>> = RefCell::new(HashMap::new());
}

fn call_id(path: &str, params: &[String]) -> String {
    let mut id = path.trim_matches('/').to_owned();
    for param in params {
        id.push('\0');
        id.push_str(param);
    }
    id
}

fn secret(args: &[Value]) -> Result<Value, FuncError> {
    let args = args
        .iter()
        .map(|a| match a {
            Value::String(s) => Ok(s.clone()),
            _ => Err(FuncError::Generic("secret takes string arguments".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some((path, params)) = args.split_first() else {
        return Err(FuncError::AtLeastXArgs("secret".into(), 1));
    };
    PREFETCHED
        .with(|slot| slot.borrow().get(&call_id(path, params)).cloned())
        .ok_or_else(|| {
            FuncError::Generic(format!(
                "secret {path:?} was not fetched (only literal paths can be used with secret)"
            ))
        })
}

const FUNCTIONS: &[(&str, Func)] = &[
    ("secret", secret as Func),
    ("toJSON", to_json as Func),
    ("toJSONPretty", to_json_pretty as Func),
    ("parseJSON", parse_json as Func),
    ("base64Encode", base64_encode as Func),
    ("base64Decode", base64_decode as Func),
    ("base64URLEncode", base64_url_encode as Func),
    ("base64URLDecode", base64_url_decode as Func),
    ("toUpper", to_upper as Func),
    ("toLower", to_lower as Func),
    ("trimSpace", trim_space as Func),
    ("replaceAll", replace_all as Func),
    ("replace", replace_all as Func),
    ("split", split as Func),
    ("join", join as Func),
    ("vkSortedEntries", sorted_entries as Func),
    ("vkSortedValues", sorted_values as Func),
];

fn parse(text: &str) -> Result<Template, String> {
    actions(text)?;
    lexable(text)?;
    let mut template = Template::default();
    template.add_funcs(template_funcs::BUILTINS);
    template.add_funcs(FUNCTIONS);
    template
        .parse(text)
        .map_err(|e| format!("does not parse: {e}"))?;
    Ok(template)
}

pub use agent_contract::template_text::lexable;

/// One `{{ … }}` action: its body without delimiters and trim markers, and where it sits.
struct Action<'a> {
    start: usize,
    end: usize,
    trim_left: bool,
    trim_right: bool,
    body: &'a str,
}

fn actions(text: &str) -> Result<Vec<Action<'_>>, String> {
    let mut found = Vec::new();
    let mut offset = 0;
    while let Some(open) = text[offset..].find("{{") {
        let start = offset + open;
        let after = start + 2;
        let close = match text[after..].find("}}") {
            Some(close) if !text[after..after + close].contains("{{") => after + close,
            _ => {
                return Err(
                    "does not parse: an action opened with {{ is not closed with }}".into(),
                );
            }
        };
        let mut inner = &text[after..close];
        let trim_left = inner.starts_with("- ");
        let trim_right = inner.ends_with(" -");
        if trim_left {
            inner = &inner[1..];
        }
        if trim_right {
            inner = &inner[..inner.len() - 1];
        }
        found.push(Action {
            start,
            end: close + 2,
            trim_left,
            trim_right,
            body: inner.trim(),
        });
        offset = close + 2;
    }
    Ok(found)
}

/// gtmpl ranges over a map in hash order (Go sorts by key), so a rendered file would change from
/// one render to the next; and gtmpl 0.7.1 runs a range's `else` branch even when the range ran.
/// So every `range` is rewritten to range over a key-sorted list: `range $k, $v := P` becomes
/// `range $vkEntryN := vkSortedEntries (P)` plus two declarations, `range P` / `range $v := P`
/// range over `vkSortedValues (P)`, and a range with `else` is wrapped in a `with` that owns the
/// `else`.
fn rewrite_ranges(text: &str) -> Result<String, String> {
    let actions = actions(text)?;
    // Which `else` belongs to which `range`: follow the nesting of block actions.
    let mut open: Vec<(usize, bool)> = Vec::new();
    let mut range_else = HashMap::new();
    for (i, action) in actions.iter().enumerate() {
        match action.body.split_whitespace().next().unwrap_or("") {
            "if" | "with" | "range" | "block" | "define" => {
                open.push((i, action.body.starts_with("range")));
            }
            "end" => {
                open.pop();
            }
            "else" => {
                if let Some(&(range, true)) = open.last() {
                    range_else.insert(range, i);
                }
            }
            _ => {}
        }
    }
    let else_of: HashMap<usize, usize> = range_else.iter().map(|(r, e)| (*e, *r)).collect();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (n, action) in actions.iter().enumerate() {
        let left = if action.trim_left { "{{- " } else { "{{ " };
        let right = if action.trim_right { " -}}" } else { " }}" };
        let replacement = if else_of.contains_key(&n) {
            format!("{left}end }}}}{{{{ else{right}")
        } else if let Some(rest) = action.body.strip_prefix("range")
            && rest.starts_with(char::is_whitespace)
        {
            range_head(
                rest.trim_start(),
                n,
                range_else.contains_key(&n),
                left,
                right,
            )
        } else {
            continue;
        };
        out.push_str(&text[copied..action.start]);
        out.push_str(&replacement);
        copied = action.end;
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

fn range_head(rest: &str, n: usize, has_else: bool, left: &str, right: &str) -> String {
    let (vars, pipe) = declared_vars(rest).unwrap_or((Vec::new(), rest));
    let sorter = if vars.len() == 2 {
        "vkSortedEntries"
    } else {
        "vkSortedValues"
    };
    let (open, list) = if has_else {
        (
            format!("{left}with $vkList{n} := {sorter} ({pipe}) }}}}{{{{ "),
            format!("$vkList{n}"),
        )
    } else {
        (left.to_owned(), format!("{sorter} ({pipe})"))
    };
    match vars.as_slice() {
        [key, value] => format!(
            "{open}range $vkEntry{n} := {list} }}}}{{{{ {key} := index $vkEntry{n} 0 }}}}{{{{ {value} := index $vkEntry{n} 1{right}"
        ),
        [value] => format!("{open}range {value} := {list}{right}"),
        _ => format!("{open}range {list}{right}"),
    }
}

/// `$a, $b := pipe` or `$a := pipe` → the variables and the pipe.
fn declared_vars(text: &str) -> Option<(Vec<&str>, &str)> {
    let (decl, pipe) = text.split_once(":=")?;
    let vars: Vec<&str> = decl.split(',').map(str::trim).collect();
    let valid = |v: &&str| {
        v.strip_prefix('$')
            .is_some_and(|name| name.chars().all(|c| c.is_alphanumeric() || c == '_'))
    };
    (vars.len() <= 2 && vars.iter().all(valid)).then(|| (vars, pipe.trim()))
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Str(String),
    Other,
}

/// Just enough of Go's template lexer to find `secret` and its string arguments.
fn lex(body: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(other) => s.push(other),
                            None => {}
                        },
                        other => s.push(other),
                    }
                }
                tokens.push(Token::Str(s));
            }
            '`' => {
                let s: String = chars
                    .by_ref()
                    .map(|(_, c)| c)
                    .take_while(|c| *c != '`')
                    .collect();
                tokens.push(Token::Str(s));
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '.' | '$') => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_alphanumeric() || matches!(d, '_' | '.' | '$') {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Word(&body[i..end]));
            }
            _ => tokens.push(Token::Other),
        }
    }
    tokens
}

/// A Vault answer as templates see it: consul-template's field names (`.Data`, `.LeaseID`, …).
fn answer_value(answer: &serde_json::Value) -> Value {
    let mut fields = HashMap::new();
    if let serde_json::Value::Object(map) = answer {
        for (key, value) in map {
            let name = match key.as_str() {
                "data" => "Data",
                "lease_id" => "LeaseID",
                "lease_duration" => "LeaseDuration",
                "renewable" => "Renewable",
                "warnings" => "Warnings",
                "request_id" => "RequestID",
                "auth" => "Auth",
                _ => continue,
            };
            fields.insert(name.to_owned(), to_value(value));
        }
    }
    fields
        .entry("Data".to_owned())
        .or_insert(Value::Map(HashMap::new()));
    Value::Map(fields)
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
        serde_json::Value::Object(map) => {
            Value::Map(map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect())
        }
    }
}

fn to_json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::NoValue | Value::Nil | Value::Function(_) => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::String(s) => s.clone().into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.into(),
            (None, Some(u), _) => u.into(),
            (_, _, Some(f)) => f.into(),
            _ => serde_json::Value::Null,
        },
        Value::Array(items) => items.iter().map(to_json_value).collect(),
        Value::Map(map) | Value::Object(map) => {
            let sorted: BTreeMap<_, _> = map
                .iter()
                .map(|(k, v)| (k.clone(), to_json_value(v)))
                .collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
    }
}

/// Replaces every secret string that occurs in `message` (renderer errors may quote data).
fn redact(message: &str, answers: &BTreeMap<SourceKey, serde_json::Value>) -> String {
    fn walk(value: &serde_json::Value, text: &mut String) {
        match value {
            serde_json::Value::String(s) if s.len() >= 2 => {
                *text = text.replace(s.as_str(), "<redacted>");
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, text)),
            serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, text)),
            _ => {}
        }
    }
    let mut text = message.to_owned();
    for answer in answers.values() {
        if let Some(data) = answer.get("data") {
            walk(data, &mut text);
        }
    }
    text
}

fn arg<'a>(args: &'a [Value], i: usize, name: &str) -> Result<&'a Value, FuncError> {
    args.get(i)
        .ok_or_else(|| FuncError::ExactlyXArgs(name.into(), i + 1))
}

/// A string argument; numbers and booleans as Go would print them.
fn text_arg(args: &[Value], i: usize, name: &str) -> Result<String, FuncError> {
    match arg(args, i, name)? {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(arg(args, i, name)?.to_string()),
        Value::Nil | Value::NoValue => Err(FuncError::Generic(format!(
            "{name}: argument {} has no value (missing key?)",
            i + 1
        ))),
        _ => Err(FuncError::Generic(format!(
            "{name}: argument {} is not a string",
            i + 1
        ))),
    }
}

fn last_text_arg(args: &[Value], name: &str) -> Result<String, FuncError> {
    text_arg(args, args.len().max(1) - 1, name)
}

fn to_json(args: &[Value]) -> Result<Value, FuncError> {
    bounded("toJSON", to_json_value(arg(args, 0, "toJSON")?).to_string())
}

fn to_json_pretty(args: &[Value]) -> Result<Value, FuncError> {
    let json = to_json_value(arg(args, 0, "toJSONPretty")?);
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| FuncError::Generic(e.to_string()))?;
    bounded("toJSONPretty", text)
}

fn parse_json(args: &[Value]) -> Result<Value, FuncError> {
    let text = text_arg(args, 0, "parseJSON")?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map(|json| to_value(&json))
        .map_err(|_| FuncError::Generic("parseJSON: the argument is not valid JSON".into()))
}

fn base64_encode(args: &[Value]) -> Result<Value, FuncError> {
    let text = text_arg(args, 0, "base64Encode")?;
    bounded(
        "base64Encode",
        base64::engine::general_purpose::STANDARD.encode(text),
    )
}

fn base64_url_encode(args: &[Value]) -> Result<Value, FuncError> {
    let text = text_arg(args, 0, "base64URLEncode")?;
    bounded(
        "base64URLEncode",
        base64::engine::general_purpose::URL_SAFE.encode(text),
    )
}

fn decoded(bytes: Result<Vec<u8>, base64::DecodeError>, name: &str) -> Result<Value, FuncError> {
    let bytes =
        bytes.map_err(|_| FuncError::Generic(format!("{name}: the argument is not base64")))?;
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|_| FuncError::Generic(format!("{name}: the decoded bytes are not UTF-8")))
}

fn base64_decode(args: &[Value]) -> Result<Value, FuncError> {
    let text = text_arg(args, 0, "base64Decode")?;
    decoded(
        base64::engine::general_purpose::STANDARD.decode(text.trim()),
        "base64Decode",
    )
}

fn base64_url_decode(args: &[Value]) -> Result<Value, FuncError> {
    let text = text_arg(args, 0, "base64URLDecode")?;
    decoded(
        base64::engine::general_purpose::URL_SAFE.decode(text.trim()),
        "base64URLDecode",
    )
}

fn to_upper(args: &[Value]) -> Result<Value, FuncError> {
    bounded("toUpper", text_arg(args, 0, "toUpper")?.to_uppercase())
}

fn to_lower(args: &[Value]) -> Result<Value, FuncError> {
    bounded("toLower", text_arg(args, 0, "toLower")?.to_lowercase())
}

fn trim_space(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(
        text_arg(args, 0, "trimSpace")?.trim().to_owned(),
    ))
}

/// `replaceAll OLD NEW S` (so `{{ .x | replaceAll "." "_" }}` works as in consul-template).
fn replace_all(args: &[Value]) -> Result<Value, FuncError> {
    if args.len() != 3 {
        return Err(FuncError::ExactlyXArgs("replaceAll".into(), 3));
    }
    let (old, new, s) = (
        text_arg(args, 0, "replaceAll")?,
        text_arg(args, 1, "replaceAll")?,
        text_arg(args, 2, "replaceAll")?,
    );
    // An empty OLD matches around every character.
    let matches = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old.as_str()).count()
    };
    let len = (s.len() - matches * old.len()).saturating_add(matches.saturating_mul(new.len()));
    if len > MAX_TEXT {
        return too_long("replaceAll");
    }
    Ok(Value::String(s.replace(&old, &new)))
}

/// `split SEP S` → a list.
fn split(args: &[Value]) -> Result<Value, FuncError> {
    let sep = text_arg(args, 0, "split")?;
    let s = last_text_arg(args, "split")?;
    if s.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    Ok(Value::Array(
        s.split(sep.as_str())
            .map(|p| Value::String(p.to_owned()))
            .collect(),
    ))
}

/// `join SEP LIST` → a string.
fn join(args: &[Value]) -> Result<Value, FuncError> {
    let sep = text_arg(args, 0, "join")?;
    match arg(args, 1, "join")? {
        Value::Array(items) => {
            let len = items
                .iter()
                .map(|item| printed_len(item).saturating_add(sep.len()))
                .fold(0usize, usize::saturating_add);
            if len > MAX_TEXT.saturating_add(sep.len()) {
                return too_long("join");
            }
            Ok(Value::String(
                items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(&sep),
            ))
        }
        _ => Err(FuncError::Generic(
            "join: the second argument is not a list".into(),
        )),
    }
}

fn sorted_entries(args: &[Value]) -> Result<Value, FuncError> {
    Ok(match arg(args, 0, "range")? {
        Value::Map(map) | Value::Object(map) => {
            let sorted: BTreeMap<_, _> = map.iter().collect();
            Value::Array(
                sorted
                    .into_iter()
                    .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), v.clone()]))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| Value::Array(vec![Value::from(i as i64), v.clone()]))
                .collect(),
        ),
        other => other.clone(),
    })
}

fn sorted_values(args: &[Value]) -> Result<Value, FuncError> {
    Ok(match arg(args, 0, "range")? {
        Value::Map(map) | Value::Object(map) => {
            let sorted: BTreeMap<_, _> = map.iter().collect();
            Value::Array(sorted.into_values().cloned().collect())
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv2() -> serde_json::Value {
        json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
               "data": {"data": {"username": "app", "password": "canary-pw", "port": 5432, "b": "2", "a": "1", "z": "26"},
                        "metadata": {"version": 3}}})
    }

    fn kv1() -> serde_json::Value {
        json!({"lease_id": "", "lease_duration": 2764800, "renewable": false,
               "data": {"api_key": "k-123", "region": "eu"}})
    }

    fn leased() -> serde_json::Value {
        json!({"lease_id": "database/creds/app/abc", "lease_duration": 30, "renewable": true,
               "data": {"username": "v-app-x", "password": "pw-secret"}})
    }

    fn answers() -> BTreeMap<SourceKey, serde_json::Value> {
        [
            (SourceKey::read("secret/data/web"), kv2()),
            (SourceKey::read("kv/web"), kv1()),
            (SourceKey::read("database/creds/app"), leased()),
        ]
        .into_iter()
        .collect()
    }

    fn r(text: &str) -> Result<String, String> {
        render(text, &answers())
    }

    #[test]
    fn scans_secret_calls_before_rendering() {
        let text = r#"{{ with secret "secret/data/web" }}{{ .Data.data.x }}{{ end }}
{{- with secret `database/creds/app` -}}{{ .Data.username }}{{ end }}
{{ (secret "pki/issue/web" "common_name=a.example" "ttl=1h").Data.certificate }}
{{ with secret "secret/data/web" }}again{{ end }}{{ "secret" }} {{ .secretary }}"#;
        let keys = secret_calls(text).unwrap();
        assert_eq!(
            keys,
            vec![
                SourceKey::read("secret/data/web"),
                SourceKey::read("database/creds/app"),
                SourceKey {
                    path: "pki/issue/web".into(),
                    params: vec!["common_name=a.example".into(), "ttl=1h".into()]
                },
            ]
        );
        assert_eq!(secret_calls("no actions at all").unwrap(), vec![]);
        let err = secret_calls(r#"{{ with secret (printf "kv/%s" "x") }}{{ end }}"#).unwrap_err();
        assert!(err.contains("literal path"), "{err}");
    }

    #[test]
    fn renders_kv1_kv2_and_leased_shapes() {
        assert_eq!(
            r(r#"{{ with secret "secret/data/web" }}{{ .Data.data.username }}:{{ .Data.data.password }}@{{ .Data.data.port }} v{{ .Data.metadata.version }}{{ end }}"#).unwrap(),
            "app:canary-pw@5432 v3"
        );
        assert_eq!(
            r(r#"{{ with secret "kv/web" }}{{ .Data.api_key }}/{{ .Data.region }}{{ end }}"#)
                .unwrap(),
            "k-123/eu"
        );
        assert_eq!(
            r(r#"{{ with secret "database/creds/app" }}{{ .Data.username }} {{ .LeaseID }} {{ .LeaseDuration }} {{ .Renewable }}{{ end }}"#).unwrap(),
            "v-app-x database/creds/app/abc 30 true"
        );
        assert_eq!(r(r#"{{ (secret "kv/web").Data.region }}"#).unwrap(), "eu");
    }

    #[test]
    fn trims_whitespace_like_go() {
        let text =
            "export A=\"\n{{- with secret \"kv/web\" -}}\n  {{ .Data.api_key }}\n{{- end }}\"\n";
        assert_eq!(r(text).unwrap(), "export A=\"k-123\"\n");
    }

    #[test]
    fn range_is_sorted_and_index_works() {
        let text = r#"{{ with secret "secret/data/web" }}{{ range $k, $v := .Data.data }}{{ $k }}={{ $v }};{{ end }}{{ end }}"#;
        let expected = "a=1;b=2;password=canary-pw;port=5432;username=app;z=26;";
        for _ in 0..20 {
            assert_eq!(r(text).unwrap(), expected);
        }
        let trimmed = "{{ with secret \"kv/web\" }}{{- range $k, $v := .Data -}}\n{{ $k }}\n{{- end }}{{ end }}";
        assert_eq!(r(trimmed).unwrap(), "api_keyregion");
        assert_eq!(
            r(r#"{{ with secret "kv/web" }}{{ range .Data }}[{{ . }}]{{ end }}{{ range $v := .Data }}({{ $v }}){{ end }}{{ end }}"#).unwrap(),
            "[k-123][eu](k-123)(eu)"
        );
        assert_eq!(
            r(r#"{{ range $i, $p := split "," "x,y" }}{{ $i }}{{ $p }}{{ else }}none{{ end }}{{ range split "," "" }}x{{ else }}none{{ end }}"#).unwrap(),
            "0x1ynone"
        );
        let nested = "{{ range $k, $v := split \",\" \"p,q\" -}} {{ if eq $k 0 }}first{{ else }}next{{ end }} {{- else }}empty{{ end }}|{{ range $x := split \",\" \"\" }}{{ $x }}{{- else -}} none {{ end }}";
        assert_eq!(r(nested).unwrap(), "firstnext|none ");
        assert_eq!(
            r(r#"{{ with secret "secret/data/web" }}{{ index .Data.data "username" }}{{ end }}"#)
                .unwrap(),
            "app"
        );
    }

    #[test]
    fn functions() {
        let cases = [
            (
                r#"{{ with secret "kv/web" }}{{ .Data | toJSON }}{{ end }}"#,
                r#"{"api_key":"k-123","region":"eu"}"#,
            ),
            (r#"{{ "hello" | base64Encode }}"#, "aGVsbG8="),
            (r#"{{ "aGVsbG8=" | base64Decode }}"#, "hello"),
            (r#"{{ "a?b" | base64URLEncode | base64URLDecode }}"#, "a?b"),
            (
                r#"{{ "MiXed" | toUpper }} {{ "MiXed" | toLower }}"#,
                "MIXED mixed",
            ),
            (r#"[{{ "  x \n" | trimSpace }}]"#, "[x]"),
            (
                r#"{{ "a.b.c" | replaceAll "." "_" }} {{ replace "b" "B" "abc" }}"#,
                "a_b_c aBc",
            ),
            (r#"{{ split "," "a,b" | join "-" }}"#, "a-b"),
            (
                r#"{{ with parseJSON "{\"k\":[1,2]}" }}{{ index .k 1 }}{{ end }}"#,
                "2",
            ),
            (
                r#"{{ with secret "secret/data/web" }}{{ .Data.data.port | toJSON }}{{ end }}"#,
                "5432",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(r(text).as_deref(), Ok(expected), "{text}");
        }
        assert!(
            r(r#"{{ with secret "kv/web" }}{{ .Data | toJSONPretty }}{{ end }}"#)
                .unwrap()
                .contains("\n  \"api_key\": \"k-123\"")
        );
    }

    #[test]
    fn errors_are_clear_and_never_show_values() {
        let unclosed = check("{{ with secret \"kv/web\" }}{{ .Data.x ").unwrap_err();
        assert!(unclosed.contains("not closed"), "{unclosed}");
        let unknown = check("{{ nosuchfunc 1 }}").unwrap_err();
        assert!(unknown.starts_with("does not parse"), "{unknown}");
        assert!(check("{{ with secret \"kv/web\" }}{{ .Data.x }}{{ end }}").is_ok());
        let missing = r(r#"{{ with secret "kv/other" }}x{{ end }}"#).unwrap_err();
        assert!(missing.contains("kv/other"), "{missing}");
        let bad = r(
            r#"{{ with secret "database/creds/app" }}{{ .Data.password | base64Decode }}{{ end }}"#,
        )
        .unwrap_err();
        assert!(!bad.contains("pw-secret"), "{bad}");
        let redacted = redact("cannot index pw-secret", &answers());
        assert_eq!(redacted, "cannot index <redacted>");
    }

    #[test]
    fn non_ascii_where_gtmpl_would_panic_is_refused() {
        // Each of these made gtmpl's lexer slice inside a character and panic (found by the
        // agent_template fuzz target; the panic aborted the agent).
        for text in [
            "{{ é }}",
            "{{ .a | é }}",
            "{{ 1é }}",
            "{{\u{a0}.a }}",
            "x€{{- .a }}",
            "x€ \n {{- .a }}",
            "{{ with secret \"kv/web\" }}{{ .Data.api_key }}{{ end }}{{ ޔ }}",
        ] {
            let err = check(text).unwrap_err();
            assert!(err.contains("non-ASCII character"), "{text:?}: {err}");
        }
        // `}}` in a quoted string does not close the action; gtmpl looped forever on these.
        for text in ["{{ \"}}\" ", "{{ with secret \"kv/web}}{x\" "] {
            let err = check(text).unwrap_err();
            assert!(err.contains("not closed"), "{text:?}: {err}");
        }
        // gtmpl unquotes literals by bytes and looped on short \x and \u escapes.
        for text in [
            r#"{{ "{\"k\x " }}"#,
            r#"{{ "a\u12" }}"#,
            r#"{{ "\x41\x" }}"#,
            "{{ \"\\é\" }}",
            r"{{ `a\` }}",
            "{{ '\\é' }}",
        ] {
            let err = check(text).unwrap_err();
            assert!(err.contains("escapes"), "{text:?}: {err}");
        }
        assert_eq!(
            r(r#"{{ "\x41" }}{{ "\u00e9" }}{{ "\t\"." }}"#).unwrap(),
            "Aé\t\"."
        );
        // Literals end where gtmpl's lexer ends them: two backslashes still escape the quote.
        assert_eq!(r(r#"{{ "\\"" }}"#).unwrap(), r#"\""#);
        let err = check(r"{{ '\\'' é }}").unwrap_err();
        assert!(err.contains("non-ASCII"), "{err}");
        // Unicode in text, quotes, comments and after a right trim marker is fine.
        for text in [
            "Grüße {{ \"für\" }} {{ `€` }} {{ '€' }} {{/* é */}}",
            "€ {{ .a -}} €",
            "€{{ .a }}",
            "{{ \"}} é\" }}",
        ] {
            assert!(check(text).is_ok(), "{text:?}: {:?}", check(text));
        }
        assert_eq!(
            r("Grüße {{ with secret \"kv/web\" }}{{ .Data.region }}{{ end }} €").unwrap(),
            "Grüße eu €"
        );
    }

    #[test]
    fn text_growth_is_bounded() {
        // Found by the agent_template fuzz target: chained replaceAll ran it out of memory.
        let chained =
            |f: &str| format!(r#"{{{{ "0123456789" {} }}}}"#, format!("| {f} ").repeat(12));
        for (f, name) in [
            (r#"replaceAll "1" "1111111111""#, "replaceAll"),
            ("toJSON | toJSON", "toJSON"),
            (
                "base64Encode | base64Encode | base64Encode | base64Encode",
                "base64Encode",
            ),
        ] {
            let err = r(&chained(f)).unwrap_err();
            assert!(
                err.contains(&format!("{name}: the result would be longer than")),
                "{f}: {err}"
            );
        }
        // Doubling through nested blocks, and a file made of many small actions.
        let doubling = format!(
            "{}{{{{ . }}}}{}",
            "{{ with print \"ab\" \"ab\" }}".to_owned() + &"{{ with print . . }}".repeat(30),
            "{{ end }}".repeat(31)
        );
        let err = r(&doubling).unwrap_err();
        assert!(
            err.contains("print: the result would be longer than"),
            "{err}"
        );
        let err = r(&"{{ \"0123456789\" }}".repeat(200_000)).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        assert_eq!(r(r#"{{ "a.b" | replaceAll "." "::" }}"#).unwrap(), "a::b");
        assert_eq!(r(r#"{{ split "," "a,b" | join "-" }}"#).unwrap(), "a-b");
    }

    #[test]
    fn printf_formats_that_would_panic_are_refused() {
        // Found by the fuzz targets: gtmpl's printf panicked on each of these.
        for (text, why) in [
            (r#"{{ printf "%70000d" 1 }}"#, "65535"),
            (r#"{{ printf "%.99999999999s" "x" }}"#, "65535"),
            (r#"{{ printf "%*d" 70000 1 }}"#, "arguments"),
            (r#"{{ printf "%[0]d" 1 }}"#, "start at 1"),
            (r#"{{ printf "%éd" 1 }}"#, "ASCII"),
        ] {
            let err = r(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert_eq!(
            r(r#"{{ printf "%5.2f|%-4s|%*d" 3.14159 "ab" 3 9 }}"#).unwrap(),
            " 3.14|ab  |  9"
        );
    }

    #[test]
    fn default_format_is_sorted_key_value_lines() {
        let data = json!({"username": "app", "port": 5432, "a": {"x": 1}});
        assert_eq!(
            default_format(data.as_object().unwrap()),
            "a: {\"x\":1}\nport: 5432\nusername: app\n"
        );
    }
}
