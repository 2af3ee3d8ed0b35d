//! Agents where people work: the connected agents as `GET /api/agents` and `buildd
//! agent list` show them (on both backends, with agents killed), when an agent may
//! claim (`--hours`, `--yield`, `--exit-when-idle`), and `buildd agent service`.
//!
//! Working hours are tested against the real clock: each agent gets a `TZ` whose
//! offset (to the second) puts its local time a few seconds before a window opens or
//! closes, so a transition comes within seconds instead of at the next real minute.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Timelike;
use reqwest::Method;
use serde_json::{Value, json};

use common::agent::{Agent, LONG, Repo, wait_task, wait_until, workspace_and_key};
use common::{ADMIN, Database};

/// An agent that runs `command` for each task, with `flags` and `env` added.
fn command_agent(
    server: &str,
    key: &str,
    repo: &Repo,
    command: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    let mut args = vec!["--command", command];
    args.extend_from_slice(flags);
    Agent::start(server, key, repo.path(), &args, env)
}

/// The agents `api` sees, by id.
async fn agents(api: &common::Api) -> Vec<Value> {
    let (status, body) = api.get("/api/agents").await;
    assert!(status.is_success(), "{body}");
    body["agents"].as_array().unwrap().clone()
}

fn agent_id(agent: &Agent) -> String {
    std::fs::read_to_string(agent.state_dir.join("agent-id")).unwrap()
}

async fn connected_agents_are_listed_and_a_killed_one_leaves_within_a_lease(db: Database) {
    let lease = Duration::from_secs(3);
    let server = db.serve(&["--lease-ttl", "3"]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let (other_id, other_key) = admin
        .account(json!({ "type": "service", "name": "vm" }), &ws, true, false)
        .await;
    let repo = Repo::new();
    let laptop = command_agent(&server.url, &key, &repo, "sleep 120", &[], &[]);
    let vm = command_agent(&server.url, &other_key, &repo, "sleep 120", &[], &[]);
    laptop.ready().await;
    vm.ready().await;
    let listed = wait_until(&admin, "/api/agents", LONG, "both agents listed", |b| {
        b["agents"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let (laptop_id, vm_id) = (agent_id(&laptop), agent_id(&vm));
    for agent in listed["agents"].as_array().unwrap() {
        assert!(agent["id"] == laptop_id || agent["id"] == vm_id, "{agent}");
        assert_eq!(agent["runners"], json!(["command"]));
        assert_eq!(agent["state"], "waiting");
        assert_eq!(agent["running"], json!([]));
        assert_eq!(agent["version"], env!("CARGO_PKG_VERSION"));
        assert!(!agent["hostname"].as_str().unwrap().is_empty());
    }

    // An account sees its own agents only.
    let mine = agents(&server.client(&other_key)).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["id"], vm_id.as_str());
    assert_eq!(mine[0]["accountId"], other_id.as_str());

    // A task makes one of them working, with the task listed.
    let task = admin
        .task(&ws, json!({ "title": "work", "description": "sleep" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_task(&admin, &task, "running").await;
    let listed = wait_until(&admin, "/api/agents", LONG, "the runner working", |b| {
        b["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["state"] == "working" && a["running"] == json!([task.as_str()]))
    })
    .await;
    let runner = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "working")
        .unwrap()["id"]
        .clone();

    // `buildd agent list` shows the same, as a table and as JSON.
    let out = Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args(["agent", "list", "--server", &server.url, "--api-key", ADMIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("STATE") && table.contains(&laptop_id) && table.contains(&vm_id));
    assert!(
        table.contains("working") && table.contains(&task),
        "{table}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args([
            "agent",
            "list",
            "--json",
            "--server",
            &server.url,
            "--api-key",
            &key,
        ])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json[0]["id"], laptop_id.as_str());

    // kill -9 of the working agent: it leaves the list within one lease.
    let (dead, alive) = if runner == laptop_id.as_str() {
        (laptop, vm)
    } else {
        (vm, laptop)
    };
    dead.signal(libc::SIGKILL);
    let killed = Instant::now();
    let after = wait_until(&admin, "/api/agents", LONG, "the killed agent gone", |b| {
        b["agents"].as_array().unwrap().len() == 1
    })
    .await;
    let gone_after = killed.elapsed();
    println!("a killed agent left the list {gone_after:?} after kill -9 (lease {lease:?})");
    // Polling every 50 ms and one refresh tick of slack on top of the lease.
    assert!(
        gone_after < lease + Duration::from_millis(1500),
        "{gone_after:?}"
    );
    assert_eq!(after["agents"][0]["id"], agent_id(&alive).as_str());
    drop(dead);
}

async fn agent_reports_are_checked(db: Database) {
    let server = db.serve(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let (_, other_key) = admin
        .account(json!({ "type": "service", "name": "vm" }), &ws, true, false)
        .await;
    let report = json!({
        "hostname": "laptop", "version": "0.1.0", "runners": ["claude"],
        "state": "waiting", "running": []
    });
    let laptop = server.client(&key);
    let (status, body) = laptop
        .call(Method::PUT, "/api/agents/agt-mine", Some(report.clone()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hostname"], "laptop");
    let connected = body["connectedAt"].clone();
    // A second report keeps the connection's start.
    let (_, again) = laptop
        .call(Method::PUT, "/api/agents/agt-mine", Some(report.clone()))
        .await;
    assert_eq!(again["connectedAt"], connected);

    for (who, id, body, code, says) in [
        (&admin, "agt-x", report.clone(), 403, "account key"),
        (&laptop, "a b", report.clone(), 400, "agent id"),
        (
            &laptop,
            "agt-y",
            json!({ "hostname": "", "version": "1", "state": "waiting" }),
            400,
            "hostname",
        ),
        (
            &laptop,
            "agt-y",
            json!({ "hostname": "h", "version": "1", "state": "asleep" }),
            400,
            "unknown variant",
        ),
        (
            &server.client(&other_key),
            "agt-mine",
            report.clone(),
            403,
            "another account",
        ),
    ] {
        let (status, answer) = who
            .call(
                Method::PUT,
                &format!("/api/agents/{}", id.replace(' ', "%20")),
                Some(body),
            )
            .await;
        assert_eq!(status, code, "{id}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    let (status, answer) = admin.get("/api/events?agentId=agt-admin").await;
    assert_eq!(status, 403, "{answer}");
}

both_backends!(database:
    connected_agents_are_listed_and_a_killed_one_leaves_within_a_lease,
    agent_reports_are_checked,
);

/// A `TZ` that makes the local time now `seconds_before` seconds before `hh:mm:00`
/// (POSIX offsets are west of Greenwich, hence the inverted sign).
fn tz_before(hh: u32, mm: u32, seconds_before: i64) -> String {
    let now = chrono::Utc::now();
    let utc = i64::from(now.num_seconds_from_midnight());
    let local = i64::from(hh * 3600 + mm * 60) - seconds_before;
    let mut east = (local - utc).rem_euclid(86_400);
    if east > 43_200 {
        east -= 86_400;
    }
    let sign = if east >= 0 { '-' } else { '+' };
    let east = east.abs();
    format!(
        "BLD{sign}{:02}:{:02}:{:02}",
        east / 3600,
        east % 3600 / 60,
        east % 60
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_claims_only_inside_its_hours_and_yields_when_they_end() {
    let server = common::Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();

    // Outside its hours for another 4 s: the task waits, and the agent says why.
    let waiting = admin
        .task(&ws, json!({ "title": "at noon", "description": "x" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tz = tz_before(12, 0, 4);
    let opening = command_agent(
        &server.url,
        &key,
        &repo,
        "sleep 120",
        &["--hours", "Mon-Sun 12:00-13:00"],
        &[("TZ", &tz)],
    );
    opening.ready().await;
    assert!(opening.log().contains("outside_hours"), "{}", opening.log());
    let listed = wait_until(&admin, "/api/agents", LONG, "listed outside hours", |b| {
        b["agents"][0]["state"] == "outside_hours"
    })
    .await;
    assert_eq!(listed["agents"][0]["running"], json!([]));
    let (_, task) = admin.get(&format!("/api/tasks/{waiting}")).await;
    assert_eq!(task["status"], "pending", "{task}");
    // The window opens: it claims.
    wait_task(&admin, &waiting, "running").await;
    wait_until(&admin, "/api/agents", LONG, "working", |b| {
        b["agents"][0]["state"] == "working"
    })
    .await;
    drop(opening);

    // Inside its hours for another 5 s, running a task, with --yield: when the
    // window closes the run is paused, and the next task is not claimed.
    let (other_ws, other_key) = workspace_and_key(&admin, None).await;
    let tz = tz_before(18, 0, 5);
    let closing = command_agent(
        &server.url,
        &other_key,
        &repo,
        "sleep 120",
        &["--hours", "09:00-18:00", "--yield"],
        &[("TZ", &tz)],
    );
    let running = admin
        .task(
            &other_ws,
            json!({ "title": "till six", "description": "x" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_task(&admin, &running, "running").await;
    let worker = wait_until(
        &admin,
        &format!("/api/workers?taskId={running}"),
        LONG,
        "the run paused at 18:00",
        |b| b["workers"][0]["status"] == "paused",
    )
    .await;
    assert_eq!(worker["workers"].as_array().unwrap().len(), 1);
    closing.logged("availability changed").await;
    let later = admin
        .task(
            &other_ws,
            json!({ "title": "after six", "description": "x" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let states = wait_until(
        &server.client(&other_key),
        "/api/agents",
        LONG,
        "outside hours",
        |b| b["agents"][0]["state"] == "outside_hours",
    )
    .await;
    assert_eq!(states["agents"][0]["running"], json!([running.as_str()]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, task) = admin.get(&format!("/api/tasks/{later}")).await;
    assert_eq!(task["status"], "pending", "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_when_idle_ends_the_agent_after_a_quiet_spell() {
    let server = common::Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let task = admin
        .task(&ws, json!({ "title": "quick", "description": "x" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 0.05 minutes: 3 s with nothing to run, counted from the task's end.
    let mut agent = command_agent(
        &server.url,
        &key,
        &repo,
        "sleep 2",
        &["--exit-when-idle", "0.05"],
        &[],
    );
    let started = Instant::now();
    wait_task(&admin, &task, "completed").await;
    let ran = started.elapsed();
    let status = agent.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(
        started.elapsed() >= ran + Duration::from_secs(2),
        "it waited after the run"
    );
    assert!(agent.log().contains("exit-when-idle"), "{}", agent.log());
}

#[test]
fn agent_flags_are_checked_before_anything_runs() {
    for (args, says) in [
        (vec!["--hours", "Mon-Fri 19:00"], "HH:MM-HH:MM"),
        (vec!["--hours", "Someday"], "'Someday' is not a day"),
        (vec!["--yield", "--command", "true"], "--yield pauses runs"),
        (vec!["--exit-when-idle", "0"], "from 1 second"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_buildd"))
            .arg("agent")
            .args(&args)
            .env("BUILDD_API_KEY", "buildd_user_x")
            .env("BUILDD_SERVER", "http://127.0.0.1:9")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // --when-idle reads the person's idle time before anything else; where it cannot
    // (no logind: containers, CI), the flag is refused with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args(["agent", "--when-idle", "10", "--command", "true"])
        .env("BUILDD_API_KEY", "buildd_user_x")
        .env("BUILDD_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logind = Command::new("loginctl")
        .args(["show-session", "--property=IdleHint"])
        .output()
        .is_ok_and(|o| o.status.success());
    if logind {
        assert!(!stderr.contains("--when-idle"), "{stderr}");
    } else {
        assert!(!out.status.success());
        assert!(stderr.contains("--when-idle cannot tell"), "{stderr}");
        assert!(
            stderr.contains("logind") || stderr.contains("loginctl"),
            "{stderr}"
        );
    }
}

/// `buildd` with `HOME` (and nothing of the caller's login) set to `home`.
fn buildd_at(home: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_buildd"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("USER", "tester");
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn service_install_writes_a_unit_systemd_accepts_and_a_plist_that_parses() {
    let server = common::Server::sqlite(&[]);
    let admin = server.admin();
    let (_, key) = workspace_and_key(&admin, None).await;
    let home = tempfile::tempdir().unwrap();
    let login = buildd_at(home.path())
        .args(["login", "--server", &server.url, "--api-key", &key])
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let flags = [
        "--max-tasks",
        "2",
        "--hours",
        "Mon-Fri 19:00-08:00,Sat-Sun",
        "--command",
        "echo 100% done for $USER",
    ];

    // What `service install --dry-run` prints for `manager`.
    let dry_run = |manager: &str| {
        let out = buildd_at(home.path())
            .args([
                "agent",
                "service",
                "install",
                "--dry-run",
                "--manager",
                manager,
            ])
            .args(["--server", &server.url])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        String::from_utf8(out.stdout).unwrap()
    };

    // systemd: the unit as written, checked by systemd's own verifier.
    let printed = dry_run("systemd");
    assert!(!printed.contains(&key), "the key is never in the unit");
    assert!(printed.contains("systemctl --user enable --now buildd-agent.service"));
    let unit: String = printed
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("# then:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        unit.contains(&format!("Environment=BUILDD_SERVER={}", server.url)),
        "{unit}"
    );
    assert!(
        unit.contains(
            "--hours \"Mon-Fri 19:00-08:00,Sat-Sun\" --command \"echo 100%% done for $$USER\""
        ),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("buildd-agent.service");
    std::fs::write(&file, &unit).unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The verifier does read the file: a misspelt key is reported.
    std::fs::write(&file, unit.replace("KillMode=", "KillMood=")).unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&verified.stderr).contains("KillMood"));

    // launchd: the property list, parsed by Python's plistlib.
    let printed = dry_run("launchd");
    assert!(!printed.contains(&key));
    let plist: String = printed
        .lines()
        .filter(|l| !l.starts_with("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed = common::output_with_stdin(
        Command::new("python3").args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))",
        ]),
        plist.as_bytes(),
    );
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let parsed: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(parsed["Label"], "dev.buildd.agent");
    let mut expected = vec![json!(env!("CARGO_BIN_EXE_buildd")), json!("agent")];
    expected.extend(flags.iter().map(|f| json!(f)));
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_buildd")).unwrap();
    expected[0] = json!(exe.to_str().unwrap());
    assert_eq!(parsed["ProgramArguments"], json!(expected));
    assert_eq!(
        parsed["EnvironmentVariables"]["BUILDD_SERVER"],
        server.url.as_str()
    );
    assert_eq!(parsed["KeepAlive"]["SuccessfulExit"], false);

    // Refusals, each one line.
    for (args, says) in [
        (
            vec!["--dry-run", "--server", "http://127.0.0.1:9"],
            "no saved key",
        ),
        (
            vec!["--dry-run", "--server", &server.url, "--once"],
            "--once has no place",
        ),
        (
            vec!["--dry-run", "--server", &server.url, "--bogus"],
            "the agent's flags",
        ),
        (
            vec!["--dry-run", "--server", &server.url, "--api-key", "x"],
            "does not take --api-key",
        ),
    ] {
        let out = buildd_at(home.path())
            .args(["agent", "service", "install"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    // Where systemd's user manager is not reachable (containers, CI), install is
    // refused with the reason and writes nothing. (Where it is, a real install would
    // write into the real user's systemd, which a test must not do.)
    let user_manager = Command::new("systemctl")
        .args(["--user", "show-environment"])
        .output()
        .is_ok_and(|o| o.status.success());
    if user_manager {
        println!("systemd's user manager runs here: the refusal is not tested");
        return;
    }
    let install = buildd_at(home.path())
        .args([
            "agent",
            "service",
            "install",
            "--server",
            &server.url,
            "--command",
            "true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&install.stderr);
    assert!(!install.status.success());
    assert!(
        stderr.contains("systemd's user manager is not reachable"),
        "{stderr}"
    );
    assert!(
        !home
            .path()
            .join(".config/systemd/user/buildd-agent.service")
            .exists(),
        "nothing is written when it cannot run"
    );
}

/// A template of `examples/coder/` as Terraform's `templatefile` renders it.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/coder")
        .join(template);
    let mut text = std::fs::read_to_string(path).unwrap();
    for (name, value) in vars {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !text.contains("${"),
        "{template} uses a variable it is not given:\n{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coder_module_parses_and_its_scripts_start_and_stop_a_real_agent() {
    // The module parses as HCL, and wires what it declares.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = common::venv_python("coder-venv", "tests/coder/requirements.txt", "hcl2");
    let read = Command::new(python)
        .arg(root.join("tests/coder/read_module.py"))
        .arg(root.join("examples/coder/main.tf"))
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let module = String::from_utf8(read.stdout).unwrap();
    let module: Value = serde_json::from_str(&module).unwrap();
    let resources: Vec<(String, Value)> = module["resource"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_object().unwrap().iter())
        .flat_map(|(kind, named)| {
            named.as_object().unwrap().iter().map(move |(name, body)| {
                // python-hcl2 keeps the labels' quotes.
                let label = |l: &str| l.trim_matches('"').to_owned();
                (format!("{}.{}", label(kind), label(name)), body.clone())
            })
        })
        .collect();
    let resource = |name: &str| {
        resources
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in {resources:?}"))
            .1
            .to_string()
    };
    assert!(resource("coder_script.buildd_agent").contains("\"run_on_start\":true"));
    assert!(resource("coder_script.buildd_agent_stop").contains("\"run_on_stop\":true"));
    assert!(resource("coder_env.buildd_api_key").contains("var.api_key"));
    assert!(resource("coder_env.buildd_server").contains("var.server"));
    // Each template is given exactly the variables it uses.
    for (script, template) in [
        ("coder_script.buildd_agent", "start.sh.tftpl"),
        ("coder_script.buildd_agent_stop", "stop.sh.tftpl"),
    ] {
        let body = resource(script);
        let given = body
            .split(&format!("{template}\\\", {{"))
            .nth(1)
            .unwrap()
            .split('}')
            .next()
            .unwrap();
        let mut given: Vec<&str> = given
            .split(',')
            .map(|kv| kv.split('=').next().unwrap().trim())
            .collect();
        let text = std::fs::read_to_string(root.join("examples/coder").join(template)).unwrap();
        let mut used: Vec<&str> = text
            .split("${")
            .skip(1)
            .map(|rest| rest.split('}').next().unwrap())
            .collect();
        given.sort_unstable();
        used.sort_unstable();
        used.dedup();
        assert_eq!(given, used, "{template}: {body}");
    }
    let variables: Vec<(String, Value)> = module["variable"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v.as_object().unwrap().iter())
        .map(|(name, body)| (name.trim_matches('"').to_owned(), body.clone()))
        .collect();
    let names: Vec<&str> = variables.iter().map(|(n, _)| n.as_str()).collect();
    for name in [
        "agent_id",
        "server",
        "api_key",
        "dir",
        "flags",
        "exit_when_idle_minutes",
        "grace_seconds",
        "install_url",
    ] {
        assert!(names.contains(&name), "variable {name}: {names:?}");
    }
    let api_key = &variables.iter().find(|(n, _)| n == "api_key").unwrap().1;
    assert_eq!(api_key["sensitive"], true, "the key is sensitive");

    // Its scripts, rendered, start a real agent on the checkout, once, and stop it.
    let server = common::Server::sqlite(&[]);
    let admin = server.admin();
    let (_, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let dir = repo.path().display().to_string();
    let start = render(
        "start.sh.tftpl",
        &[
            ("dir", &dir),
            ("flags", "--command true --max-tasks 1"),
            ("exit_when_idle", "30"),
            ("grace", "5"),
            ("install_url", "http://127.0.0.1:9/install.sh"),
        ],
    );
    let stop = render("stop.sh.tftpl", &[("grace", "5")]);
    let home = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_buildd"))
        .parent()
        .unwrap();
    let run = |script: &str| {
        let out = Command::new("sh")
            .args(["-c", script])
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("BUILDD_SERVER", &server.url)
            .env("BUILDD_API_KEY", &key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for script in [&start, &stop] {
        let checked = Command::new("sh")
            .args(["-n", "-c", script])
            .status()
            .unwrap();
        assert!(checked.success(), "sh -n:\n{script}");
    }
    assert!(run(&start).contains("buildd agent started"));
    let pidfile = home.path().join(".local/state/buildd/agent.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let listed = wait_until(
        &admin,
        "/api/agents",
        LONG,
        "the workspace's agent listed",
        |b| b["agents"].as_array().is_some_and(|a| a.len() == 1),
    )
    .await;
    assert_eq!(listed["agents"][0]["runners"], json!(["command"]));
    assert!(
        run(&start).contains("runs already"),
        "a second start starts nothing"
    );
    run(&stop);
    assert!(common::agent::process_gone(pid), "the agent stopped");
    assert!(!pidfile.exists());
    let log = std::fs::read_to_string(home.path().join(".local/state/buildd/agent.log")).unwrap();
    assert!(log.contains("agent stopped"), "{log}");
}
