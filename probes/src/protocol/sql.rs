//! What a span keeps of a SQL statement: its text with every literal replaced by `?` (as the
//! OpenTelemetry conventions advise for `db.query.text`), its operation (the first keyword:
//! `SELECT`) and the one table it names, when it names exactly one.
//!
//! Shared by the SQL protocols, each reading its own [`Dialect`]. Literals are string constants
//! in all their PostgreSQL forms (`'..'` with `''`, `E'..'` with backslash escapes, `B'..'`,
//! `X'..'`, `U&'..'`, dollar-quoted `$tag$..$tag$`) or MySQL's (`'..'` and `".."`, both with
//! backslash escapes, `_charset'..'`, `X'..'`) and numbers. Comments are dropped (they can hold
//! anything; MySQL's `#` too). Identifiers (PostgreSQL's `".."`, MySQL's backquoted), keywords,
//! operators and parameters (`$1`, `?`) are kept. A text cut by the capture is sanitised as far
//! as it goes: a literal the cut falls in is a `?` too, so nothing of a value ever shows.

/// Longest sanitised text a span keeps.
const MAX_TEXT: usize = 2048;

/// Whose SQL a text is: where they differ, quoting and the case of table names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `".."` quotes an identifier; unquoted names fold to lower case.
    Postgres,
    /// `".."` is a string (the default `sql_mode`; with `ANSI_QUOTES` it would be a name, which
    /// is then hidden as if a value: never the other way round); `` `..` `` quotes a name;
    /// unquoted names keep their case (table names are case-sensitive on Linux).
    Mysql,
}

/// A statement as a span shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// `db.operation.name`: the first keyword, upper-cased (`BATCH` for several statements in
    /// one Query, `UNKNOWN` for a text that starts with none).
    pub operation: String,
    /// `db.collection.name`: the table, when the statement names exactly one.
    pub collection: Option<String>,
    /// `db.query.text`: sanitised; ends with `…` where the capture cut it.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted word, upper-cased (keywords and identifiers alike), and as written.
    Word(String, String),
    /// A quoted identifier, as written.
    Quoted(String),
    Punct(u8),
    Literal,
}

/// Sanitises and summarises a statement's text (`whole`: not cut by the capture).
pub fn summarize(raw: &[u8], whole: bool, dialect: Dialect) -> Statement {
    let text = String::from_utf8_lossy(raw);
    let (mut sanitized, tokens, statements, cut) = scan(text.as_bytes(), dialect);
    if !whole || cut {
        sanitized.push('…');
    }
    let (operation, collection) = if statements > 1 {
        ("BATCH".to_string(), None)
    } else {
        (operation(&tokens), collection(&tokens, dialect))
    };
    Statement {
        operation,
        collection,
        text: sanitized,
    }
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word(b: u8) -> bool {
    is_word_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The sanitised text, its tokens, how many statements it holds, and whether it stopped early
/// at a literal whose end cannot be known.
fn scan(s: &[u8], dialect: Dialect) -> (String, Vec<Token>, usize, bool) {
    let mysql = dialect == Dialect::Mysql;
    let mut out: Vec<u8> = Vec::with_capacity(s.len().min(MAX_TEXT));
    let mut tokens = Vec::new();
    let mut statements = 0;
    let mut open_statement = false;
    let mut i = 0;
    let mut stopped = false;
    // MySQL's `--` starts a comment only before a space or a control character (`1--1` is
    // `1 - -1`).
    let dash_comment = |i: usize| {
        s.get(i + 1) == Some(&b'-')
            && (!mysql
                || s.get(i + 2)
                    .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()))
    };
    let push_space = |out: &mut Vec<u8>| {
        if out.last().is_some_and(|b| *b != b' ') {
            out.push(b' ');
        }
    };
    while i < s.len() {
        let b = s[i];
        // A statement starts at its first token after a `;`.
        let comment = (b == b'-' && dash_comment(i))
            || (b == b'/' && s.get(i + 1) == Some(&b'*'))
            || (mysql && b == b'#');
        if !b.is_ascii_whitespace() && b != b';' && !comment && !open_statement {
            open_statement = true;
            statements += 1;
        }
        match b {
            b if b.is_ascii_whitespace() => {
                push_space(&mut out);
                i += 1;
            }
            b'#' if mysql => {
                i = memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |n| i + n + 1);
                push_space(&mut out);
            }
            b'-' if dash_comment(i) => {
                i = memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |n| i + n + 1);
                push_space(&mut out);
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL (in MySQL they do not, and reading them as
                // nested only drops more).
                let mut depth = 0;
                while i < s.len() {
                    if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                push_space(&mut out);
            }
            b'\'' | b'"' if mysql => {
                strip_prefix(&mut out, &mut tokens);
                out.push(b'?');
                tokens.push(Token::Literal);
                // A backslash escapes the next byte unless the session runs with
                // NO_BACKSLASH_ESCAPES, or the client's character set (sjis, gbk, big5, cp932)
                // ends a character with it. Neither is known here: where the two readings end
                // the literal apart, the text stops, so no reading shows a value.
                let escaped = skip_string(s, i + 1, true, b);
                if escaped != skip_string(s, i + 1, false, b) {
                    stopped = true;
                    break;
                }
                i = escaped;
            }
            b'\'' => {
                // A one-letter prefix (E, B, X, N) or U& belongs to the literal.
                let escapes = strip_prefix(&mut out, &mut tokens);
                i = skip_string(s, i + 1, escapes, b'\'');
                out.push(b'?');
                tokens.push(Token::Literal);
            }
            b'`' if mysql => {
                let start = i;
                i = memchr::memchr(b'`', &s[i + 1..]).map_or(s.len(), |n| i + n + 2);
                let quoted = &s[start..i];
                out.extend_from_slice(quoted);
                let inner = quoted
                    .get(1..quoted.len().saturating_sub(1))
                    .unwrap_or_default();
                tokens.push(Token::Quoted(String::from_utf8_lossy(inner).into_owned()));
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match memchr::memchr(b'"', &s[i.min(s.len())..]) {
                        Some(n) if s.get(i + n + 1) == Some(&b'"') => i += n + 2,
                        Some(n) => {
                            i += n + 1;
                            break;
                        }
                        None => {
                            i = s.len();
                            break;
                        }
                    }
                }
                let quoted = &s[start..i];
                out.extend_from_slice(quoted);
                let inner = quoted
                    .get(1..quoted.len().saturating_sub(1))
                    .unwrap_or_default();
                tokens.push(Token::Quoted(
                    String::from_utf8_lossy(inner).replace("\"\"", "\""),
                ));
            }
            b'$' if !mysql => match dollar_tag(s, i) {
                Some(tag_end) => {
                    let tag = &s[i..tag_end];
                    i = find(s, tag_end, tag).map_or(s.len(), |n| n + tag.len());
                    out.push(b'?');
                    tokens.push(Token::Literal);
                }
                None => {
                    // A parameter ($1) is kept as written.
                    let start = i;
                    i += 1;
                    while i < s.len() && s[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.extend_from_slice(&s[start..i]);
                    tokens.push(Token::Punct(b'$'));
                }
            },
            b if b.is_ascii_digit()
                || (b == b'.' && s.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                i = skip_number(s, i);
                out.push(b'?');
                tokens.push(Token::Literal);
            }
            b if is_word_start(b) => {
                let start = i;
                while i < s.len() && is_word(s[i]) {
                    i += 1;
                }
                let word = &s[start..i];
                out.extend_from_slice(word);
                let word = String::from_utf8_lossy(word);
                tokens.push(Token::Word(word.to_ascii_uppercase(), word.into_owned()));
            }
            b';' => {
                out.push(b';');
                tokens.push(Token::Punct(b';'));
                open_statement = false;
                i += 1;
            }
            b => {
                out.push(b);
                tokens.push(Token::Punct(b));
                i += 1;
            }
        }
        if out.len() > MAX_TEXT {
            break;
        }
    }
    while out.last() == Some(&b' ') {
        out.pop();
    }
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if text.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    (text, tokens, statements, stopped)
}

/// Drops a string prefix just written (`E`, `B`, `X`, `N`, `U&`, MySQL's `_utf8mb4`); whether
/// it was `E` (backslash escapes).
fn strip_prefix(out: &mut Vec<u8>, tokens: &mut Vec<Token>) -> bool {
    if let Some(Token::Word(_, raw)) = tokens.last() {
        if raw.starts_with('_') && out.ends_with(raw.as_bytes()) {
            out.truncate(out.len() - raw.len());
            tokens.pop();
            return false;
        }
    }
    let n = out.len();
    let before = |k: usize| n < k + 1 || !is_word(out[n - k - 1]);
    if n >= 2 && out[n - 1] == b'&' && out[n - 2].eq_ignore_ascii_case(&b'u') && before(2) {
        out.truncate(n - 2);
        tokens.truncate(tokens.len().saturating_sub(2));
        return false;
    }
    if n >= 1 && b"eEbBxXnN".contains(&out[n - 1]) && before(1) {
        let escapes = out[n - 1].eq_ignore_ascii_case(&b'e');
        out.truncate(n - 1);
        tokens.pop();
        return escapes;
    }
    false
}

/// Past the end of a string constant quoted by `quote` whose body starts at `i`.
fn skip_string(s: &[u8], mut i: usize, escapes: bool, quote: u8) -> usize {
    while i < s.len() {
        match s[i] {
            b'\\' if escapes => i += 2,
            q if q == quote && s.get(i + 1) == Some(&quote) => i += 2,
            q if q == quote => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// The end of a dollar-quote tag (`$$`, `$tag$`) starting at `i`, if one starts there.
fn dollar_tag(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if s.get(j).is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    while j < s.len() && (is_word_start(s[j]) || s[j].is_ascii_digit()) {
        j += 1;
    }
    (s.get(j) == Some(&b'$')).then_some(j + 1)
}

fn find(s: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    s.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|n| from + n)
}

fn skip_number(s: &[u8], mut i: usize) -> usize {
    if s[i] == b'0' && s.get(i + 1).is_some_and(|b| b"xXoObB".contains(b)) {
        i += 2;
        while i < s.len() && (s[i].is_ascii_hexdigit() || s[i] == b'_') {
            i += 1;
        }
        return i;
    }
    while i < s.len() && (s[i].is_ascii_digit() || s[i] == b'.' || s[i] == b'_') {
        i += 1;
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        let mut j = i + 1;
        if j < s.len() && (s[j] == b'+' || s[j] == b'-') {
            j += 1;
        }
        if j < s.len() && s[j].is_ascii_digit() {
            i = j;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

/// The statement's first keyword (after any opening parentheses); for `WITH`, the verb of the
/// statement the common table expressions serve.
fn operation(tokens: &[Token]) -> String {
    let mut first = tokens.iter().skip_while(|t| **t == Token::Punct(b'('));
    let word = match first.next() {
        // Keywords are ASCII letters: anything else names no RED series.
        Some(Token::Word(word, _))
            if word.len() <= 32 && word.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            word.clone()
        }
        _ => return "UNKNOWN".to_string(),
    };
    if word != "WITH" {
        return word;
    }
    let mut depth = 0i32;
    for token in tokens {
        match token {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth -= 1,
            Token::Word(w, _)
                if depth == 0
                    && matches!(
                        w.as_str(),
                        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE"
                    ) =>
            {
                return w.clone()
            }
            _ => {}
        }
    }
    word
}

/// Words after a table that end its reference (anything else there is an alias).
const AFTER_TABLE: &[&str] = &[
    "WHERE",
    "GROUP",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "FOR",
    "HAVING",
    "WINDOW",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "CROSS",
    "NATURAL",
    "ON",
    "USING",
    "RETURNING",
    "SET",
    "VALUES",
    "DEFAULT",
    "SELECT",
    "FETCH",
    "TABLESAMPLE",
    "OVERRIDING",
    "ON",
    "FROM",
    "WITH",
];

/// Words that cannot be a table's name where one is expected.
const NOT_A_TABLE: &[&str] = &["SELECT", "LATERAL", "VALUES", "WITH", "ROWS", "FROM"];

/// The one table the statement names: after `FROM` (of a SELECT or DELETE at the same
/// parenthesis depth), `JOIN`, `INTO`, `UPDATE`, `TABLE` (TRUNCATE, LOCK), `TRUNCATE`, `COPY`.
/// None when it names none, several (a comma list, a join, a subquery's), or a function.
fn collection(tokens: &[Token], dialect: Dialect) -> Option<String> {
    let mut tables: Vec<String> = Vec::new();
    // Per parenthesis depth: whether a SELECT or DELETE opened there (its FROM names tables;
    // another FROM, as in EXTRACT(x FROM y), does not).
    let mut selects = vec![false];
    // UPDATE, TRUNCATE and COPY name a table only as the statement's verb (not in
    // `FOR UPDATE` or `DO UPDATE SET`).
    let verb = tokens.iter().position(|t| *t != Token::Punct(b'('));
    for (i, token) in tokens.iter().enumerate() {
        let columns_may_follow = match token {
            Token::Punct(b'(') => {
                selects.push(false);
                continue;
            }
            Token::Punct(b')') => {
                if selects.len() > 1 {
                    selects.pop();
                }
                continue;
            }
            Token::Word(w, _) => match w.as_str() {
                "SELECT" | "DELETE" => {
                    if let Some(top) = selects.last_mut() {
                        *top = true;
                    }
                    continue;
                }
                "FROM" if selects.last() == Some(&true) => false,
                "JOIN" | "TABLE" => false,
                "INTO" => true,
                // UPDATE ... FROM names more tables, as a SELECT's FROM does.
                "UPDATE" if Some(i) == verb => {
                    if let Some(top) = selects.last_mut() {
                        *top = true;
                    }
                    false
                }
                "TRUNCATE" if Some(i) == verb => false,
                "COPY" if Some(i) == verb => true,
                _ => continue,
            },
            _ => continue,
        };
        match table_at(tokens, i + 1, columns_may_follow, dialect) {
            Reference::Table(name, next) => {
                if !tables.contains(&name) {
                    tables.push(name);
                }
                if tokens.get(next) == Some(&Token::Punct(b',')) {
                    return None; // FROM a, b
                }
            }
            Reference::Other => {}
            Reference::Unknown => return None,
        }
    }
    match tables.len() {
        1 => tables.pop(),
        _ => None,
    }
}

enum Reference {
    /// A table's name (schema-qualified as written) and the token after it and its alias.
    Table(String, usize),
    /// Not a table's place after all (`TRUNCATE TABLE` is followed by the table, `FROM (`).
    Other,
    /// A function, LATERAL, or something this reading cannot tell: no collection is given.
    Unknown,
}

/// The table named at `i`; `columns_may_follow`: a parenthesis after it lists columns (INSERT
/// INTO, COPY) rather than a function's arguments.
fn table_at(
    tokens: &[Token],
    mut i: usize,
    columns_may_follow: bool,
    dialect: Dialect,
) -> Reference {
    if let Some(Token::Word(w, _)) = tokens.get(i) {
        if w == "ONLY" || w == "TABLE" {
            i += 1;
        }
    }
    let mut name = String::new();
    loop {
        match tokens.get(i) {
            Some(Token::Word(w, _)) if name.is_empty() && NOT_A_TABLE.contains(&w.as_str()) => {
                return Reference::Unknown
            }
            Some(Token::Word(w, raw)) if !w.contains('$') || dialect == Dialect::Mysql => {
                match dialect {
                    Dialect::Postgres => name.push_str(&raw.to_ascii_lowercase()),
                    Dialect::Mysql => name.push_str(raw),
                }
            }
            Some(Token::Quoted(q)) => name.push_str(q),
            Some(Token::Punct(b'(')) if name.is_empty() => return Reference::Other,
            _ => return Reference::Unknown,
        }
        i += 1;
        if tokens.get(i) == Some(&Token::Punct(b'.')) {
            name.push('.');
            i += 1;
            continue;
        }
        break;
    }
    match tokens.get(i) {
        Some(Token::Punct(b'(')) if !columns_may_follow => return Reference::Unknown, // a function
        Some(Token::Word(w, _)) if w == "AS" => i += 2,
        Some(Token::Word(w, _)) if !AFTER_TABLE.contains(&w.as_str()) => i += 1,
        _ => {}
    }
    Reference::Table(name, i)
}
