//! The deployment files parse, and name only environment variables, commands and flags
//! the `sluice` binary accepts; the KEDA triggers name the real stream and tier
//! consumers; probes hit the ports the processes listen on; the dashboard queries
//! metrics Sluice exports. (Docker and Kubernetes do not run here; the files are read.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde_yaml_ng::Value;
use sluice_schemas::{Subjects, Tier};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(deploy(path)).with_context(|| format!("reading deploy/{path}"))
}

/// Every YAML document of a file, with `<<` merge keys applied.
fn yaml_docs(path: &str) -> Result<Vec<Value>> {
    use serde::Deserialize;
    let text = read(path)?;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut v = Value::deserialize(doc).with_context(|| format!("deploy/{path}"))?;
        v.apply_merge()?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Loads a config text the way the binary does, recording every environment variable it
/// asks for (overrides and `os.environ/NAME` references alike).
fn config_env(text: &str, name: &str) -> Result<(sluice_core::Config, BTreeSet<String>)> {
    let asked = Mutex::new(BTreeSet::new());
    let env = |n: &str| {
        asked.lock().unwrap().insert(n.to_string());
        match n {
            // Let the file's own values through, so it is what gets validated.
            "NATS_URL"
            | "REDIS_URL"
            | "DATABASE_URL"
            | "SLUICE_API_ADDR"
            | "SLUICE_METRICS_ADDR"
            | "SLUICE_MASTER_KEY"
            | "SLUICE_CONFIG" => None,
            _ => Some("value-from-env".to_string()),
        }
    };
    let config = sluice_core::Config::from_yaml(text, Some(name.into()), &env)
        .with_context(|| format!("{name} is not a valid sluice.yaml"))?;
    let asked = asked.into_inner().unwrap();
    Ok((config, asked))
}

/// The `[env: NAME=]` variables of the command line, from the binary's own help.
fn cli_env() -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::from(["RUST_LOG".to_string()]);
    for args in [
        vec!["--help"],
        vec!["api", "--help"],
        vec!["worker", "--help"],
        vec!["submit", "--help"],
        vec!["queue", "--help"],
        vec!["keys", "create", "--help"],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .output()?;
        assert!(o.status.success(), "sluice {args:?}");
        let help = String::from_utf8_lossy(&o.stdout);
        for part in help.split("[env: ").skip(1) {
            if let Some(name) = part.split('=').next() {
                out.insert(name.to_string());
            }
        }
    }
    Ok(out)
}

/// `sluice <args> --help` succeeds only if the command and its flags exist.
fn assert_sluice_accepts(args: &[String], where_: &str) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--help")
        .output()
        .expect("running sluice");
    assert!(
        o.status.success(),
        "{where_}: `sluice {}` is not a valid command line: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// All variables the binary reads: the config's (from both shipped configs) and the CLI's.
fn accepted_env() -> Result<BTreeSet<String>> {
    let mut accepted = cli_env()?;
    accepted.extend(config_env(&read("sluice.compose.yaml")?, "sluice.compose.yaml")?.1);
    accepted.extend(config_env(&k8s_config_text()?, "configmap sluice.yaml")?.1);
    assert!(accepted.contains("SLUICE_METRICS_ADDR") && accepted.contains("DATABASE_URL"));
    Ok(accepted)
}

fn k8s_config_text() -> Result<String> {
    let cm = &yaml_docs("k8s/configmap.yaml")?[0];
    Ok(s(&cm["data"]["sluice.yaml"]).to_string())
}

#[test]
fn compose_file_parses_and_names_only_what_sluice_accepts() -> Result<()> {
    let accepted = accepted_env()?;
    let compose = &yaml_docs("docker-compose.yml")?[0];
    let services = compose["services"].as_mapping().context("services")?;
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for needed in [
        "nats",
        "redis",
        "postgres",
        "api",
        "worker",
        "provider-sim",
        "migrate",
    ] {
        assert!(names.contains(needed), "compose lacks {needed}");
    }
    let nats_cmd: Vec<&str> = compose["services"]["nats"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(
        nats_cmd.contains(&"-js") && nats_cmd.contains(&"-m"),
        "JetStream and monitoring"
    );
    assert_eq!(
        compose["services"]["worker"]["deploy"]["replicas"].as_u64(),
        Some(2)
    );

    for (name, svc) in services {
        let name = s(name);
        if s(&svc["image"]) != "sluice:latest" {
            continue;
        }
        let env = svc["environment"].as_mapping().context("environment")?;
        let env_names: BTreeSet<&str> = env.keys().map(s).collect();
        for n in &env_names {
            assert!(
                accepted.contains(*n),
                "compose {name}: {n} is not read by sluice"
            );
        }
        let args: Vec<String> = svc["command"]
            .as_sequence()
            .map(|c| c.iter().map(|a| s(a).to_string()).collect())
            .unwrap_or_default();
        if svc["entrypoint"].as_sequence().is_some() {
            assert_eq!(s(&svc["entrypoint"][0]), "provider-sim");
            continue;
        }
        assert_sluice_accepts(&args, &format!("compose {name}"));
        for n in [
            "NATS_URL",
            "REDIS_URL",
            "DATABASE_URL",
            "SLUICE_CONFIG",
            "SLUICE_MASTER_KEY",
        ] {
            assert!(env_names.contains(n), "compose {name} lacks {n}");
        }
        match args.first().map(String::as_str) {
            Some("worker") => {
                let addr = s(&env[&Value::from("SLUICE_METRICS_ADDR")]);
                assert!(
                    addr.starts_with("0.0.0.0:"),
                    "worker metrics must be reachable"
                );
                let probe = svc["healthcheck"]["test"]
                    .as_sequence()
                    .and_then(|t| t.iter().map(s).find(|a| a.contains("/readyz")))
                    .unwrap_or_default();
                assert!(
                    probe.contains(&format!(":{}/readyz", port_of(addr))),
                    "{probe}"
                );
            }
            Some("api") => {
                let addr = s(&env[&Value::from("SLUICE_API_ADDR")]);
                assert!(addr.starts_with("0.0.0.0:"));
                assert_eq!(s(&svc["ports"][0]), format!("{0}:{0}", port_of(addr)));
            }
            _ => {}
        }
    }
    // The mounted config is a valid sluice.yaml pointing at the simulator service.
    let (config, _) = config_env(&read("sluice.compose.yaml")?, "sluice.compose.yaml")?;
    assert!(config.deployments[0].api_base.contains("provider-sim"));
    Ok(())
}

#[test]
fn k8s_manifests_parse_with_probes_config_secrets_and_accepted_env() -> Result<()> {
    let accepted = accepted_env()?;
    let mut deployments = Vec::new();
    let mut kinds = BTreeSet::new();
    for file in [
        "k8s/configmap.yaml",
        "k8s/secret.yaml",
        "k8s/migrate-job.yaml",
        "k8s/api.yaml",
        "k8s/worker.yaml",
        "k8s/keda-scaledobject.yaml",
    ] {
        for doc in yaml_docs(file)? {
            assert!(!s(&doc["apiVersion"]).is_empty(), "{file}: apiVersion");
            assert!(!s(&doc["metadata"]["name"]).is_empty(), "{file}: name");
            kinds.insert(s(&doc["kind"]).to_string());
            if matches!(s(&doc["kind"]), "Deployment" | "Job") {
                deployments.push((file, doc));
            }
        }
    }
    for k in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Job",
        "ScaledObject",
    ] {
        assert!(kinds.contains(k), "no {k}");
    }
    let config_keys: BTreeSet<String> = yaml_docs("k8s/configmap.yaml")?[0]["data"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| s(k).to_string())
        .collect();
    let secret_keys: BTreeSet<String> = yaml_docs("k8s/secret.yaml")?[0]["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| s(k).to_string())
        .collect();

    let mut roles = BTreeSet::new();
    for (file, doc) in &deployments {
        let pod = &doc["spec"]["template"]["spec"];
        for c in pod["containers"].as_sequence().unwrap() {
            let args: Vec<String> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| s(a).to_string())
                .collect();
            assert_sluice_accepts(&args, file);
            let role = args[0].clone();
            let mut env_names = BTreeSet::new();
            let mut env_values = std::collections::BTreeMap::new();
            for e in c["env"].as_sequence().unwrap() {
                let n = s(&e["name"]).to_string();
                assert!(accepted.contains(&n), "{file}: {n} is not read by sluice");
                if let Some(r) = e["valueFrom"]["secretKeyRef"].as_mapping() {
                    let key = s(&r[&Value::from("key")]);
                    assert!(secret_keys.contains(key), "{file}: secret key {key}");
                }
                if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_mapping() {
                    let key = s(&r[&Value::from("key")]);
                    assert!(config_keys.contains(key), "{file}: config key {key}");
                }
                env_values.insert(n.clone(), s(&e["value"]).to_string());
                env_names.insert(n);
            }
            if role == "migrate" {
                assert!(env_names.contains("DATABASE_URL"));
                continue;
            }
            roles.insert(role.clone());
            for n in ["NATS_URL", "REDIS_URL", "DATABASE_URL", "SLUICE_CONFIG"] {
                assert!(env_names.contains(n), "{file} lacks {n}");
            }
            // Keys come from the Secret, never inline.
            for secret in ["SLUICE_MASTER_KEY", "DATABASE_URL", "OPENAI_API_KEY"] {
                assert_eq!(env_values.get(secret).map(String::as_str).unwrap_or(""), "");
            }
            let addr_var = if role == "api" {
                assert!(env_names.contains("SLUICE_MASTER_KEY"));
                "SLUICE_API_ADDR"
            } else {
                "SLUICE_METRICS_ADDR"
            };
            let port = port_of(&env_values[addr_var]);
            let port_name = s(&c["ports"][0]["name"]);
            assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(port as u64));
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                assert_eq!(s(&c[probe]["httpGet"]["path"]), path, "{file} {probe}");
                assert_eq!(s(&c[probe]["httpGet"]["port"]), port_name, "{file} {probe}");
            }
            assert!(
                !s(&c["resources"]["requests"]["cpu"]).is_empty(),
                "{file}: resources"
            );
            assert!(
                !s(&c["resources"]["limits"]["memory"]).is_empty(),
                "{file}: resources"
            );
            let mount = s(&c["volumeMounts"][0]["mountPath"]);
            assert!(
                env_values["SLUICE_CONFIG"].starts_with(mount),
                "{file}: config mount"
            );
        }
        if s(&doc["metadata"]["name"]) == "sluice-worker" {
            // Room for the whole drain before Kubernetes kills the pod.
            let (config, _) = config_env(&k8s_config_text()?, "configmap")?;
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(
                grace > config.worker.drain.as_secs(),
                "grace {grace}s ≤ drain"
            );
        }
    }
    assert_eq!(
        roles,
        BTreeSet::from(["api".to_string(), "worker".to_string()])
    );
    Ok(())
}

#[test]
fn keda_scales_workers_on_every_tier_consumer() -> Result<()> {
    let (config, _) = config_env(&k8s_config_text()?, "configmap")?;
    let subjects = Subjects::new(&config.subject_prefix);
    let so = &yaml_docs("k8s/keda-scaledobject.yaml")?[0];
    assert_eq!(s(&so["kind"]), "ScaledObject");
    assert_eq!(s(&so["spec"]["scaleTargetRef"]["name"]), "sluice-worker");
    let worker = &yaml_docs("k8s/worker.yaml")?[0];
    assert_eq!(s(&worker["metadata"]["name"]), "sluice-worker");
    let mut consumers = BTreeSet::new();
    for t in so["spec"]["triggers"].as_sequence().unwrap() {
        assert_eq!(s(&t["type"]), "nats-jetstream");
        let m = &t["metadata"];
        assert_eq!(s(&m["stream"]), subjects.jobs_stream());
        assert!(s(&m["natsServerMonitoringEndpoint"]).ends_with(":8222"));
        assert!(s(&m["lagThreshold"]).parse::<u64>()? > 0);
        consumers.insert(s(&m["consumer"]).to_string());
    }
    let expected: BTreeSet<String> = Tier::ALL
        .iter()
        .map(|t| subjects.tier_consumer(*t))
        .collect();
    assert_eq!(consumers, expected);
    let readme = read("README.md")?;
    assert!(readme.contains("KEDA") && readme.contains("nats-jetstream"));
    for c in &expected {
        assert!(readme.contains(c.as_str()), "README names {c}");
    }
    Ok(())
}

#[test]
fn dockerfile_builds_one_image_for_every_role() -> Result<()> {
    let accepted = accepted_env()?;
    let text = read("Dockerfile")?;
    assert!(text.matches("FROM ").count() >= 2, "multi-stage");
    assert!(text.contains("--bin sluice") && text.contains("--bin provider-sim"));
    assert!(text.contains("ENTRYPOINT [\"sluice\"]"));
    for line in text.lines().skip_while(|l| !l.starts_with("ENV ")) {
        let line = line
            .trim()
            .trim_start_matches("ENV ")
            .trim_end_matches('\\')
            .trim();
        if line.is_empty() || line.starts_with("EXPOSE") || line.starts_with("ENTRYPOINT") {
            break;
        }
        let name = line.split('=').next().unwrap();
        assert!(
            accepted.contains(name),
            "Dockerfile sets {name}, which sluice does not read"
        );
    }
    Ok(())
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() -> Result<()> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/sluice-dashboard.json")?)?;
    let sources = [
        include_str!("../worker/src/metrics.rs"),
        include_str!("../api/src/metrics.rs"),
        include_str!("../core/src/queue.rs"),
        include_str!("../core/src/metrics.rs"),
        include_str!("../worker/src/callbacks.rs"),
    ]
    .concat();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("sluice_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_string();
                queried.insert(base);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "dashboard queries unknown {name}"
        );
    }
    Ok(())
}

#[test]
fn k8s_pods_are_restricted_disruption_budgeted_and_drain_in_their_grace() -> Result<()> {
    let (config, _) = config_env(&k8s_config_text()?, "configmap")?;
    let pdbs: Vec<Value> = yaml_docs("k8s/pdb.yaml")?;
    for file in ["k8s/api.yaml", "k8s/worker.yaml", "k8s/migrate-job.yaml"] {
        for doc in yaml_docs(file)? {
            if !matches!(s(&doc["kind"]), "Deployment" | "Job") {
                continue;
            }
            let pod = &doc["spec"]["template"]["spec"];
            // Pod Security "restricted": non-root, RuntimeDefault seccomp, no privilege
            // escalation, every capability dropped.
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"].as_bool(),
                Some(true),
                "{file}"
            );
            assert_eq!(
                s(&pod["securityContext"]["seccompProfile"]["type"]),
                "RuntimeDefault",
                "{file}"
            );
            for c in pod["containers"].as_sequence().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(
                    sc["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{file}"
                );
                assert_eq!(s(&sc["capabilities"]["drop"][0]), "ALL", "{file}");
            }
            if s(&doc["kind"]) != "Deployment" {
                continue;
            }
            let name = s(&doc["metadata"]["name"]);
            let labels = &doc["spec"]["selector"]["matchLabels"];
            assert!(
                pdbs.iter()
                    .any(|p| p["spec"]["selector"]["matchLabels"] == *labels),
                "{file}: no PodDisruptionBudget selects {name}"
            );
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            let c = &pod["containers"][0];
            let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0);
            if name == "sluice-api" {
                assert!(pre_stop > 0, "the api needs a preStop pause");
            }
            if name == "sluice-worker" {
                assert!(grace >= pre_stop + config.worker.drain.as_secs(), "{file}");
            }
            assert!(
                grace > pre_stop,
                "{file}: grace {grace}s, preStop {pre_stop}s"
            );
        }
    }
    Ok(())
}

#[test]
fn keda_scales_on_the_sum_of_the_tiers() -> Result<()> {
    let so = &yaml_docs("k8s/keda-scaledobject.yaml")?[0];
    let names: BTreeSet<&str> = so["spec"]["triggers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| s(&t["name"]))
        .collect();
    assert_eq!(names.len(), 4, "one named trigger per tier");
    let m = &so["spec"]["advanced"]["scalingModifiers"];
    let terms: BTreeSet<&str> = s(&m["formula"]).split('+').map(str::trim).collect();
    assert_eq!(terms, names, "the formula adds every tier's lag");
    assert!(s(&m["target"]).parse::<u64>()? > 0);
    Ok(())
}

#[test]
fn compose_has_healthchecks_conditions_and_no_default_master_key() -> Result<()> {
    let compose = &yaml_docs("docker-compose.yml")?[0];
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let name = s(name);
        if name != "migrate" {
            assert!(
                svc["healthcheck"]["test"].is_sequence(),
                "{name}: healthcheck"
            );
        }
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for (dep, cond) in deps {
                assert!(
                    !s(&cond["condition"]).is_empty(),
                    "{name} depends on {} without a condition",
                    s(dep)
                );
            }
        }
    }
    for role in ["api", "worker"] {
        let deps = compose["services"][role]["depends_on"]
            .as_mapping()
            .unwrap();
        for needed in ["nats", "redis"] {
            assert_eq!(
                s(&deps[&Value::from(needed)]["condition"]),
                "service_healthy",
                "{role} waits for {needed}"
            );
        }
    }
    let key = s(&compose["x-sluice-env"]["SLUICE_MASTER_KEY"]);
    assert!(key.contains(":?"), "no default master key: {key}");
    Ok(())
}
