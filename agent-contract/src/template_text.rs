//! Template text that gtmpl 0.7.1 (the Go-template engine of the agent and the operator) cannot
//! take without panicking or looping forever: checked on the text alone, before gtmpl sees it, so
//! both programs (and the webhook, at admission) refuse it with a message instead.

/// What gtmpl 0.7.1's lexer cannot take. It steps back one byte where it means one character, so
/// it panics (in its own thread, which aborts the agent) on a non-ASCII character in an action
/// outside quotes and comments (`{{ é }}`, a no-break space between words) and on one right before
/// a `{{-` trim marker (`€{{- .a }}`), and it can loop forever at the end of the text inside an
/// action (`{{ "}}" `). Its parser and executor recurse without a limit, so deep nesting of
/// parentheses or blocks (`else if` chains too) and `template` calls (a `define` may call itself)
/// overflow the stack, which no panic handler catches. Such templates are refused here; Unicode keys can still be read with
/// `index .Data "clé"` and Unicode text outside actions is fine.
pub fn lexable(text: &str) -> Result<(), String> {
    /// Far below what overflows a 2 MiB thread stack (about 1,500 levels), far above real use.
    const MAX_NESTING: usize = 64;
    let mut blocks: Vec<usize> = Vec::new();
    let refuse = |c: char, place: &str| {
        Err(format!(
            "does not parse: the non-ASCII character {c:?} {place} is not supported (quote it, e.g. index .Data \"{c}\")"
        ))
    };
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let body = &rest[open + 2..];
        if body.starts_with("- ")
            && let Some(c) = rest[..open].trim_end().chars().next_back()
            && !c.is_ascii()
        {
            return refuse(c, "right before {{-");
        }
        let code = body.strip_prefix("- ").unwrap_or(body);
        if let Some(comment) = code.strip_prefix("/*") {
            // A comment ends at `*/` and its delimiter; gtmpl reports anything else itself.
            let Some(end) = comment.find("*/") else {
                return Ok(());
            };
            rest = &comment[end + 2..];
            continue;
        }
        let mut words = code
            .split(|c: char| c.is_whitespace() || c == '}' || c == '(')
            .filter(|w| !w.is_empty());
        match (words.next(), words.next()) {
            (Some("if" | "with" | "range"), _) => blocks.push(1),
            (Some("else"), Some("if" | "with")) => {
                if let Some(top) = blocks.last_mut() {
                    *top += 1;
                }
            }
            (Some("end"), _) => {
                blocks.pop();
            }
            (Some(word @ ("define" | "template" | "block")), _) => {
                return Err(format!(
                    "does not parse: {word} is not supported (gtmpl does not bound its recursion)"
                ));
            }
            _ => {}
        }
        if blocks.iter().sum::<usize>() > MAX_NESTING {
            return Err(format!(
                "does not parse: blocks are nested more than {MAX_NESTING} deep"
            ));
        }
        let mut parens = 0usize;
        let mut quote = None;
        // gtmpl's lexer: a run of backslashes escapes the next other character, whatever its
        // length (so `"\\""` is one string).
        let mut escaped = false;
        let mut close = None;
        for (i, c) in code.char_indices() {
            match (quote, c) {
                (Some((q, _)), '\\') if q != '`' => escaped = true,
                // gtmpl ends a quoted string or character at a newline with an error.
                (Some((q, _)), '\n') if q != '`' => return Ok(()),
                (Some(_), _) if escaped => escaped = false,
                (Some((q, start)), c) if c == q => {
                    quote = None;
                    if !unquotes(&code[start..i]) {
                        return Err(format!(
                            "does not parse: the escapes in {q}{}{q} are not supported (use \\n, \\t, \\\" or \\\\)",
                            &code[start..i]
                        ));
                    }
                }
                (Some(_), _) => {}
                (None, '"' | '`' | '\'') => quote = Some((c, i + 1)),
                (None, '(') => {
                    parens += 1;
                    if parens > MAX_NESTING {
                        return Err(format!(
                            "does not parse: parentheses are nested more than {MAX_NESTING} deep"
                        ));
                    }
                }
                (None, ')') => parens = parens.saturating_sub(1),
                (None, '}') if code[i..].starts_with("}}") => {
                    close = Some(i + 2);
                    break;
                }
                (None, c) if !c.is_ascii() => return refuse(c, "in an action"),
                (None, _) => {}
            }
        }
        // `}}` inside a quoted string does not end the action: gtmpl then reaches the end of the
        // text inside it, where its lexer can step back forever (the agent hung).
        let Some(close) = close else {
            return Err("does not parse: an action opened with {{ is not closed with }}".into());
        };
        rest = &code[close..];
    }
    Ok(())
}

/// Whether gtmpl 0.7.1 gets through unquoting the text of a literal (quotes stripped; raw strings
/// are unquoted too). It follows gtmpl's own steps, which slice escapes by bytes (a panic inside a
/// character or past the end) and never move on from a `\x` or `\u` escape with fewer bytes left
/// than its digits need (an endless loop). Escapes gtmpl refuses are left to its own error.
fn unquotes(raw: &str) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let rest = &raw[i..];
        let step = if rest.starts_with('\\') {
            match rest.get(..2) {
                None => return false,
                Some(r"\x") => hex_escape(rest, 4, |hex| u8::from_str_radix(hex, 16).is_ok()),
                Some(r"\u") => hex_escape(rest, 6, |hex| u16::from_str_radix(hex, 16).is_ok()),
                // Exactly eight digits to the end, or gtmpl's error; either way it stops here.
                Some(r"\U") => return true,
                Some(r"\b" | r"\f" | r"\n" | r"\r" | r"\t" | r"\'" | r#"\""# | r"\\") => Some(2),
                Some(_) => return true,
            }
        } else {
            rest.chars().next().map(char::len_utf8)
        };
        match step {
            Some(0) => return false,
            Some(n) => i += n,
            None => return true,
        }
    }
    true
}

/// gtmpl's reading of `\x..` (`width` 4) and `\u....` (6) escapes: chunks of `width` bytes as
/// long as that many are left. `Some(0)`: it would loop or panic; `None`: it stops with an error;
/// otherwise how far it moves on.
fn hex_escape(s: &str, width: usize, digits: impl Fn(&str) -> bool) -> Option<usize> {
    let mut i = 0;
    while s.len() > i && s.len() - i >= width {
        match s.get(i + 2..i + width) {
            Some(hex) if s.is_char_boundary(i) => {
                if !digits(hex) {
                    return None;
                }
            }
            _ => return Some(0),
        }
        i += width;
    }
    Some(i)
}

/// gtmpl's `printf` reads a verb's flags by character index as if it were a byte index, takes
/// index `[0]` as `0 - 1`, and hands widths and precisions (also those taken from the arguments by
/// `*`, `huge_star_argument` says whether one is past 65535) to Rust's formatter, which panics past
/// 65535. The format may come from the data, so each verb is checked first: ASCII only, numbers of
/// at most 65535, indexes from 1.
pub fn printf_format(format: &str, huge_star_argument: bool) -> Result<(), String> {
    const VERBS: &str = "vVtTbcdoqxXUeEfFgGsp";
    let mut chars = format.char_indices().peekable();
    while let Some((from, c)) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.next_if(|&(_, c)| c == '%').is_some() {
            continue;
        }
        let Some((end, _)) = chars.by_ref().find(|&(_, c)| VERBS.contains(c)) else {
            return Ok(()); // gtmpl reports the unterminated verb
        };
        let verb = &format[from + 1..end];
        let bad = |why: &str| Err(format!("printf: verb %{verb}…: {why}"));
        if !verb.is_ascii() {
            return bad("only ASCII flags, widths and indexes are supported");
        }
        let mut numbers = verb
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty());
        if numbers.any(|n| n.parse::<u32>().map_or(true, |n| n > 65535)) {
            return bad("widths, precisions and indexes go up to 65535");
        }
        if verb.split('[').skip(1).any(|index| index.starts_with("0]")) {
            return bad("argument indexes start at 1");
        }
        if verb.contains('*') && huge_star_argument {
            return bad("widths and precisions from arguments go up to 65535");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_gtmpl_cannot_take() {
        for bad in [
            "{{ é }}",
            "€{{- .a }}",
            r#"{{ "}}" "#,
            "{{ `a\\` }}",
            r#"{{ "a\x" }}"#,
        ] {
            assert!(lexable(bad).is_err(), "{bad:?}");
        }
        for good in [
            "{{ .a }}",
            "é {{ .a }}",
            r#"{{ index .Data "clé" }}"#,
            "{{/* é */}}",
        ] {
            assert_eq!(lexable(good), Ok(()), "{good:?}");
        }
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(6000), ")".repeat(6000));
        assert!(lexable(&deep).is_err(), "deep parentheses");
        let blocks = "{{ if .a }}".repeat(100) + &"{{ end }}".repeat(100);
        assert!(lexable(&blocks).is_err(), "deep blocks");
        assert!(lexable(r#"{{ define "x" }}{{ template "x" }}{{ end }}"#).is_err());
        let shallow = "{{ if .a }}{{ with .b }}{{ (print (print 1)) }}{{ end }}{{ end }}";
        assert_eq!(lexable(shallow), Ok(()));
        assert!(printf_format("%70000d", false).is_err());
        assert!(printf_format("%[0]d", false).is_err());
        assert!(printf_format("%*d", true).is_err());
        assert_eq!(printf_format("%5d %s %%", false), Ok(()));
    }
}
