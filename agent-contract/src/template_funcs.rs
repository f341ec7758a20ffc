//! gtmpl's text builtins behind the checks and the size bound that the agent's file templates and
//! the operator's destination templates share.
//!
//! gtmpl has no size limit, and functions chained or nested in blocks grow text exponentially
//! (`{{ with print . . }}` thirty times over is a 700-byte template that asks for gigabytes), so a
//! tenant's template could run either process out of memory. Every text a builtin returns, and
//! every rendered output, stays within [`MAX_TEXT`], the size limit of a Kubernetes Secret.

use gtmpl_value::{FromValue, Func, FuncError, Value};

/// The most text one function may return and one template may render.
pub const MAX_TEXT: usize = 1 << 20;

/// The replacements of gtmpl's `print`, `println`, `printf` and `urlquery`, to add to a template
/// before it parses (added functions take the place of the builtins of the same name).
pub const BUILTINS: &[(&str, Func)] = &[
    ("print", print as Func),
    ("println", println as Func),
    ("printf", printf as Func),
    ("urlquery", urlquery as Func),
];

/// A render's output, refused past [`MAX_TEXT`]: pass it to `Template::execute`.
#[derive(Default)]
pub struct Output(Vec<u8>);

impl Output {
    /// The rendered text (gtmpl writes UTF-8; anything else is replaced, never dropped silently).
    pub fn into_string(self) -> String {
        String::from_utf8(self.0).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

impl std::io::Write for Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(bytes.len()) > MAX_TEXT {
            return Err(std::io::Error::other(format!(
                "the rendered text would be longer than {MAX_TEXT} bytes"
            )));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `text` as the result of function `name`, if it is within [`MAX_TEXT`].
pub fn bounded(name: &str, text: String) -> Result<Value, FuncError> {
    if text.len() > MAX_TEXT {
        return too_long(name);
    }
    Ok(Value::String(text))
}

/// The error of function `name` whose result would pass [`MAX_TEXT`].
pub fn too_long(name: &str) -> Result<Value, FuncError> {
    Err(FuncError::Generic(format!(
        "{name}: the result would be longer than {MAX_TEXT} bytes"
    )))
}

/// How long `value` prints, counted only up to just past [`MAX_TEXT`] (the text is not built).
pub fn printed_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 = self.0.saturating_add(s.len());
            if self.0 > MAX_TEXT {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    if let Value::String(s) = value {
        return s.len();
    }
    let mut count = Count(0);
    // An error here only means the count passed the bound.
    let _ = std::fmt::write(&mut count, format_args!("{value}"));
    count.0
}

/// Runs gtmpl's text builtin `name` once its arguments fit, and bounds its result.
fn text_builtin(name: &str, args: &[Value], builtin: Func) -> Result<Value, FuncError> {
    // printf widths add at most 65535 per verb (`printf_format`); the arguments are the rest.
    let input = args
        .iter()
        .map(printed_len)
        .fold(0usize, usize::saturating_add);
    if input > MAX_TEXT {
        return too_long(name);
    }
    match builtin(args)? {
        Value::String(text) => bounded(name, text),
        other => Ok(other),
    }
}

fn print(args: &[Value]) -> Result<Value, FuncError> {
    text_builtin("print", args, gtmpl::funcs::print)
}

fn println(args: &[Value]) -> Result<Value, FuncError> {
    text_builtin("println", args, gtmpl::funcs::println)
}

fn urlquery(args: &[Value]) -> Result<Value, FuncError> {
    text_builtin("urlquery", args, gtmpl::funcs::urlquery)
}

/// gtmpl's `printf` once its format (which may come from the data) passed
/// [`crate::template_text::printf_format`], widths and precisions taken from the arguments by `*`
/// included.
fn printf(args: &[Value]) -> Result<Value, FuncError> {
    if let Some(Value::String(format)) = args.first() {
        let huge = |arg: &Value| i64::from_value(arg).is_some_and(|n| n.unsigned_abs() > 65535);
        crate::template_text::printf_format(format, args[1..].iter().any(huge))
            .map_err(FuncError::Generic)?;
    }
    text_builtin("printf", args, gtmpl::funcs::printf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str) -> Result<String, String> {
        let mut template = gtmpl::Template::default();
        template.add_funcs(BUILTINS);
        template.parse(text).map_err(|e| e.to_string())?;
        let mut out = Output::default();
        template
            .execute(&mut out, &gtmpl::Context::empty())
            .map_err(|e| e.to_string())?;
        Ok(out.into_string())
    }

    #[test]
    fn doubling_through_nested_blocks_is_refused() {
        // Found by the fuzz targets: 31 nested prints of a value with itself (2^32 bytes asked).
        for builtin in ["print . .", "println . .", "printf \"%s%s\" . ."] {
            let text = format!(
                "{{{{ with print \"ab\" }}}}{}{{{{ . }}}}{}",
                format!("{{{{ with {builtin} }}}}").repeat(30),
                "{{ end }}".repeat(31)
            );
            let err = render(&text).unwrap_err();
            assert!(
                err.contains("would be longer than 1048576 bytes"),
                "{builtin}: {err}"
            );
        }
    }

    #[test]
    fn output_made_of_many_small_actions_is_refused() {
        let err = render(&"{{ \"0123456789\" }}".repeat(120_000)).unwrap_err();
        assert!(err.contains("rendered text would be longer"), "{err}");
    }

    #[test]
    fn ordinary_use_is_unchanged() {
        let plain = |text: &str| gtmpl::template(text, Value::Nil).unwrap();
        for text in [
            r#"{{ print "a" 1 2 }}"#,
            r#"{{ println "a" }}"#,
            r#"{{ printf "%d-%s" 42 "x" }}"#,
            r#"{{ urlquery "a b&c" }}"#,
        ] {
            assert_eq!(render(text).unwrap(), plain(text), "{text}");
        }
        let err = render(r#"{{ printf "%99999d" 1 }}"#).unwrap_err();
        assert!(err.contains("65535"), "{err}");
    }

    #[test]
    fn printed_len_stops_counting_past_the_bound() {
        let big = Value::Array(vec![Value::String("x".repeat(MAX_TEXT)); 4]);
        let n = printed_len(&big);
        assert!(n > MAX_TEXT && n < 2 * MAX_TEXT + 16, "{n}");
        assert_eq!(printed_len(&Value::from(12345i64)), 5);
    }
}
