//! Handlebars rendering in strict mode, with the host's default templates
//! and the helpers templates may use.
//!
//! Helpers: `short_sha SHA`, `pluralize N "word" ["plural"]`, `duration MS`,
//! `relative_time AT_MS`, `truncate TEXT N`, `json VALUE`.
//!
//! A template that does not compile or render is an error here; falling
//! back to the default (and reporting the fault) is the caller's choice.
//!
//! Templates come from operators and from plugins, and both can be wrong
//! in ways that never end: six nested `{{#each}}` over fifty commits is
//! 15 billion iterations. So a render is bounded while it runs, not after:
//! its source size and block nesting before it starts, every `{{#each}}`
//! iteration against [`MAX_ITERATIONS`], and every written piece against
//! [`MAX_OUTPUT`] and the [`RENDER_TIME`] deadline. Over a bound the render
//! stops at once with an error saying which.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use handlebars::{
    handlebars_helper, no_escape, BlockContext, BlockParams, Context, Handlebars, Helper,
    HelperDef, HelperResult, Output, RenderContext, RenderErrorReason, Renderable,
};
use serde_json::{json, Value};

use crate::events::{Event, EventKind};

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject template.
    pub subject: String,
    /// The body template.
    pub body: String,
    /// Email only.
    pub html: Option<String>,
}

/// One message's templates (handlebars source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    /// The subject.
    pub subject: String,
    /// The text body.
    pub body: String,
    /// The HTML body (email only).
    pub html: Option<String>,
}

// Null-tolerant: a template shared by events with and without a commit
// should not need an `#if` around every sha.
handlebars_helper!(short_sha: |sha: Json| sha.as_str().unwrap_or_default().chars().take(10).collect::<String>());
handlebars_helper!(pluralize: |n: u64, word: str, *args| {
    let plural = args.first().and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| format!("{word}s"));
    format!("{n} {}", if n == 1 { word.to_string() } else { plural })
});
handlebars_helper!(duration: |ms: u64| crate::ui::duration(Duration::from_millis(ms)));
handlebars_helper!(relative_time: |at_ms: u64| relative(at_ms, crate::model::now_ms()));
handlebars_helper!(truncate: |text: Json, n: u64| {
    let text = text.as_str().unwrap_or_default();
    let n = n as usize;
    if text.chars().count() <= n { text.to_string() } else { format!("{}…", text.chars().take(n.saturating_sub(1)).collect::<String>()) }
});
handlebars_helper!(to_json: |v: Json| serde_json::to_string(v).unwrap_or_default());

/// "3 minutes ago", "in 10 seconds", "just now".
fn relative(at_ms: u64, now_ms: u64) -> String {
    let (secs, future) = if at_ms > now_ms {
        ((at_ms - now_ms) / 1000, true)
    } else {
        ((now_ms - at_ms) / 1000, false)
    };
    if secs < 5 {
        return "just now".into();
    }
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    let amount = format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// What a template writes, which decides how values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Plain text (subjects, text bodies): values as they are.
    Text,
    /// An HTML body: values HTML-escaped.
    Html,
    /// A webhook's JSON body: values escaped as the inside of a JSON
    /// string, so a commit subject cannot add keys; `{{json x}}` writes
    /// JSON as it is.
    Json,
}

/// A strict registry with gitpulse's helpers, escaping for `part`.
fn registry(part: Part) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    match part {
        Part::Text => hb.register_escape_fn(no_escape),
        Part::Html => {}
        Part::Json => hb.register_escape_fn(json_string_escape),
    }
    hb.register_helper("each", Box::new(BoundedEach));
    hb.register_helper("short_sha", Box::new(short_sha));
    hb.register_helper("pluralize", Box::new(pluralize));
    hb.register_helper("duration", Box::new(duration));
    hb.register_helper("relative_time", Box::new(relative_time));
    hb.register_helper("truncate", Box::new(truncate));
    match part {
        Part::Json => hb.register_helper("json", Box::new(raw_json)),
        _ => hb.register_helper("json", Box::new(to_json)),
    }
    hb
}

/// `text` as the inside of a JSON string (quotes, backslashes and control
/// characters escaped).
fn json_string_escape(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// `{{json VALUE}}` in a JSON body: the value's JSON, not escaped again.
fn raw_json(
    h: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let value = h
        .param(0)
        .ok_or(handlebars::RenderErrorReason::ParamNotFoundForIndex(
            "json", 0,
        ))?;
    out.write(&serde_json::to_string(value.value()).unwrap_or_default())?;
    Ok(())
}

/// The most a rendered part may weigh. Bigger is a template (or a
/// plugin's) gone wrong, not a message anyone reads.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// The most `{{#each}}` iterations one render may take, all loops together:
/// the default templates take a few hundred.
pub const MAX_ITERATIONS: u64 = 100_000;
/// The deepest block nesting (`{{#each}}`, `{{#if}}`, …) a template may have.
pub const MAX_NESTING: usize = 8;
/// The largest template source.
pub const MAX_TEMPLATE: usize = 64 * 1024;
/// The longest one part may take to render.
pub const RENDER_TIME: Duration = Duration::from_millis(500);

/// What the render running on this thread may still spend. Set by
/// [`render_one`] for the length of one render (helpers cannot be handed
/// state of their own), read by `{{#each}}` and by the output.
struct Budget {
    iterations: Cell<u64>,
    deadline: Cell<Option<Instant>>,
    /// The bound that stopped the render, for its error.
    over: Cell<Option<&'static str>>,
}

thread_local! {
    static BUDGET: Budget = const {
        Budget {
            iterations: Cell::new(0),
            deadline: Cell::new(None),
            over: Cell::new(None),
        }
    };
}

/// Stops the render with `why` (remembered for its error message).
fn over(why: &'static str) -> std::io::Error {
    BUDGET.with(|b| b.over.set(Some(why)));
    std::io::Error::other(why)
}

fn past_deadline() -> bool {
    BUDGET.with(|b| b.deadline.get().is_some_and(|d| Instant::now() >= d))
}

/// A rendered part's text, refused as soon as it outgrows [`MAX_OUTPUT`] or
/// the render its deadline.
#[derive(Default)]
struct BoundedText(Vec<u8>);

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(over("output"));
        }
        if past_deadline() {
            return Err(over("time"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `{{#each}}` as handlebars has it (arrays and objects, `@index`,
/// `@first`, `@last`, `@key`, block parameters, `{{else}}`), each
/// iteration paid for from the render's [`Budget`]: a loop with an empty
/// body writes nothing, so the output alone cannot bound it.
struct BoundedEach;

impl HelperDef for BoundedEach {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(body) = h.template() else {
            return Ok(());
        };
        // Walked as it is, not copied first: a loop that the budget stops
        // after a few iterations pays for those, not for the whole list.
        let (len, items): (usize, Box<dyn Iterator<Item = (Value, &Value)>>) = match value.value() {
            Value::Array(list) => (
                list.len(),
                Box::new(list.iter().enumerate().map(|(i, v)| (json!(i), v))),
            ),
            Value::Object(map) => (map.len(), Box::new(map.iter().map(|(k, v)| (json!(k), v)))),
            _ => (0, Box::new(std::iter::empty())),
        };
        let iterable = matches!(value.value(), Value::Array(_) | Value::Object(_));
        if len == 0 && (!iterable || h.inverse().is_some()) {
            return match h.inverse() {
                Some(otherwise) => otherwise.render(r, ctx, rc, out),
                None if r.strict_mode() && !iterable => {
                    Err(handlebars::RenderError::strict_error(value.relative_path()))
                }
                None => Ok(()),
            };
        }
        let is_object = matches!(value.value(), Value::Object(_));
        let base = value.context_path().cloned();
        rc.push_block(BlockContext::new());
        let last = len.saturating_sub(1);
        for (i, (key, item)) in items.enumerate() {
            let spent = BUDGET.with(|b| {
                let left = b.iterations.get();
                b.iterations.set(left.saturating_sub(1));
                left == 0
            });
            if spent {
                over("iterations");
                rc.pop_block();
                return Err(
                    RenderErrorReason::Other("too many {{#each}} iterations".into()).into(),
                );
            }
            if past_deadline() {
                over("time");
                rc.pop_block();
                return Err(RenderErrorReason::Other("took too long".into()).into());
            }
            if let Some(block) = rc.block_mut() {
                block.set_local_var("first", json!(i == 0));
                block.set_local_var("last", json!(i == last));
                block.set_local_var("index", json!(i));
                if is_object {
                    block.set_local_var("key", key.clone());
                }
                let segment = match &key {
                    Value::String(k) => k.clone(),
                    other => other.to_string(),
                };
                match &base {
                    Some(path) => {
                        let mut here = path.clone();
                        here.push(segment);
                        *block.base_path_mut() = here;
                    }
                    None => block.set_base_value(item.clone()),
                }
                let mut params = BlockParams::new();
                let (name, key_name) = match (h.block_param(), h.block_param_pair()) {
                    (Some(name), _) => (Some(name), None),
                    (None, Some((name, key_name))) => (Some(name), Some(key_name)),
                    (None, None) => (None, None),
                };
                if let Some(name) = name {
                    if base.is_some() {
                        params.add_path(name, Vec::new())?;
                    } else {
                        params.add_value(name, item.clone())?;
                    }
                    if let Some(key_name) = key_name {
                        params.add_value(key_name, key.clone())?;
                    }
                    block.set_block_params(params);
                }
            }
            body.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}

/// Renders `template` against `data`; the error says what is wrong and where.
///
/// Partials are refused: two that include each other overflow the stack
/// (and abort the process), and a few that each include the previous twice
/// render for ever. The rest is bounded while it renders (see the module
/// doc): source size, nesting, iterations, output and time.
pub fn render_one(template: &str, data: &Value, part: Part) -> Result<String, String> {
    // Built once: a registry with its helpers costs more than a small render.
    static TEXT: LazyLock<Handlebars<'static>> = LazyLock::new(|| registry(Part::Text));
    static HTML: LazyLock<Handlebars<'static>> = LazyLock::new(|| registry(Part::Html));
    static JSON: LazyLock<Handlebars<'static>> = LazyLock::new(|| registry(Part::Json));
    refuse_partials(template)?;
    check_shape(template)?;
    let registry = match part {
        Part::Text => &*TEXT,
        Part::Html => &*HTML,
        Part::Json => &*JSON,
    };
    BUDGET.with(|b| {
        b.iterations.set(MAX_ITERATIONS);
        b.deadline.set(Some(Instant::now() + RENDER_TIME));
        b.over.set(None);
    });
    let mut text = BoundedText::default();
    let result = registry.render_template_to_write(template, data, &mut text);
    let stopped = BUDGET.with(|b| {
        b.deadline.set(None);
        b.over.take()
    });
    match (result, stopped) {
        (_, Some("output")) => Err(format!(
            "rendered more than the {} KiB a message may have",
            MAX_OUTPUT / 1024
        )),
        (_, Some("iterations")) => Err(format!(
            "took more than {MAX_ITERATIONS} {{{{#each}}}} iterations"
        )),
        (_, Some(_)) => Err(format!(
            "took longer than {} ms to render",
            RENDER_TIME.as_millis()
        )),
        (Err(e), None) => Err(e.to_string()),
        (Ok(()), None) => String::from_utf8(text.0).map_err(|e| e.to_string()),
    }
}

/// A template's source size and block nesting, before it compiles (a deep
/// enough nesting overflows the compiler's stack).
fn check_shape(template: &str) -> Result<(), String> {
    if template.len() > MAX_TEMPLATE {
        return Err(format!(
            "the template has {} KiB, more than the {} KiB a template may have",
            template.len() / 1024,
            MAX_TEMPLATE / 1024
        ));
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let tag = rest[open + 2..].trim_start_matches(['{', '~', ' ', '\t', '\n', '\r']);
        if tag.starts_with('#') {
            depth += 1;
            deepest = deepest.max(depth);
        } else if tag.starts_with('/') {
            depth = depth.saturating_sub(1);
        }
        rest = &rest[open + 2..];
    }
    if deepest > MAX_NESTING {
        return Err(format!(
            "blocks nest {deepest} deep, more than the {MAX_NESTING} a template may have"
        ));
    }
    Ok(())
}

/// Whether `body` is one JSON value whose objects have no duplicate keys
/// (receivers disagree on which of two equal keys wins, so a body that
/// has them is refused rather than sent).
pub fn check_json(body: &str) -> Result<(), String> {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    struct Unique;
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    serde_json::from_str::<Unique>(body)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Compiles `template` without rendering, for `gitpulse validate`.
pub fn check(template: &str) -> Result<(), String> {
    refuse_partials(template)?;
    check_shape(template)?;
    handlebars::Template::compile(template)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Partials and inline partials (`{{> name}}`, `{{#> name}}`,
/// `{{#*inline}}`, any `{{*decorator}}`) are not supported.
fn refuse_partials(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let tag = rest[open + 2..].trim_start_matches(['{', '~', ' ', '\t', '\n', '\r']);
        if tag.starts_with('>')
            || tag.starts_with("#>")
            || tag.starts_with('*')
            || tag.starts_with("#*")
        {
            return Err(
                "partials (`{{> …}}`, `{{#*inline …}}`) are not supported in gitpulse templates"
                    .into(),
            );
        }
        rest = &rest[open + 2..];
    }
    Ok(())
}

/// Renders `t` with `data` in strict mode; `body` is the body's part
/// (text, or a webhook's JSON).
pub fn render(t: &Templates, data: &Value, body: Part) -> Result<Rendered, String> {
    Ok(Rendered {
        subject: render_one(&t.subject, data, Part::Text)?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        body: render_one(&t.body, data, body)?,
        html: t
            .html
            .as_ref()
            .map(|h| render_one(h, data, Part::Html))
            .transpose()?,
    })
}

/// What templates see: the event's fields (absent ones as null, so strict
/// mode fails only on names that never exist), `vars` from a plugin, and
/// `notifier`.
pub fn event_data(event: &Event, notifier: &str, vars: &[(String, String)]) -> Value {
    let mut data = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut data {
        for key in ["old", "new", "files", "compare_url", "failure", "detail"] {
            map.entry(key).or_insert(Value::Null);
        }
        map.entry("commits").or_insert_with(|| json!([]));
        map.insert(
            "vars".into(),
            Value::Object(
                vars.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        map.insert("notifier".into(), Value::String(notifier.to_string()));
    }
    data
}

/// What a digest template sees: the kind, the host, how many, and the
/// events themselves.
pub fn digest_data(kind: &str, host: &str, events: &[Value], notifier: &str) -> Value {
    json!({ "kind": kind, "host": host, "count": events.len(), "events": events, "notifier": notifier })
}

/// The host's template for `kind`; `html` adds an HTML body (email).
pub fn default_for(kind: EventKind, html: bool) -> Templates {
    let (subject, body) = match kind {
        EventKind::Changed => (
            "[gitpulse] {{repo.name}}: {{pluralize commit_count \"new commit\"}}",
            concat!(
                "{{pluralize commit_count \"new commit\"}} in {{repo.name}} ({{repo.url}}{{#if repo.branch}}, {{repo.branch}}{{/if}})\n",
                "{{#if old}}{{short_sha old}}..{{/if}}{{short_sha new}}\n\n",
                "{{#each commits}}{{short_sha sha}} {{truncate subject 72}} ({{author}})\n{{/each}}",
                "{{#if files}}\n{{pluralize files.changed \"file\"}} changed{{#if files.insertions}}, +{{files.insertions}}{{/if}}{{#if files.deletions}}, -{{files.deletions}}{{/if}}\n{{#each files.paths}}  {{this}}\n{{/each}}{{/if}}",
                "{{#if compare_url}}\nCompare: {{compare_url}}\n{{/if}}",
            ),
        ),
        EventKind::Failed => (
            "[gitpulse] {{repo.name}} failed{{#if failure}}: {{failure.class}}{{/if}}",
            concat!(
                "Pulling {{repo.name}} ({{repo.url}}{{#if repo.branch}}, {{repo.branch}}{{/if}}) failed after {{pluralize attempts \"attempt\"}}.\n\n",
                "{{#if failure}}Class: {{failure.class}}{{#if failure.http_status}} (HTTP {{failure.http_status}}){{/if}}\n{{failure.message}}\n{{/if}}",
                "{{#if detail}}Stopped: {{detail}}\n{{/if}}",
            ),
        ),
        EventKind::Recovered => (
            "[gitpulse] {{repo.name}} recovered",
            "{{repo.name}} ({{repo.url}}) pulls again after {{pluralize attempts \"failed pull\"}}.{{#if new}} Now at {{short_sha new}}.{{/if}}\n",
        ),
        EventKind::Retrying => (
            "[gitpulse] {{repo.name}}: attempt {{attempts}} failed, retrying",
            "Attempt {{attempts}} to pull {{repo.name}} ({{repo.url}}) failed{{#if failure}}: {{failure.class}}, {{failure.message}}{{/if}}.{{#if detail}} The {{detail}}.{{/if}}\n",
        ),
        EventKind::PluginFault => (
            "[gitpulse] plugin fault{{#if repo.name}} ({{repo.name}}){{/if}}",
            "A plugin or template misbehaved{{#if repo.name}} while serving {{repo.name}}{{/if}}; the built-in default stood in.\n\n{{detail}}\n",
        ),
        EventKind::StepFailed => (
            "[gitpulse] {{repo.name}}: a step failed",
            concat!(
                "{{detail}}\n",
                "{{#if new}}Revision: {{short_sha new}}{{#if old}} (from {{short_sha old}}){{/if}}\n{{/if}}",
                "{{#if failure}}\n{{failure.message}}\n{{/if}}",
            ),
        ),
        EventKind::ConfigRejected => (
            "[gitpulse] configuration rejected",
            "A new configuration was rejected; the previous one keeps running.\n\n{{detail}}\n",
        ),
    };
    Templates {
        subject: subject.to_string(),
        body: body.to_string(),
        html: html.then(|| format!("<html><body><pre style=\"font-family: monospace\">{body}</pre>{{{{#if compare_url}}}}<p><a href=\"{{{{compare_url}}}}\">Compare</a></p>{{{{/if}}}}</body></html>")),
    }
}

/// The host's digest template.
pub fn default_digest(html: bool) -> Templates {
    let body = concat!(
        "{{count}} repositories on {{#if host}}{{host}}{{else}}local paths{{/if}} {{#if (eq kind \"failed\")}}failed{{else}}recovered{{/if}}:\n\n",
        "{{#each events}}  {{repo.name}}{{#if failure}}: {{failure.class}} {{truncate failure.message 80}}{{/if}}\n{{/each}}",
    );
    Templates {
        subject: "[gitpulse] {{count}} repositories on {{#if host}}{{host}}{{else}}local paths{{/if}} {{#if (eq kind \"failed\")}}failed{{else}}recovered{{/if}}".into(),
        body: body.into(),
        html: html.then(|| format!("<html><body><pre style=\"font-family: monospace\">{body}</pre></body></html>")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Commit, RepoRef};

    fn changed() -> Event {
        let mut e = Event::new(
            EventKind::Changed,
            RepoRef::new(
                "app",
                "https://github.com/o/app.git",
                Some("main"),
                Default::default(),
            ),
            1,
        );
        e.old = Some("a".repeat(40));
        e.new = Some("b".repeat(40));
        e.commit_count = 1;
        e.commits = vec![Commit {
            sha: "b".repeat(40),
            author: "Ada".into(),
            subject: "Fix <the> parser".into(),
        }];
        e.compare_url = crate::events::compare_url(e.repo.url(), &"a".repeat(40), &"b".repeat(40));
        e
    }

    fn many_commits(n: usize) -> Value {
        let mut e = changed();
        e.commits = (0..n)
            .map(|i| Commit {
                sha: format!("{i:040}"),
                author: "Ada".into(),
                subject: format!("commit {i}"),
            })
            .collect();
        event_data(&e, "n", &[])
    }

    #[test]
    fn nested_loops_stop_at_the_iteration_bound_instead_of_running_for_ever() {
        let data = many_commits(50);
        let six = "{{#each @root.commits}}".repeat(6) + "x" + &"{{/each}}".repeat(6);
        let started = Instant::now();
        let err = render_one(&six, &data, Part::Text).unwrap_err();
        assert!(err.contains("iterations"), "{err}");
        // Empty bodies write nothing: the iteration count stops them too.
        let silent = "{{#each @root.commits}}".repeat(6) + &"{{/each}}".repeat(6);
        let err = render_one(&silent, &data, Part::Text).unwrap_err();
        assert!(err.contains("iterations"), "{err}");
        assert!(started.elapsed() < RENDER_TIME * 4);
        // The bound is per render: the next one starts afresh.
        assert!(render_one("{{#each commits}}{{sha}}{{/each}}", &data, Part::Text).is_ok());
    }

    #[test]
    fn output_is_refused_as_soon_as_it_outgrows_the_cap() {
        let big = "y".repeat(100 * 1024);
        let data = event_data(&changed(), "n", &[("big".into(), big)]);
        assert!(render_one("{{vars.big}}{{vars.big}}", &data, Part::Text).is_ok());
        let err =
            render_one("{{vars.big}}{{vars.big}}{{vars.big}}", &data, Part::Text).unwrap_err();
        assert!(err.contains("256 KiB"), "{err}");
    }

    #[test]
    fn deep_nesting_and_huge_sources_are_refused_before_rendering() {
        let data = many_commits(1);
        let deep = "{{#if old}}".repeat(MAX_NESTING + 1) + &"{{/if}}".repeat(MAX_NESTING + 1);
        assert!(render_one(&deep, &data, Part::Text)
            .unwrap_err()
            .contains("nest"));
        assert!(check(&deep).is_err());
        let fine = "{{#if old}}".repeat(MAX_NESTING) + "x" + &"{{/if}}".repeat(MAX_NESTING);
        assert_eq!(render_one(&fine, &data, Part::Text).unwrap(), "x");
        let huge = "z".repeat(MAX_TEMPLATE + 1);
        assert!(render_one(&huge, &data, Part::Text)
            .unwrap_err()
            .contains("KiB"));
    }

    #[test]
    fn each_keeps_what_handlebars_each_offers() {
        let data = many_commits(3);
        let t = "{{#each commits}}{{@index}}{{#if @first}}F{{/if}}{{#if @last}}L{{/if}}:{{subject}}/{{../repo.name}} {{/each}}";
        assert_eq!(
            render_one(t, &data, Part::Text).unwrap(),
            "0F:commit 0/app 1:commit 1/app 2L:commit 2/app "
        );
        let t = "{{#each commits as |c i|}}{{i}}={{c.author}} {{/each}}";
        assert_eq!(
            render_one(t, &data, Part::Text).unwrap(),
            "0=Ada 1=Ada 2=Ada "
        );
        let vars = event_data(
            &changed(),
            "n",
            &[("a".into(), "1".into()), ("b".into(), "2".into())],
        );
        let t = "{{#each vars}}{{@key}}={{this}};{{/each}}";
        assert_eq!(render_one(t, &vars, Part::Text).unwrap(), "a=1;b=2;");
        let none = event_data(
            &Event::new(EventKind::Changed, RepoRef::default(), 1),
            "n",
            &[],
        );
        let t = "{{#each commits}}x{{else}}none{{/each}}";
        assert_eq!(render_one(t, &none, Part::Text).unwrap(), "none");
        assert_eq!(
            render_one("{{#each commits}}x{{/each}}", &none, Part::Text).unwrap(),
            ""
        );
        assert!(render_one("{{#each old}}x{{/each}}", &none, Part::Text).is_err());
    }

    #[test]
    fn every_default_template_renders_in_strict_mode() {
        for kind in EventKind::ALL {
            let mut e = Event::new(kind, RepoRef::default(), 1);
            e.detail = Some("d".into());
            let data = event_data(&e, "ops", &[]);
            render(&default_for(kind, true), &data, Part::Text)
                .unwrap_or_else(|err| panic!("{kind}: {err}"));
        }
        let r = render(
            &default_for(EventKind::Changed, true),
            &event_data(&changed(), "ops", &[]),
            Part::Text,
        )
        .unwrap();
        assert_eq!(r.subject, "[gitpulse] app: 1 new commit");
        assert!(
            r.body.contains("bbbbbbbbbb Fix <the> parser (Ada)"),
            "{}",
            r.body
        );
        assert!(
            r.body
                .contains("Compare: https://github.com/o/app/compare/"),
            "{}",
            r.body
        );
        let html = r.html.unwrap();
        assert!(
            html.contains("Fix &lt;the&gt; parser"),
            "HTML is escaped: {html}"
        );
        let digest = render(
            &default_digest(false),
            &digest_data("failed", "h", &[event_data(&changed(), "ops", &[])], "ops"),
            Part::Text,
        )
        .unwrap();
        assert_eq!(digest.subject, "[gitpulse] 1 repositories on h failed");
    }

    #[test]
    fn json_bodies_escape_values_and_refuse_duplicate_keys() {
        let data = json!({ "subject": "x\", \"admin\": true, \"y\": \"", "labels": { "a": 1 } });
        let body = render_one(
            "{\"s\": \"{{subject}}\", \"l\": {{json labels}}}",
            &data,
            Part::Json,
        )
        .unwrap();
        let sent: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            sent["s"], data["subject"],
            "the value stayed inside its string"
        );
        assert!(sent.get("admin").is_none(), "{body}");
        assert_eq!(sent["l"]["a"], 1, "json writes JSON as it is");
        assert!(check_json(&body).is_ok());
        let err = check_json("{\"a\": 1, \"b\": {\"c\": 1, \"c\": 2}}").unwrap_err();
        assert!(err.contains("duplicate key `c`"), "{err}");
        assert!(check_json("not json").is_err());
    }

    #[test]
    fn partials_are_refused_and_output_is_bounded() {
        let data = json!({ "x": "y".repeat(1000) });
        // Two inline partials that include each other: a stack overflow.
        let recursive =
            "{{#*inline \"a\"}}{{> b}}{{/inline}}{{#*inline \"b\"}}{{> a}}{{/inline}}{{> a}}";
        for t in [
            recursive,
            "{{> header}}",
            "{{~> header}}",
            "{{#> layout}}x{{/layout}}",
        ] {
            let err = check(t).unwrap_err();
            assert!(err.contains("partials"), "{t}: {err}");
            assert!(render_one(t, &data, Part::Text)
                .unwrap_err()
                .contains("partials"));
        }
        assert!(
            check("{{x}} > {{#if x}}a{{/if}}").is_ok(),
            "a `>` outside a tag is text"
        );
        let flood = "{{x}}".repeat(300);
        let err = render_one(&flood, &data, Part::Text).unwrap_err();
        assert!(err.contains("more than the 256 KiB"), "{err}");
    }

    #[test]
    fn strict_mode_refuses_unknown_names_and_helpers_work() {
        let data = event_data(&changed(), "ops", &[("team".into(), "core".into())]);
        assert!(render_one("{{nonsense}}", &data, Part::Text)
            .unwrap_err()
            .contains("nonsense"));
        assert_eq!(
            render_one("{{vars.team}}", &data, Part::Text).unwrap(),
            "core"
        );
        assert_eq!(
            render_one("{{pluralize 2 \"repo\"}}", &data, Part::Text).unwrap(),
            "2 repos"
        );
        assert_eq!(
            render_one("{{truncate \"abcdef\" 4}}", &data, Part::Text).unwrap(),
            "abc…"
        );
        assert_eq!(
            render_one("{{duration 90000}}", &data, Part::Text).unwrap(),
            "1m 30s"
        );
        assert_eq!(
            render_one("{{json repo.labels}}", &data, Part::Text).unwrap(),
            "{}"
        );
        assert_eq!(relative(0, 3_600_000), "1 hour ago");
        assert!(check("{{#if}}").is_err());
    }
}
