//! The documentation site: the pages in `docs/src` are up to date with the
//! code (generated blocks, every flag, `FLANNELD_*` variable, `net-conf.json`
//! key, backend and subnet manager documented, no dead link), the site
//! renders, and a flag missing from the pages is caught.

use std::path::{Path, PathBuf};

use flanneld::cli::flag_docs;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src")
}

#[test]
fn pages_are_up_to_date_with_the_code() {
    let problems = flannel_docs::check(&src()).expect("read docs/src");
    assert!(
        problems.is_empty(),
        "documentation problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn an_undocumented_flag_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let config = dir.path().join("configuration.md");
    let text = std::fs::read_to_string(&config).unwrap();
    // Drop the table row of --healthz-port, as if the flag were new.
    let row = text
        .lines()
        .find(|l| l.starts_with("| `--healthz-port"))
        .expect("a --healthz-port row");
    std::fs::write(&config, text.replace(&format!("{row}\n"), "")).unwrap();
    let problems = flannel_docs::check(dir.path()).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p == "configuration.md does not document --healthz-port"),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("stale generated block")));
    // `update` puts it back.
    flannel_docs::update(dir.path()).unwrap();
    assert_eq!(
        flannel_docs::check(dir.path()).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn site_renders_with_every_page_and_link() {
    let out = tempfile::tempdir().unwrap();
    let site = flannel_docs::build(&src(), out.path()).expect("build the site");
    let pages = flannel_docs::pages(&src()).unwrap();
    assert_eq!(site.pages.len(), pages.len());
    assert!(out.path().join("index.html").is_file());
    for page in &site.pages {
        let html = std::fs::read_to_string(page).unwrap();
        // Every relative link of every page names a page of the site.
        for href in html.split("href=\"").skip(1) {
            let href = &href[..href.find('"').unwrap()];
            if href.contains("://") || href.starts_with('#') {
                continue;
            }
            let file = href.split('#').next().unwrap();
            assert!(
                out.path().join(file).is_file(),
                "{}: dead link {href}",
                page.display()
            );
        }
    }
    let config = std::fs::read_to_string(out.path().join("configuration.html")).unwrap();
    for f in flag_docs() {
        assert!(
            config.contains(&format!("<code>--{}", f.name)),
            "--{} not in configuration.html",
            f.name
        );
    }
    assert!(config.contains("<td><code>FLANNELD_HEALTHZ_PORT</code></td>"));
}

#[test]
fn man_page_and_default_env_cover_every_flag() {
    let man = flannel_docs::man_page();
    assert!(man.starts_with(".TH FLANNELD 8 "), "{man}");
    let env = flannel_docs::default_env_file();
    for f in flag_docs() {
        assert!(
            man.contains(&format!("\\fB\\-\\-{}\\fR", f.name.replace('-', "\\-"))),
            "--{} not in the man page",
            f.name
        );
        if !f.env.is_empty() {
            assert!(
                env.contains(&format!("\n#{}=", f.env)),
                "{} not in /etc/default/flanneld",
                f.env
            );
        }
    }
    // The defaults are Go's.
    assert!(
        env.contains("\n#FLANNELD_ETCD_PREFIX=/coreos.com/network\n"),
        "{env}"
    );
    assert!(
        env.contains("\n#FLANNELD_IPTABLES_FORWARD_RULES=true\n"),
        "{env}"
    );
}
