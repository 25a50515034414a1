//! # flannel-docs
//!
//! The documentation site of flannel-rs: markdown pages in `docs/src`
//! (mdBook's layout: `SUMMARY.md` lists the pages), parts of which are
//! generated from the code, rendered to a static HTML site without mdBook
//! (which Debian does not package).
//!
//! * [`flag_table`]: the flanneld flag table, from clap's definition
//!   ([`flanneld::cli::flag_docs`]), so it cannot drift from the parser.
//! * [`backend_table`]: the backends and subnet managers flanneld has as
//!   Cargo features ([`flanneld::backends::FEATURES`]).
//! * [`update`] rewrites the generated blocks of the pages
//!   (`<!-- generated:NAME -->` … `<!-- end generated -->`); [`check`]
//!   reports every block that is stale, every flag, `net-conf.json` key or
//!   backend not documented, and every link to a page that does not exist.
//! * [`build`] renders the site; [`man_page`] is `flanneld(8)` in roff;
//!   [`default_env_file`] is the package's `/etc/default/flanneld`.
//!
//! ```no_run
//! let src = std::path::Path::new("docs/src");
//! let problems = flannel_docs::check(src).unwrap();
//! assert!(problems.is_empty(), "{problems:?}");
//! flannel_docs::build(src, std::path::Path::new("target/docs-site")).unwrap();
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use flanneld::cli::{FlagDoc, flag_docs};

/// Why the site could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// A file could not be read or written.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A generated block has no end marker.
    #[error("{path}: <!-- generated:{name} --> has no <!-- end generated -->", path = .path.display())]
    Unterminated {
        /// The page.
        path: PathBuf,
        /// The block's name.
        name: String,
    },
    /// A generated block names no known generator.
    #[error("{path}: unknown generated block {name}", path = .path.display())]
    UnknownBlock {
        /// The page.
        path: PathBuf,
        /// The block's name.
        name: String,
    },
}

fn read(path: &Path) -> Result<String, DocsError> {
    std::fs::read_to_string(path).map_err(|source| DocsError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), DocsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DocsError::Io {
            path: dir.into(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| DocsError::Io {
        path: path.into(),
        source,
    })
}

/// Markdown escaping for a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn flag_syntax(f: &FlagDoc) -> String {
    match (f.boolean, f.value_name.as_str()) {
        (_, "") => format!("`--{}`", f.name),
        (true, _) => format!("`--{}[=BOOL]`", f.name),
        (false, v) => format!("`--{}={v}`", f.name),
    }
}

/// The flag table: flag, `FLANNELD_*` variable, default, meaning.
pub fn flag_table() -> String {
    let mut out = String::from("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for f in flag_docs() {
        let env = if f.env.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", f.env)
        };
        let default = if f.default.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", f.default)
        };
        let mut help = cell(&f.help);
        if f.repeatable && !help.contains("repeated") {
            help.push_str(" (repeatable)");
        }
        let _ = writeln!(out, "| {} | {env} | {default} | {help} |", flag_syntax(&f));
    }
    out
}

/// The backend and subnet manager table (from the Cargo features).
pub fn backend_table() -> String {
    let mut out = String::from("| kind | name | Cargo feature of `flanneld` |\n|---|---|---|\n");
    for (name, _) in flanneld::backends::FEATURES {
        let _ = writeln!(
            out,
            "| backend | [`{name}`](backends.md#{name}) | `{name}` |"
        );
    }
    for (name, _) in flanneld::backends::SUBNET_MANAGERS {
        let feature = if matches!(*name, "etcd" | "local") {
            "always built in".to_owned()
        } else {
            format!("`{name}`")
        };
        let _ = writeln!(
            out,
            "| subnet manager | [`{name}`](subnet-managers.md#{name}) | {feature} |"
        );
    }
    out
}

/// The generated block `name`'s content.
pub fn generated(name: &str) -> Option<String> {
    match name {
        "flags" => Some(flag_table()),
        "backends" => Some(backend_table()),
        _ => None,
    }
}

const BEGIN: &str = "<!-- generated:";
const END: &str = "<!-- end generated -->";

/// `text` with every generated block replaced by its current content.
pub fn regenerate(path: &Path, text: &str) -> Result<String, DocsError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(close) = after.find("-->") else {
            break;
        };
        let name = after[..close].trim().to_owned();
        let body_start = start + BEGIN.len() + close + 3;
        let Some(end) = rest[body_start..].find(END) else {
            return Err(DocsError::Unterminated {
                path: path.into(),
                name,
            });
        };
        let content = generated(&name).ok_or_else(|| DocsError::UnknownBlock {
            path: path.into(),
            name: name.clone(),
        })?;
        out.push_str(&rest[..body_start]);
        out.push('\n');
        out.push_str(&content);
        rest = &rest[body_start + end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The pages of the site in `SUMMARY.md` order: (title, path relative to
/// `src`).
pub fn pages(src: &Path) -> Result<Vec<(String, String)>, DocsError> {
    let summary = read(&src.join("SUMMARY.md"))?;
    Ok(summary
        .lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches(['-', '*']).trim();
            let title = l.strip_prefix('[')?.split_once("](")?;
            let path = title.1.strip_suffix(')')?;
            Some((title.0.to_owned(), path.to_owned()))
        })
        .collect())
}

fn markdown_files(src: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(src).map_err(|source| DocsError::Io {
        path: src.into(),
        source,
    })?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Rewrites the generated blocks of every page in `src`; returns the pages
/// changed.
pub fn update(src: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut changed = Vec::new();
    for p in markdown_files(src)? {
        let text = read(&p)?;
        let new = regenerate(&p, &text)?;
        if new != text {
            write(&p, &new)?;
            changed.push(p);
        }
    }
    Ok(changed)
}

/// Every problem with the pages in `src`, as sentences (empty: all good):
/// stale generated blocks, undocumented flags, `FLANNELD_*` variables,
/// `net-conf.json` keys and backends, and links to missing pages.
pub fn check(src: &Path) -> Result<Vec<String>, DocsError> {
    let mut problems = Vec::new();
    let mut all = String::new();
    for p in markdown_files(src)? {
        let text = read(&p)?;
        if regenerate(&p, &text)? != text {
            problems.push(format!(
                "{} has a stale generated block: run `cargo run -p flannel-docs -- update`",
                p.display()
            ));
        }
        for target in links(&text) {
            let file = target.split('#').next().unwrap_or_default();
            if file.ends_with(".md") && !src.join(file).is_file() {
                problems.push(format!(
                    "{} links to {target}, which does not exist",
                    p.display()
                ));
            }
        }
        all.push_str(&text);
    }
    let config = read(&src.join("configuration.md")).unwrap_or_default();
    for f in flag_docs() {
        if !config.contains(&format!("`--{}", f.name)) {
            problems.push(format!("configuration.md does not document --{}", f.name));
        }
        if !f.env.is_empty() && !config.contains(&f.env) {
            problems.push(format!("configuration.md does not document {}", f.env));
        }
    }
    for key in net_conf_keys() {
        if !config.contains(&format!("`{key}`")) {
            problems.push(format!(
                "configuration.md does not document the net-conf.json key {key}"
            ));
        }
    }
    let backends = read(&src.join("backends.md")).unwrap_or_default();
    for (name, _) in flanneld::backends::FEATURES {
        if !backends.contains(&format!("<a id=\"{name}\"></a>")) {
            problems.push(format!(
                "backends.md has no section for the {name} backend (<a id=\"{name}\"></a>)"
            ));
        }
    }
    let managers = read(&src.join("subnet-managers.md")).unwrap_or_default();
    for (name, _) in flanneld::backends::SUBNET_MANAGERS {
        if !managers.contains(&format!("<a id=\"{name}\"></a>")) {
            problems.push(format!(
                "subnet-managers.md has no section for the {name} subnet manager"
            ));
        }
    }
    for (_, page) in pages(src)? {
        if !src.join(&page).is_file() {
            problems.push(format!("SUMMARY.md lists {page}, which does not exist"));
        }
    }
    Ok(problems)
}

/// Every top-level key of `net-conf.json` (as Go spells them), from the
/// serialisation of a config that sets them all.
pub fn net_conf_keys() -> Vec<String> {
    let full = r#"{"Network":"10.0.0.0/8","IPv6Network":"fd00::/48","EnableIPv4":true,
        "EnableIPv6":true,"EnableNFTables":false,"SubnetLen":24,"SubnetMin":"10.1.0.0",
        "SubnetMax":"10.2.0.0","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:0:0:1::",
        "IPv6SubnetMax":"fd00:0:0:2::","Backend":{"Type":"vxlan"}}"#;
    let json = flannel_core::config::NetConfig::parse(full)
        .map(|c| c.to_json())
        .unwrap_or_default();
    // Top-level keys: `"Key":` at nesting depth 1.
    let mut keys = Vec::new();
    let mut depth = 0;
    let mut chars = json.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '"' => {
                let end = json[i + 1..].find('"').map_or(json.len(), |e| i + 1 + e);
                let word = &json[i + 1..end];
                if depth == 1 && json[end + 1..].starts_with(':') {
                    keys.push(word.to_owned());
                }
                while chars.peek().is_some_and(|(j, _)| *j <= end) {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    keys
}

/// The link targets in a markdown text.
fn links(text: &str) -> Vec<String> {
    use pulldown_cmark::{Event, Parser, Tag};
    Parser::new(text)
        .filter_map(|e| match e {
            Event::Start(Tag::Link { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .filter(|u| !u.contains("://") && !u.starts_with('#') && !u.starts_with("mailto:"))
        .collect()
}

/// Markdown to an HTML fragment (tables, strikethrough), with links to
/// `*.md` pages pointed at their `*.html`.
pub fn render_markdown(text: &str) -> String {
    use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, html};
    let parser =
        Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|e| {
            match e {
                Event::Start(Tag::Link {
                    link_type,
                    dest_url,
                    title,
                    id,
                }) if !dest_url.contains("://") => {
                    let url = dest_url.replacen(".md", ".html", 1);
                    Event::Start(Tag::Link {
                        link_type,
                        dest_url: CowStr::from(url),
                        title,
                        id,
                    })
                }
                e => e,
            }
        });
    let mut out = String::new();
    html::push_html(&mut out, parser);
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const STYLE: &str = "body{margin:0;font:16px/1.5 system-ui,sans-serif;color:#222;display:flex}\
nav{width:15em;min-height:100vh;background:#f4f4f4;padding:1em;box-sizing:border-box;flex:none}\
nav a{display:block;color:#333;text-decoration:none;padding:.15em 0}nav a.here{font-weight:bold}\
main{padding:1em 2em;max-width:60em;overflow-x:auto}code{background:#f0f0f0;padding:0 .2em}\
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}pre code{background:none;padding:0}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}";

/// What [`build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The HTML files written, in `SUMMARY.md` order.
    pub pages: Vec<PathBuf>,
}

/// Renders the pages listed in `src/SUMMARY.md` (generated blocks brought
/// up to date first) into `out` as `*.html`, each with the navigation; the
/// first page is also `index.html`.
pub fn build(src: &Path, out: &Path) -> Result<Site, DocsError> {
    let pages = pages(src)?;
    let nav = |here: &str| {
        let mut s = String::from("<nav><strong>flannel-rs</strong>");
        for (title, page) in &pages {
            let href = page.replacen(".md", ".html", 1);
            let class = if page == here { " class=\"here\"" } else { "" };
            let _ = write!(s, "<a href=\"{href}\"{class}>{}</a>", escape(title));
        }
        s.push_str("</nav>");
        s
    };
    let mut written = Vec::new();
    for (i, (title, page)) in pages.iter().enumerate() {
        let path = src.join(page);
        let text = regenerate(&path, &read(&path)?)?;
        let html = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{} — flannel-rs</title><style>{STYLE}</style></head>\
             <body>{}<main>\n{}</main></body></html>\n",
            escape(title),
            nav(page),
            render_markdown(&text)
        );
        let target = out.join(page.replacen(".md", ".html", 1));
        write(&target, &html)?;
        if i == 0 {
            write(&out.join("index.html"), &html)?;
        }
        written.push(target);
    }
    Ok(Site { pages: written })
}

/// roff escaping: backslashes, and a leading `.` or `'` that would be read
/// as a request.
fn roff(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with(['.', '\'']) {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The `flanneld(8)` manual page (roff, `man` macros), from the same flag
/// definitions as `--help`.
pub fn man_page() -> String {
    let version = flanneld::version::VERSION;
    let mut m = format!(
        ".TH FLANNELD 8 \"\" \"flannel-rs {version}\" \"System Administration\"\n\
         .SH NAME\nflanneld \\- flannel overlay network daemon (flannel\\-rs)\n\
         .SH SYNOPSIS\n.B flanneld\n[\\fIOPTION\\fR]...\n.br\n\
         .B flanneld config check\n\\fIFILE\\fR\n.br\n\
         .B flanneld mk\\-docker\\-opts\n[\\fB\\-f\\fR \\fIFILE\\fR] [\\fB\\-d\\fR \\fIFILE\\fR] \
         [\\fB\\-i\\fR] [\\fB\\-c\\fR] [\\fB\\-m\\fR] [\\fB\\-k\\fR \\fIKEY\\fR]\n\
         .SH DESCRIPTION\n\
         flanneld gives each host a subnet of the overlay network from a shared datastore \
         (etcd, the Kubernetes API or a local store), programs the datapath of the \
         configured backend and writes the subnet to \\fI/run/flannel/subnet.env\\fR for the \
         flannel CNI plugin or Docker. It is a wire\\-compatible reimplementation of Go flanneld.\n\
         .SH OPTIONS\n"
    );
    for f in flag_docs() {
        let value = match (f.boolean, f.value_name.as_str()) {
            (_, "") => String::new(),
            (true, _) => "[=\\fIBOOL\\fR]".to_owned(),
            (false, v) => format!("=\\fI{}\\fR", roff(v)),
        };
        let _ = writeln!(m, ".TP\n\\fB\\-\\-{}\\fR{value}", roff(&f.name));
        let mut text = roff(&f.help);
        if !text.ends_with('.') {
            text.push('.');
        }
        if !f.default.is_empty() {
            let _ = write!(text, " Default: {}.", roff(&f.default));
        }
        if !f.env.is_empty() {
            let _ = write!(text, " Environment: {}.", roff(&f.env));
        }
        let _ = writeln!(m, "{text}");
    }
    m.push_str(".SH NOTES\n.nf\n");
    for line in flanneld::cli::HELP_NOTES.lines() {
        let _ = writeln!(m, "{}", roff(line));
    }
    m.push_str(
        ".fi\n.SH FILES\n\
         .TP\n\\fI/etc/default/flanneld\\fR\n\\fBFLANNELD_*\\fR settings read by flanneld.service.\n\
         .TP\n\\fI/run/flannel/subnet.env\\fR\nThe subnet, network, MTU and masquerading written by flanneld.\n\
         .TP\n\\fI/run/docker_opts.env\\fR\nDocker options written by \\fBflanneld mk\\-docker\\-opts\\fR.\n\
         .SH EXIT STATUS\n0 on SIGTERM or SIGINT (the datapath is kept), 1 on a start\\-up error, \
         2 on a bad flag or \\fBFLANNELD_*\\fR value.\n\
         .SH SEE ALSO\n\\fBsystemctl\\fR(1), \\fBip\\fR(8), \\fBiptables\\fR(8), \\fBnft\\fR(8); \
         the documentation site built by \\fBscripts/docs.sh\\fR.\n",
    );
    m
}

/// `/etc/default/flanneld` as the Debian package installs it: every
/// `FLANNELD_*` variable, commented out, with its default and meaning, so
/// the file lists every setting and cannot miss a new flag.
pub fn default_env_file() -> String {
    let mut out = String::from(
        "# Settings for flanneld.service (read with EnvironmentFile=-/etc/default/flanneld).\n\
         #\n\
         # Every flanneld flag is also the variable FLANNELD_<NAME> (name upper-cased,\n\
         # '-' and '.' as '_'); a flag given on the command line wins, empty values are\n\
         # ignored, a bad value stops flanneld with an error naming it. Booleans take\n\
         # true/false. See flanneld(8) and `flanneld --help`.\n\
         #\n\
         # Without a datastore setting flanneld uses etcd at FLANNELD_ETCD_ENDPOINTS.\n",
    );
    for f in flag_docs().into_iter().filter(|f| !f.env.is_empty()) {
        let default = match f.default.as_str() {
            "\"\"" => "",
            d => d,
        };
        let _ = write!(out, "\n# {}\n#{}={default}\n", f.help, f.env);
    }
    out
}
