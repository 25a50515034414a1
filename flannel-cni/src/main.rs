//! The `flannel` CNI plugin binary; everything happens in
//! [`flannel_cni::skel::run`].

fn main() {
    let getenv = |name: &str| {
        std::env::var_os(name)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let code = flannel_cni::skel::run(
        &getenv,
        &mut flannel_cni::skel::Streams {
            stdin: &mut std::io::stdin().lock(),
            stdout: &mut std::io::stdout().lock(),
            stderr: &mut std::io::stderr().lock(),
        },
    );
    std::process::exit(code);
}
