//! What can be checked of `deploy/` without a cluster or a container engine: the
//! Kubernetes manifests validate strictly against the API schema, the ConfigMap's
//! configuration starts a real switch that exports every metric the alert rules use, the
//! alert rules pass promtool's checks and fire on their test series, the seccomp profile
//! allows io_uring and refuses what a network service never needs, and the container
//! builds with the toolchain the workspace asks for.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn the_kubernetes_manifests_validate_strictly() {
    let manifest = deploy().join("kubernetes/switch.yaml");
    let output = Command::new("kubernetes-validate")
        .args(["-k", "1.30.0", "--strict"])
        .arg(&manifest)
        .output()
        .expect("kubernetes-validate (PyPI) is needed to check the manifests: `pip install kubernetes-validate` (.ci/test does)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    for resource in [
        "configmap/switch-config",
        "secret/switch-keys",
        "service/switch",
        "statefulset/switch",
        "poddisruptionbudget/switch",
    ] {
        assert!(text.contains(&format!("passed for resource {resource}")), "{resource}: {text}");
    }
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    // Startup and readiness wait for recovery; liveness never depends on participants.
    assert!(yaml.contains("startupProbe:\n            httpGet: {path: /readyz, port: admin}"), "startup probe");
    assert!(yaml.contains("livenessProbe:\n            httpGet: {path: /livez, port: admin}"), "liveness probe");
}

#[test]
fn the_configmap_configuration_starts_a_switch() {
    let dir = std::env::temp_dir().join(format!("switch-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    // The ConfigMap's files, as the pod sees them in /etc/switch/.
    let extract = Command::new("python3")
        .arg("-c")
        .arg("import sys, yaml, os\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    if d['kind'] == 'ConfigMap':\n        for name, text in d['data'].items(): open(os.path.join(sys.argv[2], name), 'w').write(text)")
        .arg(deploy().join("kubernetes/switch.yaml"))
        .arg(&dir)
        .output()
        .expect("python3 with PyYAML (installed with kubernetes-validate by .ci/test)");
    assert!(extract.status.success(), "{}", String::from_utf8_lossy(&extract.stderr));
    let config = std::fs::read_to_string(dir.join("switch.toml")).unwrap();
    assert!(config.contains("[fx]") && dir.join("rates.toml").exists(), "{config}");
    assert!(config.contains("[journal]") && config.contains("[fleet]"), "{config}");
    // The cluster's NATS is not here: the publisher keeps trying, and its metrics say so.
    let config = config.replace("nats.nats.svc.cluster.local:4222", "127.0.0.1:1");
    std::fs::write(dir.join("switch.toml"), &config).unwrap();
    for participant in ["ACQ0001", "WECHATPAY"] {
        std::fs::write(dir.join(format!("keys/{participant}.key")), "11".repeat(32)).unwrap();
    }
    std::fs::write(dir.join("keys/admin.token"), "a-test-operator-token\n").unwrap();
    std::fs::write(dir.join("keys/nats.token"), "a-test-nats-token\n").unwrap();
    // The switch-tls Secret's files: the example material.
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    for (to, from) in [
        ("tls.crt", "switch.crt"),
        ("tls.key", "switch.key"),
        ("participants-ca.crt", "participants-ca.crt"),
        ("participants.crl", "participants.crl"),
    ] {
        std::fs::copy(deploy().join("tls").join(from), dir.join("tls").join(to)).unwrap();
    }
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (listen, admin) = (free(), free());
    let mut child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(["run", "--config"])
        .arg(dir.join("switch.toml"))
        .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string(), "--data-dir"])
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        use std::io::{Read, Write};
        if let Ok(mut stream) = std::net::TcpStream::connect(admin) {
            let _ = stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                break true;
            }
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Every metric the alert rules use is one the switch exports.
    let metrics = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(admin).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(ready, "the ConfigMap's configuration did not start: {}", String::from_utf8_lossy(&output.stderr));
    // Every metric the alert rules and the dashboard use is one the switch exports.
    for file in ["prometheus/alerts.yml", "grafana/switch-dashboard.json"] {
        let text = std::fs::read_to_string(deploy().join(file)).unwrap();
        let used: std::collections::BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("switch_") || word.starts_with("process_"))
            .map(|word| word.strip_suffix("_bucket").unwrap_or(word))
            .collect();
        assert!(used.len() >= 6, "{file}: {used:?}");
        for name in used {
            assert!(metrics.lines().any(|line| line.starts_with(name)), "{file} uses {name}, which /metrics lacks");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_alert_rules_check_and_fire_on_their_test_series() {
    let dir = deploy().join("prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool is needed to check the alert rules: `apt-get install prometheus` (.ci/test does)");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && text.contains("SUCCESS"), "promtool {args:?}: {text}");
    }
}

/// The Grafana dashboard: a well-formed dashboard model whose every query is valid PromQL
/// (promtool checks them as recording rules), each panel described.
#[test]
fn the_grafana_dashboard_is_well_formed_and_its_queries_parse() {
    let text = std::fs::read_to_string(deploy().join("grafana/switch-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "clearing-switch");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut ids = std::collections::HashSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("id")), "duplicate panel id");
        assert!(panel["description"].as_str().is_some_and(|d| d.len() > 20), "{panel}");
        for target in panel["targets"].as_array().expect("targets") {
            // Grafana's variables, as Prometheus would see them once substituted.
            let expr = target["expr"].as_str().expect("expr").replace("$instance", ".*");
            let record = format!("dashboard:panel{}_{}", panel["id"], target["refId"].as_str().expect("refId"));
            rules.push_str(&format!("      - record: {record}\n        expr: '{expr}'\n"));
        }
    }
    let dir = std::env::temp_dir().join(format!("switch-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard-rules.yml"), &rules).unwrap();
    let output = Command::new("promtool")
        .args(["check", "rules", "dashboard-rules.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool is needed to check the dashboard's queries (.ci/test installs prometheus)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("SUCCESS"), "promtool: {text}\n{rules}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_seccomp_profile_allows_io_uring_and_refuses_the_rest() {
    let text = std::fs::read_to_string(deploy().join("kubernetes/seccomp-switch.json")).unwrap();
    let profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    let refused: Vec<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ERRNO")
        .flat_map(|rule| rule["names"].as_array().unwrap().iter().filter_map(|n| n.as_str()))
        .collect();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW");
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(!refused.contains(&call), "{call} must be allowed");
    }
    for call in ["ptrace", "mount", "bpf", "kexec_load", "init_module", "unshare", "setns", "reboot"] {
        assert!(refused.contains(&call), "{call} must be refused");
    }
}

#[test]
fn the_container_builds_with_the_workspace_toolchain() {
    let workspace = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml")).unwrap();
    let version = workspace
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("rust-version in the workspace");
    let dockerfile = std::fs::read_to_string(deploy().join("container/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("FROM rust:{version}-bookworm AS build")),
        "the build stage uses Rust {version}"
    );
    assert!(dockerfile.contains("USER 10001"), "the image runs unprivileged");
    assert!(dockerfile.contains("--locked"), "the build uses Cargo.lock");
}
