//! The VM harness itself: one boot runs the kernel-only tests below, which
//! check what the backends' VM tests rely on (a kernel with ipip and ESP
//! whose modules load on demand, the host's binaries, env passing).

use flannel_testutil::vm;

#[test]
fn kernel_only_tests_pass_in_one_vm() {
    let out = vm::assert_tests_pass_in_vm("in_vm::", &[("FLANNEL_VM_PROBE", "a b 'c' $d")]);
    assert!(out.contains("2 passed"), "{out}");
}

mod in_vm {
    use flannel_testutil::vm;
    use std::process::Command;

    fn sh(script: &str) -> String {
        let out = Command::new("bash").args(["-ec", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    #[ignore = "kernel-only: run inside the VM by kernel_only_tests_pass_in_one_vm"]
    fn environment_is_passed_and_the_host_root_is_visible() {
        vm::require_vm();
        assert_eq!(std::env::var("FLANNEL_VM_PROBE").unwrap(), "a b 'c' $d");
        assert!(
            std::path::Path::new("/usr/bin/etcd").exists()
                || std::path::Path::new("/usr/bin/ip").exists()
        );
        assert_ne!(sh("uname -r").trim(), "", "uname");
    }

    #[test]
    #[ignore = "kernel-only: run inside the VM by kernel_only_tests_pass_in_one_vm"]
    fn ipip_and_esp_modules_load_on_demand() {
        vm::require_vm();
        let ns = format!("vmprobe{}", std::process::id());
        let out = sh(&format!(
            "ip netns add {ns}
             ip -n {ns} link add t0 type ipip local 10.0.0.1
             ip -n {ns} -d link show t0
             ip -n {ns} xfrm state add src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x1001 reqid 11 \
                mode tunnel aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
             ip -n {ns} xfrm state
             ip netns del {ns}"
        ));
        assert!(out.contains("ipip any remote any local 10.0.0.1"), "{out}");
        assert!(out.contains("rfc4106(gcm(aes))"), "{out}");
    }
}
