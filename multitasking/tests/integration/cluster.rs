//! The cluster on a real `redis-server`: the executor contract, a worker
//! killed mid-task, Redis restarted mid-run, poisoned tasks, and a wrong
//! password.
//!
//! The test command (scripts/test.sh) starts a redis-server and exports
//! `MULTITASK_TEST_REDIS`; these tests fail when `CI=true` and no Redis can
//! be had, and skip with a note otherwise.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multitasking::cluster::{status, StopHandle, Worker};
use multitasking::executor::ChunkFuture;
use multitasking::{ClusterPool, Executor, Shutdown, SubmitError, Task, TaskError, TaskFuture};

use crate::conformance::{get, Caps, LIMIT};
use crate::tasks::{double, sleep_ms};

/// The test Redis, or `None` (skip) outside CI.
fn redis_url() -> Option<String> {
    match std::env::var("MULTITASK_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("MULTITASK_TEST_REDIS is not set: the cluster tests need a redis-server (run bash scripts/test.sh)")
        }
        _ => {
            eprintln!("note: MULTITASK_TEST_REDIS is not set; cluster test skipped (bash scripts/test.sh starts Redis)");
            None
        }
    }
}

/// A queue name no other test uses.
fn fresh_queue(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn queue_url(base: &str, queue: &str) -> String {
    format!(
        "{}?queue={queue}",
        base.split_once('?').map_or(base, |(b, _)| b)
    )
}

/// A worker running in a thread of this process.
struct InProcessWorker {
    /// Stops it.
    stop: StopHandle,
    /// Its thread.
    handle: Option<JoinHandle<Result<(), multitasking::Error>>>,
}

impl InProcessWorker {
    fn start(url: &str, concurrency: usize, visibility: Duration) -> InProcessWorker {
        let w = Worker::builder(url)
            .concurrency(concurrency)
            .visibility_timeout(visibility)
            .build()
            .expect("start a worker");
        let stop = w.stop_handle();
        let handle = std::thread::spawn(move || w.run());
        InProcessWorker {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for InProcessWorker {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A cluster pool with its own in-process worker (2 worker processes).
pub(crate) struct TestCluster {
    /// The client; dropped before the worker.
    pool: Option<ClusterPool>,
    /// The worker.
    _worker: InProcessWorker,
}

impl TestCluster {
    fn pool(&self) -> &ClusterPool {
        self.pool.as_ref().expect("live")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        drop(self.pool.take());
    }
}

impl Executor for TestCluster {
    fn submit<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        self.pool().submit(task, input)
    }
    fn submit_chunk<T: Task>(
        &self,
        task: T,
        inputs: Vec<T::Input>,
    ) -> Result<ChunkFuture<T::Output>, SubmitError<Vec<T::Input>>> {
        self.pool().submit_chunk(task, inputs)
    }
    fn shutdown(&self, how: Shutdown) {
        self.pool().shutdown(how)
    }
    fn max_workers(&self) -> usize {
        self.pool().max_workers()
    }
    fn spec(&self) -> String {
        self.pool().spec()
    }
}

/// A cluster on the test Redis with one 2-slot worker; `None` to skip.
pub(crate) fn test_cluster() -> Option<TestCluster> {
    let url = queue_url(&redis_url()?, &fresh_queue("conf"));
    let worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).expect("connect");
    Some(TestCluster {
        pool: Some(pool),
        _worker: worker,
    })
}

/// Runs `f` on a test cluster, or skips.
pub(crate) fn with_cluster(f: impl FnOnce(TestCluster)) {
    if let Some(c) = test_cluster() {
        f(c);
    }
}

/// Runs one conformance case over the cluster.
macro_rules! cluster_case {
    ($($name:ident => $body:expr;)*) => {
        mod conformance_cluster {
            use super::*;
            use crate::conformance as c;
            $(
                #[test]
                fn $name() {
                    with_cluster(|ex| {
                        let f: fn(TestCluster) = $body;
                        f(ex)
                    });
                }
            )*
        }
    };
}

const QUEUES: Caps = Caps { queues: true };

cluster_case! {
    submit_returns_value => |ex| c::submit_returns_value(&ex);
    panic_is_a_value_and_pool_goes_on => |ex| c::panic_is_a_value_and_pool_goes_on(&ex);
    submit_after_shutdown_hands_input_back => |ex| c::submit_after_shutdown_hands_input_back(&ex);
    cancel_pending_is_done_at_once => |ex| c::cancel_pending_is_done_at_once(&ex, QUEUES);
    map_in_order_and_keeps_going => |ex| c::map_in_order_and_keeps_going(&ex);
    map_unordered_yields_everything => |ex| c::map_unordered_yields_everything(&ex);
    map_is_lazy => |ex| c::map_is_lazy(&ex);
    map_timeout_ends_and_cancels => |ex| c::map_timeout_ends_and_cancels(&ex, QUEUES);
    wait_modes => |ex| c::wait_modes(&ex, QUEUES);
    as_completed_yields_all => |ex| c::as_completed_yields_all(&ex, QUEUES);
    callbacks_run_in_order_and_panics_are_contained => |ex| c::callbacks_run_in_order_and_panics_are_contained(&ex);
    chunk_isolates_item_panics => |ex| c::chunk_isolates_item_panics(&ex);
    awaitable => |ex| c::awaitable(&ex);
    drop_resolves_every_future => |ex| c::drop_resolves_every_future(ex, QUEUES);
    many_small_tasks => |ex| c::many_small_tasks(&ex);
}

/// Not a test on its own: the worker process of
/// `a_worker_killed_mid_task_loses_nothing`.
#[test]
#[ignore = "run by a_worker_killed_mid_task_loses_nothing"]
fn worker_child() {
    let Ok(url) = std::env::var("MULTITASK_TEST_CLUSTER_WORKER") else {
        return;
    };
    let w = Worker::builder(&url)
        .concurrency(2)
        .visibility_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    println!("worker up");
    w.run().unwrap();
}

fn spawn_worker_child(url: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            "--exact",
            "cluster::worker_child",
            "--ignored",
            "--nocapture",
        ])
        .env("MULTITASK_TEST_CLUSTER_WORKER", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_worker_killed_mid_task_loses_nothing() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("kill"));
    let mut child = spawn_worker_child(&url);
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let futs: Vec<_> = (0..10)
        .map(|_| pool.submit(sleep_ms, 400).unwrap())
        .collect();
    // Wait until the child holds some tasks, then kill it mid-task.
    let deadline = Instant::now() + LIMIT;
    while !futs.iter().any(|f| f.running()) {
        assert!(
            Instant::now() < deadline,
            "the child worker never started a task"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A second worker takes over what the dead one held.
    let _rescuer = InProcessWorker::start(&url, 2, Duration::from_secs(1));
    for f in &futs {
        assert_eq!(get(f), Ok(400), "every task completes");
    }
    assert_eq!(pool.pending(), 0, "each call resolved once");
    let st = status(&url).unwrap();
    assert_eq!(st.dead_letters, 0);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MULTITASK_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from("/usr/bin/redis-server");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("no redis-server: set MULTITASK_REDIS_SERVER (bash scripts/test.sh does)");
    }
    eprintln!("note: no redis-server; test skipped");
    None
}

/// A redis-server of this test's own.
struct OwnRedis {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(args: &[&str]) -> Option<OwnRedis> {
        let bin = redis_server_bin()?;
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mt-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = OwnRedis {
            bin,
            port,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        r.up();
        Some(r)
    }

    fn up(&mut self) {
        let port = self.port.to_string();
        let ports: [&str; 4] = if self.args.iter().any(|a| a == "--tls-cert-file") {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--save", ""]
        };
        let child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1"])
            .args(ports)
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_redis_restart_mid_run_loses_nothing() {
    let Some(mut redis) = OwnRedis::start(&["--appendonly", "yes", "--appendfsync", "always"])
    else {
        return;
    };
    let url = format!(
        "redis://127.0.0.1:{}/0?queue={}",
        redis.port,
        fresh_queue("restart")
    );
    let worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let futs: Vec<_> = (0..12u64)
        .map(|i| pool.submit(double, i).unwrap())
        .collect();
    assert_eq!(get(&futs[0]), Ok(0));
    let slow: Vec<_> = (0..6)
        .map(|_| pool.submit(sleep_ms, 300).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    redis.up();
    // Submitted while the broker was away: refused with the input back, or
    // accepted after the reconnect; never lost.
    let late = match pool.submit(double, 100) {
        Ok(f) => Some(f),
        Err(e) => {
            assert_eq!(e.input, 100);
            assert!(matches!(e.error, TaskError::Broker { .. }), "{:?}", e.error);
            None
        }
    };
    for (i, f) in futs.iter().enumerate().skip(1) {
        assert_eq!(get(f), Ok(2 * i as u64));
    }
    for f in &slow {
        assert_eq!(get(f), Ok(300));
    }
    if let Some(f) = late {
        assert_eq!(get(&f), Ok(200));
    }
    let after = pool.submit(double, 21).unwrap();
    assert_eq!(get(&after), Ok(42), "clients and workers reconnected");
    drop(pool);
    drop(worker);
}

#[test]
fn poisoned_tasks_are_dead_lettered_and_the_worker_goes_on() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("poison");
    let url = queue_url(&base, &queue);
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let client = redis::Client::open(base.as_str()).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let tasks = format!("mt:{{{queue}}}:tasks");
    let real = <double as Task>::NAME;
    let cases: [(&str, String); 3] = [
        ("nowhere::missing", "1".to_string()),
        (real, "12345".to_string()),
        (real, "not a number".to_string()),
    ];
    for (name, sig) in &cases {
        let _: String = redis::cmd("XADD")
            .arg(&tasks)
            .arg("*")
            .arg("id")
            .arg(format!("raw-{name}-{sig}"))
            .arg("task")
            .arg(*name)
            .arg("sig")
            .arg(sig)
            .arg("reply")
            .arg(format!("mt:{{{queue}}}:results:nobody"))
            .arg("payload")
            .arg(&[1u8, 2, 3][..])
            .query(&mut con)
            .unwrap();
    }
    let deadline = Instant::now() + LIMIT;
    loop {
        let st = status(&url).unwrap();
        if st.dead_letters == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead letters: {}",
            st.dead_letters
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg(format!("mt:{{{queue}}}:dead"))
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let text = format!("{dead:?}");
    assert!(text.contains("not registered"), "{text}");
    assert!(text.contains("rebuild both sides"), "{text}");
    assert!(text.contains("malformed task entry"), "{text}");
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    assert_eq!(
        get(&pool.submit(double, 4).unwrap()),
        Ok(8),
        "the worker goes on"
    );
    let st = status(&url).unwrap();
    assert!(st.workers.iter().any(|w| w.alive), "{st:?}");
}

#[test]
fn a_wrong_password_is_a_clear_error() {
    let Some(redis) = OwnRedis::start(&["--requirepass", "right-secret"]) else {
        return;
    };
    let e = ClusterPool::connect(&format!(
        "redis://:wrong-secret@127.0.0.1:{}/0?queue=q",
        redis.port
    ))
    .expect_err("a wrong password is refused");
    let text = e.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    assert!(
        !text.contains("wrong-secret"),
        "the password is not shown: {text}"
    );
    let ok = ClusterPool::connect(&format!(
        "redis://:right-secret@127.0.0.1:{}/0?queue=q",
        redis.port
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn tls_brokers_work_with_rediss_urls() {
    let dir = std::env::temp_dir().join(format!("mt-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("note: openssl is missing; TLS test skipped");
        return;
    }
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let Some(redis) = OwnRedis::start(&[
        "--tls-cert-file",
        &c,
        "--tls-key-file",
        &k,
        "--tls-ca-cert-file",
        &c,
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    // The certificate is self-signed: `#insecure` accepts it.
    let url = format!("rediss://127.0.0.1:{}/0?queue=tls#insecure", redis.port);
    let worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    assert_eq!(get(&pool.submit(double, 5).unwrap()), Ok(10));
    drop(pool);
    drop(worker);
    // Without `#insecure` the unknown certificate is refused, clearly.
    let e = ClusterPool::connect(&format!("rediss://127.0.0.1:{}/0?queue=tls", redis.port))
        .expect_err("an untrusted certificate is refused");
    assert!(
        e.to_string().contains("certificate") || e.to_string().contains("Certificate"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cluster_pool_traces_each_task_on_its_worker() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("trace"));
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let tracer = multitasking::trace::Tracer::new();
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_tracer(tracer.clone());
    let out: Vec<_> = pool.map(sleep_ms, vec![20u64; 6]).chunksize(1).collect();
    assert!(out.iter().all(Result::is_ok));
    let trace = tracer.snapshot();
    assert_eq!(trace.events.len(), 6);
    for e in &trace.events {
        assert!(e.worker.contains("pid"), "{e:?}");
        assert!(e.pid > 0 && !e.host.is_empty() && e.ok, "{e:?}");
        assert!(e.submitted <= e.started && e.started <= e.finished, "{e:?}");
        assert!(e.run_time() >= Duration::from_millis(15), "{e:?}");
    }
    // Quick tasks send no started notice: their results say where they ran.
    tracer.clear();
    let out: Vec<_> = pool.map(double, 0..6u64).chunksize(1).collect();
    assert!(out.iter().all(Result::is_ok));
    let trace = tracer.snapshot();
    assert_eq!(trace.events.len(), 6);
    for e in &trace.events {
        assert!(e.worker.contains("pid") && e.pid > 0, "{e:?}");
        assert!(e.submitted <= e.started && e.started <= e.finished, "{e:?}");
    }
}
