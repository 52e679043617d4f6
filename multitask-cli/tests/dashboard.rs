//! The dashboard in a real browser: a cluster (a real redis-server, two
//! `multitask worker` processes), `multitask dashboard` on it, and headless
//! Chromium driven through chromedriver (WebDriver), asserting what a
//! person would see: the workers by name, a done count that moves as tasks
//! run, a dead letter after a poison entry, and the page still live after
//! a worker is killed. A screenshot is kept in the target directory.
//!
//! Needs `MULTITASK_TEST_REDIS` (scripts/test.sh starts a server), and
//! `chromium` and `chromedriver` on the PATH (scripts/test.sh installs
//! them); without them it skips, but fails under `CI=true`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The bound on each wait for the page to show something.
const LIMIT: Duration = Duration::from_secs(40);

/// Kills and reaps a child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the test needs, or why it can't run.
fn needs() -> Option<(String, String, String)> {
    let redis = std::env::var("MULTITASK_TEST_REDIS").ok();
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .map(|p| p.to_string_lossy().into_owned())
        })
    };
    let chromium = find("chromium").or_else(|| find("chromium-browser"));
    let driver = find("chromedriver");
    match (redis, chromium, driver) {
        (Some(r), Some(c), Some(d)) => Some((r, c, d)),
        missing => {
            let msg = format!(
                "the dashboard browser test needs MULTITASK_TEST_REDIS, chromium and chromedriver: {missing:?}"
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("skipped: {msg}");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A WebDriver session on chromedriver.
struct Browser {
    base: String,
    session: String,
    _driver: Reaped,
    _profile: TempDir,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    fn start(chromium: &str, driver: &str) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver_proc = Reaped(child);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + LIMIT;
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile =
            TempDir(std::env::temp_dir().join(format!("mt-dash-chrome-{}", std::process::id())));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.0.display()),
            ]}
        }}});
        let reply: Value = ureq::post(&format!("{base}/session"))
            .timeout(Duration::from_secs(60))
            .send_json(caps)
            .expect("a WebDriver session")
            .into_json()
            .expect("JSON");
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_string();
        Browser {
            base,
            session,
            _driver: driver_proc,
            _profile: profile,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        match ureq::post(&url)
            .timeout(Duration::from_secs(30))
            .send_json(body)
        {
            Ok(r) => r.into_json::<Value>().expect("JSON")["value"].clone(),
            Err(e) => panic!("WebDriver {path}: {e}"),
        }
    }

    fn open(&self, url: &str) {
        self.post("url", json!({ "url": url }));
    }

    /// Runs `script` in the page (a function body) and returns its value.
    fn eval(&self, script: &str) -> Value {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Waits until `script` returns true; fails with `what` after LIMIT.
    fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            if self.eval(script) == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText");
                panic!(
                    "the page never showed {what}; it shows:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let reply: Value = ureq::get(&url)
            .call()
            .expect("a screenshot")
            .into_json()
            .expect("JSON");
        let png = base64::engine::general_purpose::STANDARD
            .decode(reply["value"].as_str().expect("base64"))
            .expect("a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

fn multitask() -> Command {
    Command::new(env!("CARGO_BIN_EXE_multitask"))
}

#[test]
fn the_dashboard_shows_a_live_cluster_in_a_browser() {
    let Some((redis, chromium, driver)) = needs() else {
        return;
    };
    let queue = format!("dash-{}", std::process::id());
    let base = redis
        .split_once('?')
        .map_or(redis.as_str(), |(b, _)| b)
        .to_string();
    let url = format!("{base}?queue={queue}");

    let workers: Vec<Reaped> = (0..2)
        .map(|_| {
            Reaped(
                multitask()
                    .args(["worker", "--broker", &url, "--concurrency", "2"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a worker"),
            )
        })
        .collect();
    let mut dash = Reaped(
        multitask()
            .args(["dashboard", "--broker", &url, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the dashboard"),
    );
    let mut line = String::new();
    BufReader::new(dash.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the dashboard's first line");
    let page = line
        .trim()
        .strip_prefix("dashboard at ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();

    let browser = Browser::start(&chromium, &driver);
    browser.open(&page);
    browser.until(
        "that it is live",
        "return document.getElementById('live').textContent === 'live'",
    );
    // The workers by name: a consumer name holds its pid.
    for w in &workers {
        let pid = w.0.id();
        browser.until(
            &format!("worker pid {pid} alive"),
            &format!(
                "return [...document.querySelectorAll('#workers tr')].some(r => r.dataset.worker.includes('-{pid}-') && r.textContent.includes('alive'))"
            ),
        );
    }

    // Tasks run: the done count moves.
    let ran = multitask()
        .args(["primes", "--executor", &url, "--quiet"])
        .stdout(Stdio::null())
        .status()
        .expect("run primes on the cluster");
    assert!(ran.success());
    browser.until(
        "tasks done",
        "return Number(document.getElementById('done').textContent.replace(/,/g, '')) >= 6",
    );

    // A poison entry: the worker dead-letters it with the reason.
    let port = base
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or("6379")
        .to_string();
    let poisoned = Command::new("redis-cli")
        .args([
            "-p",
            &port,
            "XADD",
            &format!("mt:{{{queue}}}:tasks"),
            "*",
            "garbage",
            "1",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(poisoned.success());
    browser.until(
        "a dead letter with its reason",
        "return document.querySelectorAll('#dead tr.dead-letter').length >= 1 && document.getElementById('deadcount').textContent !== '0'",
    );

    // A worker killed: the page stays live and shows it gone.
    let mut workers = workers;
    let killed = workers.remove(0);
    let pid = killed.0.id();
    drop(killed);
    let before = browser.eval("return document.getElementById('updated').textContent");
    browser.until(
        "updates after a worker was killed",
        &format!("return document.getElementById('updated').textContent !== {before}"),
    );
    browser.until(
        &format!("worker pid {pid} gone"),
        &format!(
            "return [...document.querySelectorAll('#workers tr')].some(r => r.dataset.worker.includes('-{pid}-') && r.textContent.includes('gone')) && document.getElementById('live').textContent === 'live'"
        ),
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot)
        .map(|m| m.len() > 10_000)
        .unwrap_or(false));
    eprintln!("screenshot: {}", shot.display());
}
