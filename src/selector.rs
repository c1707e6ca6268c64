//! Topic selectors: which topics a token's claims, `auth.private_topics` (and, with Mercure, a
//! subscription) name. One room, so every reader of a selector matches it the same way: `*`, an RFC 6570
//! URI template (any selector with a `{…}` expression, as Mercure's claims write them:
//! `https://example.com/books/{id}`), `prefix*`, or an exact name.

use crate::domain::TopicName;

/// `*` matches everything, a URI template the topics it can expand to, `prefix*` any topic starting
/// with prefix, anything else itself.
pub fn matches(selector: &str, topic: &str) -> bool {
    if selector == "*" || selector == topic {
        return true;
    }
    if let Some(template) = Template::parse(selector) {
        return template.matches(topic);
    }
    match selector.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => false,
    }
}

/// Whether some valid topic name matches `selector` (`""`, or a name with a control character, matches
/// none).
pub(crate) fn can_match_a_topic(selector: &str) -> bool {
    if selector.chars().any(char::is_control) {
        return false;
    }
    match selector.strip_suffix('*') {
        Some(_) => true,
        None => Template::parse(selector).is_some() || TopicName::parse(selector, usize::MAX).is_ok(),
    }
}

/// What one subscription selects: one topic (indexed by name in the hub), or a pattern that each
/// topic's events are matched against (`*`, a URI template, a URL pattern).
#[derive(Debug)]
pub enum Selection {
    Topic(TopicName),
    Pattern(Pattern),
}

/// A subscription's pattern, compiled once when the stream opens.
#[derive(Debug)]
pub enum Pattern {
    /// `*`: every topic.
    Any,
    /// An RFC 6570 URI template (Mercure 0.x `topic=`).
    Template(Template),
    /// A WHATWG URL pattern (`matchURLPattern=`), relative ones against the hub's URL.
    Url(Box<urlpattern::UrlPattern>),
}

/// The base relative URL patterns and topics are resolved against (the spec's "hub URL"): the same for
/// both, so `/.well-known/mercure/subscriptions/:topic` matches the hub's own relative topics.
const HUB_BASE: &str = "https://hub.invalid/.well-known/mercure";

impl Selection {
    /// A `topic=`/`match=` selector: `*`, a URI template, or a topic.
    pub fn of_topic_selector(value: &str, max_len: usize) -> Result<Selection, crate::domain::TopicError> {
        if value == "*" {
            return Ok(Selection::Pattern(Pattern::Any));
        }
        if let Some(template) = Template::parse(value) {
            return Ok(Selection::Pattern(Pattern::Template(template)));
        }
        TopicName::parse(value, max_len).map(Selection::Topic)
    }

    /// A `matchURLPattern=` selector; the error completes "the URL pattern …".
    pub fn of_url_pattern(value: &str) -> Result<Selection, String> {
        if value == "*" {
            return Ok(Selection::Pattern(Pattern::Any));
        }
        let base = url::Url::parse(HUB_BASE).map_err(|e| e.to_string())?;
        let init = urlpattern::UrlPatternInit::parse_constructor_string::<regex::Regex>(value, Some(base))
            .map_err(|e| format!("does not parse: {e}"))?;
        let pattern = urlpattern::UrlPattern::parse(init, Default::default())
            .map_err(|e| format!("does not compile: {e}"))?;
        Ok(Selection::Pattern(Pattern::Url(Box::new(pattern))))
    }
}

impl Pattern {
    /// Whether `topic` is selected. A URL pattern sees the topic as a URL (relative ones against the
    /// hub's); a topic that is no URL matches none.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Template(t) => t.matches(topic),
            Pattern::Url(p) => url::Url::parse(HUB_BASE)
                .and_then(|base| base.join(topic))
                .ok()
                .and_then(|url| p.test(urlpattern::UrlPatternMatchInput::Url(url)).ok())
                .unwrap_or(false),
        }
    }
}

/// Longer templates are matched as plain names: a bound on the matcher's table (parts × topic length).
const MAX_TEMPLATE_PARTS: usize = 32;

/// A URI template read for matching: literal text and, per expression, the language its expansions
/// belong to (RFC 6570 § 3.2: what each operator may produce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{var}`: characters of one simple value (no `/`, `?`, `#`, `&`, `=`).
    Simple,
    /// `{+var}`: anything, reserved characters included.
    Reserved,
    /// `{#var}`: nothing, or `#` and anything.
    Fragment,
    /// `{/var}`, `{.var}`, `{;var}`: any number of `<prefix><value>` groups.
    Repeat(char),
    /// `{?var}`: nothing, or `?` and a query; `{&var}`: any number of `&name=value` groups.
    Query(char),
}

/// A character a simple expansion may hold (unreserved, percent-encoded, a list's comma, or any
/// non-ASCII letter an IRI keeps as is).
fn simple_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '%' | ',') || !c.is_ascii()
}

impl Template {
    /// The template in `selector`, or `None` when it holds no complete `{…}` expression (then it is a
    /// name, or `prefix*`).
    pub fn parse(selector: &str) -> Option<Template> {
        if !selector.contains('{') {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = selector;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}')? + open;
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let expr = &rest[open + 1..close];
            let (op, vars) = match expr.chars().next()? {
                c @ ('+' | '#' | '/' | '.' | ';' | '?' | '&') => (Some(c), &expr[1..]),
                _ => (None, expr),
            };
            let var_ok = |v: &str| {
                let name = v.split(':').next().unwrap_or("").trim_end_matches('*');
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '%'))
            };
            if !vars.split(',').all(var_ok) {
                return None;
            }
            parts.push(match op {
                None => Part::Simple,
                Some('+') => Part::Reserved,
                Some('#') => Part::Fragment,
                Some(c @ ('?' | '&')) => Part::Query(c),
                Some(c) => Part::Repeat(c),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        (parts.len() <= MAX_TEMPLATE_PARTS).then_some(Template { parts })
    }

    /// Whether `topic` is one of the template's expansions. A table of (part, position) answers keeps
    /// the cost at most parts × length² character steps, whatever the template.
    pub fn matches(&self, topic: &str) -> bool {
        let chars: Vec<char> = topic.chars().collect();
        let mut memo = vec![None; (self.parts.len() + 1) * (chars.len() + 1)];
        Matcher {
            parts: &self.parts,
            chars: &chars,
            memo: &mut memo,
        }
        .at(0, 0)
    }
}

struct Matcher<'a> {
    parts: &'a [Part],
    chars: &'a [char],
    memo: &'a mut Vec<Option<bool>>,
}

impl Matcher<'_> {
    fn at(&mut self, part: usize, pos: usize) -> bool {
        let slot = part * (self.chars.len() + 1) + pos;
        if let Some(known) = self.memo[slot] {
            return known;
        }
        let answer = self.compute(part, pos);
        self.memo[slot] = Some(answer);
        answer
    }

    /// Every end of a run of `class` characters from `from`, tried as the start of part `next`.
    fn run(&mut self, from: usize, class: fn(char) -> bool, then: impl Fn(&mut Self, usize) -> bool) -> bool {
        let mut end = from;
        loop {
            if then(self, end) {
                return true;
            }
            match self.chars.get(end) {
                Some(&c) if class(c) => end += 1,
                _ => return false,
            }
        }
    }

    fn compute(&mut self, part: usize, pos: usize) -> bool {
        let Some(p) = self.parts.get(part) else {
            return pos == self.chars.len();
        };
        let next = part + 1;
        let starts = |m: &Self, c: char| m.chars.get(pos) == Some(&c);
        match p {
            Part::Literal(text) => {
                let mut at = pos;
                for want in text.chars() {
                    if self.chars.get(at) != Some(&want) {
                        return false;
                    }
                    at += 1;
                }
                self.at(next, at)
            }
            Part::Simple => self.run(pos, simple_char, |m, end| m.at(next, end)),
            Part::Reserved => self.run(pos, |_| true, |m, end| m.at(next, end)),
            Part::Fragment => {
                self.at(next, pos)
                    || (starts(self, '#') && self.run(pos + 1, |_| true, |m, end| m.at(next, end)))
            }
            Part::Repeat(prefix) => {
                let value = if *prefix == ';' {
                    |c: char| simple_char(c) || c == '='
                } else {
                    simple_char
                };
                // One more group (which consumes the prefix, so the table stays finite), or the next part.
                self.at(next, pos)
                    || (starts(self, *prefix) && self.run(pos + 1, value, |m, end| m.at(part, end)))
            }
            Part::Query(prefix) => {
                let value = |c: char| simple_char(c) || c == '=' || c == '&';
                self.at(next, pos)
                    || (starts(self, *prefix) && self.run(pos + 1, value, |m, end| m.at(next, end)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert!(matches("*", "anything"));
        assert!(matches("user.*", "user.42"));
        assert!(!matches("user.*", "users"));
        assert!(matches("news", "news"));
        assert!(!matches("news", "news2"));
    }

    #[test]
    fn uri_templates() {
        let books = "https://example.com/books/{id}";
        assert!(matches(books, "https://example.com/books/1"));
        assert!(matches(books, "https://example.com/books/caf%C3%A9"));
        assert!(matches(books, "https://example.com/books/"));
        assert!(!matches(books, "https://example.com/books/1/reviews"));
        assert!(!matches(books, "https://example.com/books"));
        assert!(!matches(books, "https://example.org/books/1"));
        assert!(matches(
            "https://example.com/{+path}",
            "https://example.com/a/b?c=d"
        ));
        assert!(matches(
            "/.well-known/mercure/subscriptions{/topic}{/subscriber}",
            "/.well-known/mercure/subscriptions"
        ));
        assert!(matches(
            "/.well-known/mercure/subscriptions{/topic}{/subscriber}",
            "/.well-known/mercure/subscriptions/https%3A%2F%2Fa/urn%3Auuid%3A1"
        ));
        assert!(matches(
            "https://example.com/books{?page,sort}",
            "https://example.com/books?page=2&sort=a"
        ));
        assert!(matches(
            "https://example.com/books{?page}",
            "https://example.com/books"
        ));
        assert!(matches(
            "https://example.com/books/{id}{#part}",
            "https://example.com/books/1#x/y"
        ));
        assert!(matches("https://example.com/{a}.{b}", "https://example.com/x.y"));
        // Not templates: an unclosed or empty expression is a name.
        assert!(Template::parse("a{b").is_none());
        assert!(Template::parse("a{}").is_none());
        assert!(matches("a{}", "a{}"));
    }

    #[test]
    fn url_patterns() {
        let Ok(Selection::Pattern(books)) = Selection::of_url_pattern("https://example.com/books/:id") else {
            panic!("the pattern compiles");
        };
        assert!(books.matches("https://example.com/books/1"));
        assert!(!books.matches("https://example.com/books/1/reviews"));
        assert!(!books.matches("https://example.org/books/1"));
        let Ok(Selection::Pattern(own)) = Selection::of_url_pattern("/.well-known/mercure/subscriptions/:t")
        else {
            panic!("a relative pattern compiles");
        };
        assert!(own.matches("/.well-known/mercure/subscriptions/x"));
        assert!(Selection::of_url_pattern("https://example.com/(").is_err());
    }

    #[test]
    fn template_matching_stays_bounded() {
        let template = "{a}{b}{c}{d}{e}{f}{g}{h}x";
        let topic = "a".repeat(128);
        // Without the table this backtracks through 128^8 splits; with it, a few hundred thousand steps.
        assert!(!matches(template, &topic));
    }
}
