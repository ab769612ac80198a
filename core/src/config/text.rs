//! Bridges a gap between Triton's config.pbtxt dialect and prost-reflect's text-format parser:
//! protobuf's own parser accepts a list of messages without a colon (`input [ { ... } ]`),
//! prost-reflect wants `input: [ ... ]`. This inserts the colon, skipping strings and comments.

/// Returns the text with a `:` after every field name that is directly followed by `[`.
pub fn add_list_colons(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    // True when the last significant token was an identifier (a field name candidate).
    let mut after_ident = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'#' => {
                let end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                out.push_str(&text[i..end]);
                i = end;
            }
            b'"' | b'\'' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != c && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                out.push_str(&text[start..i]);
                after_ident = false;
            }
            b'[' => {
                if after_ident {
                    out.push(':');
                }
                out.push('[');
                i += 1;
                after_ident = false;
            }
            c if c.is_ascii_whitespace() => {
                out.push(c as char);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
                {
                    i += 1;
                }
                out.push_str(&text[start..i]);
                after_ident = true;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(ch);
                i += ch.len_utf8().max(1);
                after_ident = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::add_list_colons;

    #[test]
    fn inserts_colons_only_where_needed() {
        assert_eq!(
            add_list_colons("input [ { dims: [ 1 ] } ]"),
            "input :[ { dims: [ 1 ] } ]"
        );
        assert_eq!(add_list_colons("input: [ ]"), "input: [ ]");
        assert_eq!(
            add_list_colons("name: \"a [ b\" # x [\nout\n[ ]"),
            "name: \"a [ b\" # x [\nout\n:[ ]"
        );
        assert_eq!(add_list_colons("s: 'it\\'s [' x []"), "s: 'it\\'s [' x :[]");
    }
}
