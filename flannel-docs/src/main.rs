//! `flannel-docs`: builds and checks the documentation site.
//!
//! ```text
//! flannel-docs build [SRC] [OUT]   check, then render SRC (docs/src) into OUT (target/docs-site)
//! flannel-docs check [SRC]         list stale generated blocks and undocumented flags; exit 1 if any
//! flannel-docs update [SRC]        rewrite the generated blocks (flag table, backend table)
//! flannel-docs man                 print flanneld(8) in roff
//! flannel-docs default-env         print /etc/default/flanneld (every FLANNELD_* variable)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| PathBuf::from(args.get(i).map_or(default, String::as_str));
    let src = arg(1, "docs/src");
    let result = match args.first().map(String::as_str) {
        Some("man") => {
            print!("{}", flannel_docs::man_page());
            Ok(true)
        }
        Some("default-env") => {
            print!("{}", flannel_docs::default_env_file());
            Ok(true)
        }
        Some("update") => flannel_docs::update(&src).map(|changed| {
            for p in changed {
                println!("updated {}", p.display());
            }
            true
        }),
        Some("check") => check(&src),
        Some("build") => check(&src).and_then(|ok| {
            if !ok {
                return Ok(false);
            }
            let out = arg(2, "target/docs-site");
            let site = flannel_docs::build(&src, &out)?;
            println!(
                "docs: {} pages in {}",
                site.pages.len(),
                out.join("index.html").display()
            );
            Ok(true)
        }),
        _ => {
            eprintln!(
                "usage: flannel-docs build [SRC] [OUT] | check [SRC] | update [SRC] | man | default-env"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(src: &std::path::Path) -> Result<bool, flannel_docs::DocsError> {
    let problems = flannel_docs::check(src)?;
    for p in &problems {
        eprintln!("docs: {p}");
    }
    Ok(problems.is_empty())
}
