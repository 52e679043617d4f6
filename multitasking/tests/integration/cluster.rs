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
use crate::tasks::{double, obey, sleep_ms};

/// The test Redis, or `None` (skip) outside CI.
pub(crate) fn redis_url() -> Option<String> {
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
pub(crate) fn fresh_queue(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    // The pid alone repeats: each test is a process of its own, pids wrap
    // at 32768 here, and a stress run starts thousands, so a test met the
    // queue and the marks file another process had left under its name.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "t-{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn queue_url(base: &str, queue: &str) -> String {
    format!(
        "{}?queue={queue}",
        base.split_once('?').map_or(base, |(b, _)| b)
    )
}

/// A worker running in a thread of this process.
pub(crate) struct InProcessWorker {
    /// Stops it.
    stop: StopHandle,
    /// Its thread.
    handle: Option<JoinHandle<Result<(), multitasking::Error>>>,
}

impl InProcessWorker {
    pub(crate) fn start(url: &str, concurrency: usize, visibility: Duration) -> InProcessWorker {
        InProcessWorker::of(
            Worker::builder(url)
                .concurrency(concurrency)
                .visibility_timeout(visibility),
        )
    }

    /// Builds the worker `b` describes and runs it.
    pub(crate) fn of(b: multitasking::cluster::WorkerBuilder) -> InProcessWorker {
        let w = b.build().expect("start a worker");
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

/// A client of the queue at `url` with one 2-slot worker serving it; the
/// client counts `slots` remote slots (2 per shard).
fn cluster_at(url: &str, slots: usize) -> TestCluster {
    let worker = InProcessWorker::start(url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(url, slots).expect("connect");
    TestCluster {
        pool: Some(pool),
        _worker: worker,
    }
}

/// A cluster on the test Redis with one 2-slot worker; `None` to skip.
pub(crate) fn test_cluster() -> Option<TestCluster> {
    Some(cluster_at(
        &queue_url(&redis_url()?, &fresh_queue("conf")),
        2,
    ))
}

/// Runs `f` on a test cluster, or skips.
pub(crate) fn with_cluster(f: impl FnOnce(TestCluster)) {
    if let Some(c) = test_cluster() {
        f(c);
    }
}

/// The test Redis Cluster (three masters) as a `redis+cluster://` seed
/// URL, or `None` (skip) outside CI.
pub(crate) fn redis_cluster_url() -> Option<String> {
    match std::env::var("MULTITASK_TEST_REDIS_CLUSTER") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("MULTITASK_TEST_REDIS_CLUSTER is not set: the sharded-queue tests need a Redis Cluster (run bash scripts/test.sh)")
        }
        _ => {
            eprintln!("note: MULTITASK_TEST_REDIS_CLUSTER is not set; sharded-queue test skipped");
            None
        }
    }
}

/// A queue sharded over the test Redis Cluster, with one 2-slot worker
/// serving every shard; `None` to skip.
pub(crate) fn sharded_cluster() -> Option<TestCluster> {
    let url = format!("{}?queue={}", redis_cluster_url()?, fresh_queue("shard"));
    // The worker runs 2 tasks at once on each of the 3 shards.
    Some(cluster_at(&url, 6))
}

/// Runs `f` on a sharded queue, or skips.
pub(crate) fn with_sharded(f: impl FnOnce(TestCluster)) {
    if let Some(c) = sharded_cluster() {
        f(c);
    }
}

/// Runs each conformance case over a queue on one Redis (module
/// `conformance_cluster`) and over a queue sharded on a Redis Cluster
/// (`conformance_sharded`).
macro_rules! cluster_case {
    ($($name:ident => $body:expr;)*) => {
        cluster_case!(@mod conformance_cluster, with_cluster, $($name => $body;)*);
        cluster_case!(@mod conformance_sharded, with_sharded, $($name => $body;)*);
    };
    (@mod $module:ident, $with:ident, $($name:ident => $body:expr;)*) => {
        mod $module {
            use super::*;
            use crate::conformance as c;
            $(
                #[test]
                fn $name() {
                    $with(|ex| {
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
    cancel_true_means_it_never_ran => |ex| c::cancel_true_means_it_never_ran(&ex);
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
        OwnRedis::start_on(free_port(), args)
    }

    fn start_on(port: u16, args: &[&str]) -> Option<OwnRedis> {
        let bin = redis_server_bin()?;
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
    let mut con = raw(&base);
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
        no_openssl("TLS test");
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

/// Appends `n` on a line of its own to the file at `path`, then sleeps
/// `ms`: a task whose every run leaves a trace.
#[multitasking::task]
pub(crate) fn mark(path: String, n: u64, ms: u64) -> u64 {
    crate::tasks::append_mark(&path, n);
    std::thread::sleep(Duration::from_millis(ms));
    n
}

/// The marks `mark` left in `path`, in the order written.
pub(crate) fn marks(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("a mark"))
        .collect()
}

/// Waits until `cond` holds, at most `LIMIT`; panics with `what` if not.
pub(crate) fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} (waited {LIMIT:?})");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A file path no other test uses.
pub(crate) fn fresh_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mt-{}.marks", fresh_queue(name)))
}

/// Checks that `outcomes` (each future's index and outcome) agree with
/// what ran: a cancelled task left no mark, a finished one exactly one.
fn check_marks(path: &std::path::Path, outcomes: &[(u64, Result<u64, TaskError>)]) -> usize {
    let ran = marks(path);
    let mut cancelled = 0;
    for (i, outcome) in outcomes {
        let times = ran.iter().filter(|m| *m == i).count();
        match outcome {
            Ok(v) => {
                assert_eq!(v, i);
                assert_eq!(times, 1, "task {i} finished, so it ran once: {ran:?}");
            }
            Err(TaskError::Cancelled { .. }) => {
                cancelled += 1;
                assert_eq!(times, 0, "task {i} was cancelled, yet it ran");
            }
            Err(e) => panic!("task {i}: unexpected {e:?}"),
        }
    }
    let _ = std::fs::remove_file(path);
    cancelled
}

#[test]
fn a_cancel_that_succeeds_means_the_task_never_runs() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("cancel"));
    let worker = InProcessWorker::start(&url, 5, Duration::from_secs(30));
    // One by one: the cancels walk the queue from its front, as the
    // worker's claims do, so they meet claimed tasks that have sent no
    // started notice yet.
    let path = fresh_file("one-by-one");
    let p = path.display().to_string();
    let pool = ClusterPool::connect_with(&url, 5).unwrap();
    let futs: Vec<_> = (0..300u64)
        .map(|i| pool.submit(mark, (p.clone(), i, 1)).unwrap())
        .collect();
    wait_for("the worker never ran a task", || !marks(&path).is_empty());
    let said: Vec<bool> = futs.iter().map(TaskFuture::cancel).collect();
    let outcomes: Vec<_> = (0..300u64).zip(futs.iter().map(get)).collect();
    for ((i, outcome), said) in outcomes.iter().zip(&said) {
        assert_eq!(
            *said,
            outcome.is_err(),
            "task {i}: cancel said {said}, the future ended {outcome:?}"
        );
    }
    // Shutdown with cancel_futures: 50 tasks on 5 slots.
    let path2 = fresh_file("shutdown");
    let p2 = path2.display().to_string();
    let pool2 = ClusterPool::connect_with(&url, 5).unwrap();
    let futs2: Vec<_> = (0..50u64)
        .map(|i| pool2.submit(mark, (p2.clone(), i, 1)).unwrap())
        .collect();
    wait_for("the worker never ran a task", || !marks(&path2).is_empty());
    pool2.shutdown(Shutdown {
        wait: true,
        cancel_futures: true,
    });
    let outcomes2: Vec<_> = (0..50u64).zip(futs2.iter().map(get)).collect();
    // Whatever the worker still holds runs to its end before the marks
    // are read.
    drop(pool);
    drop(pool2);
    drop(worker);
    let cancelled = check_marks(&path, &outcomes);
    assert!(cancelled > 0, "the cancels never caught up with the worker");
    let cancelled2 = check_marks(&path2, &outcomes2);
    assert!(cancelled2 > 0, "shutdown cancelled nothing");
}

#[test]
fn a_bad_reply_key_fails_its_tasks_and_holds_no_slot() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("badreply");
    let url = queue_url(&base, &queue);
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let mut con = raw(&base);
    // A reply "stream" that is a string: every write to it is WRONGTYPE.
    let bad = format!("mt:{{{queue}}}:results:bad");
    let _: () = redis::cmd("SET")
        .arg(&bad)
        .arg("not a stream")
        .query(&mut con)
        .unwrap();
    let payload = multitasking::executor::encode(
        <sleep_ms as Task>::NAME,
        <sleep_ms as Task>::CODEC,
        &vec![30u64],
    )
    .unwrap();
    for i in 0..4 {
        let _: String = redis::cmd("XADD")
            .arg(format!("mt:{{{queue}}}:tasks"))
            .arg("*")
            .arg("id")
            .arg(format!("bad-{i}"))
            .arg("task")
            .arg(<sleep_ms as Task>::NAME)
            .arg("sig")
            .arg(<sleep_ms as Task>::SIGNATURE.to_string())
            .arg("reply")
            .arg(&bad)
            .arg("payload")
            .arg(&payload[..])
            .query(&mut con)
            .unwrap();
    }
    // Both slots freed: a well-behaved client's tasks complete.
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let futs: Vec<_> = (0..4u64).map(|i| pool.submit(double, i).unwrap()).collect();
    for (i, f) in futs.iter().enumerate() {
        let r = f
            .result_timeout(Duration::from_secs(10))
            .expect("the worker is jammed: a later task never completed");
        assert_eq!(r, Ok(2 * i as u64));
    }
    wait_for("the bad-reply tasks were not dead-lettered", || {
        status(&url).unwrap().dead_letters == 4
    });
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg(format!("mt:{{{queue}}}:dead"))
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let text = format!("{dead:?}");
    assert!(text.to_lowercase().contains("wrongtype"), "{text}");
    wait_for("a bad-reply task stayed in flight", || {
        status(&url).unwrap().in_flight == 0
    });
}

#[test]
fn a_worker_of_zero_slots_is_refused() {
    let e = Worker::builder("redis://127.0.0.1:1/0?queue=q")
        .concurrency(0)
        .build()
        .expect_err("a worker that can run nothing is refused");
    let text = e.to_string();
    assert!(text.contains("concurrency must be at least 1"), "{text}");
}

/// Waits at most `limit` for every future of `futs`; panics naming the
/// first one still pending.
fn all_resolve<T: std::fmt::Debug>(
    futs: &[TaskFuture<T>],
    limit: Duration,
) -> Vec<Result<T, TaskError>> {
    let deadline = Instant::now() + limit;
    futs.iter()
        .enumerate()
        .map(|(i, f)| {
            let left = deadline.saturating_duration_since(Instant::now());
            f.result_timeout(left).unwrap_or_else(|| {
                let pending = futs.iter().filter(|f| !f.done()).count();
                panic!("future {i} and {pending} in all still pending after {limit:?}")
            })
        })
        .collect()
}

#[test]
fn tasks_a_restarted_redis_lost_fail_in_bounded_time() {
    let Some(mut redis) = OwnRedis::start(&["--appendonly", "no"]) else {
        return;
    };
    let url = format!(
        "redis://127.0.0.1:{}/0?queue={}",
        redis.port,
        fresh_queue("lost")
    );
    let worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let futs: Vec<_> = (0..200)
        .map(|_| pool.submit(sleep_ms, 10).unwrap())
        .collect();
    wait_for("no task finished", || futs[0].done());
    redis.kill();
    std::thread::sleep(Duration::from_millis(300));
    redis.up();
    let outcomes = all_resolve(&futs, Duration::from_secs(20));
    let lost = outcomes
        .iter()
        .filter(|r| matches!(r, Err(TaskError::Lost { .. })))
        .count();
    for r in &outcomes {
        assert!(matches!(r, Ok(10) | Err(TaskError::Lost { .. })), "{r:?}");
    }
    assert!(lost > 0, "nothing was lost: the restart came too late");
    assert_eq!(
        get(&pool.submit(double, 21).unwrap()),
        Ok(42),
        "the cluster works after the restart"
    );
    let t = Instant::now();
    drop(pool);
    drop(worker);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_broker_gone_for_good_fails_every_future_in_bounded_time() {
    let Some(mut redis) = OwnRedis::start(&[]) else {
        return;
    };
    let url = format!(
        "redis://127.0.0.1:{}/0?queue={}",
        redis.port,
        fresh_queue("gone")
    );
    let timeout = Duration::from_secs(2);
    let w = Worker::builder(&url)
        .concurrency(2)
        .broker_timeout(timeout)
        .build()
        .unwrap();
    let stop = w.stop_handle();
    let worker = std::thread::spawn(move || w.run());
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_broker_timeout(timeout);
    let futs: Vec<_> = (0..20)
        .map(|_| pool.submit(sleep_ms, 300).unwrap())
        .collect();
    wait_for("no task started", || futs.iter().any(TaskFuture::running));
    redis.kill();
    let t = Instant::now();
    let outcomes = all_resolve(&futs, timeout + Duration::from_secs(8));
    assert!(
        outcomes
            .iter()
            .any(|r| matches!(r, Err(TaskError::Broker { .. }))),
        "{outcomes:?}"
    );
    for r in &outcomes {
        assert!(
            matches!(r, Ok(300) | Err(TaskError::Broker { .. })),
            "{r:?}"
        );
    }
    // Later submits fail at once, not after another timeout.
    let t2 = Instant::now();
    let late = pool.submit(double, 1).unwrap();
    let r = late
        .result_timeout(Duration::from_secs(5))
        .expect("a submit to a gone broker hung");
    assert!(matches!(r, Err(TaskError::Broker { .. })), "{r:?}");
    assert!(t2.elapsed() < Duration::from_secs(1), "{:?}", t2.elapsed());
    drop(pool);
    stop.stop();
    let joined = Instant::now();
    worker.join().unwrap().unwrap();
    assert!(
        joined.elapsed() < timeout + Duration::from_secs(5),
        "the worker took {:?} to stop",
        joined.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn permanent_broker_errors_fail_at_once() {
    let Some(redis) = OwnRedis::start(&[]) else {
        return;
    };
    let mut con = raw(&format!("redis://127.0.0.1:{}/0", redis.port));
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER", "noxadd", "on", ">pw", "~*", "&*", "+@all", "-xadd",
            ][..],
        )
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("mt:{wrongtype}:tasks")
        .arg("not a stream")
        .query(&mut con)
        .unwrap();
    for (url, code) in [
        (
            format!("redis://noxadd:pw@127.0.0.1:{}/0?queue=q", redis.port),
            "noperm",
        ),
        (
            format!("redis://127.0.0.1:{}/0?queue=wrongtype", redis.port),
            "wrongtype",
        ),
    ] {
        let pool = ClusterPool::connect_with(&url, 2).unwrap();
        let t = Instant::now();
        let f = pool.submit(double, 1).unwrap();
        let r = f
            .result_timeout(Duration::from_secs(10))
            .expect("a refused submit hung");
        match r {
            Err(TaskError::Broker { message, .. }) => {
                assert!(message.to_lowercase().contains(code), "{message}");
                assert!(!message.contains("pw@"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{code} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn result_streams_expire_unless_renewed() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("ttl");
    let url = queue_url(&base, &queue);
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    assert_eq!(get(&pool.submit(double, 2).unwrap()), Ok(4));
    let mut con = raw(&base);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("mt:{{{queue}}}:results:*"))
        .query(&mut con)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut con).unwrap();
    assert!(
        ttl > 0,
        "the result stream {} never expires (TTL {ttl})",
        keys[0]
    );
}

#[test]
fn terminate_kills_a_running_cluster_task_on_its_worker() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("terminate"));
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let f = pool.submit(sleep_ms, 20_000).unwrap();
    wait_for("the task never started", || f.running());
    let t = Instant::now();
    assert!(f.terminate(), "terminate reaches the worker");
    let r = f
        .result_timeout(Duration::from_secs(10))
        .expect("a terminated task went on running");
    assert!(
        matches!(r, Err(TaskError::Terminated { pid, .. }) if pid > 0),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        get(&pool.submit(double, 2).unwrap()),
        Ok(4),
        "the worker goes on"
    );
}

#[test]
fn task_timeout_kills_a_cluster_task() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("timeout"));
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let limit = Duration::from_millis(300);
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_task_timeout(limit);
    let t = Instant::now();
    let f = pool.submit(sleep_ms, 20_000).unwrap();
    let r = f
        .result_timeout(Duration::from_secs(10))
        .expect("a task past its timeout went on running");
    assert!(
        matches!(r, Err(TaskError::TimedOut { after, pid: Some(_), .. }) if after == limit),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(get(&pool.submit(sleep_ms, 10).unwrap()), Ok(10));
}

#[test]
fn terminate_workers_stops_the_pools_work_at_once() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("stopall"));
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let futs: Vec<_> = (0..8)
        .map(|_| pool.submit(sleep_ms, 20_000).unwrap())
        .collect();
    wait_for("no task started", || {
        futs.iter().filter(|f| f.running()).count() == 2
    });
    let t = Instant::now();
    pool.terminate_workers();
    let outcomes = all_resolve(&futs, Duration::from_secs(10));
    let terminated = outcomes
        .iter()
        .filter(|r| matches!(r, Err(TaskError::Terminated { .. })))
        .count();
    let cancelled = outcomes
        .iter()
        .filter(|r| matches!(r, Err(TaskError::Cancelled { .. })))
        .count();
    assert_eq!((terminated, cancelled), (2, 6), "{outcomes:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let refused = pool.submit(double, 1).expect_err("the pool is closed");
    assert!(matches!(refused.error, TaskError::Shutdown { .. }));
}

#[test]
fn a_password_changed_mid_run_fails_calls_at_once() {
    let Some(redis) = OwnRedis::start(&["--requirepass", "first-secret"]) else {
        return;
    };
    let url = format!(
        "redis://:first-secret@127.0.0.1:{}/0?queue={}",
        redis.port,
        fresh_queue("auth")
    );
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let mut con = raw(&format!("redis://:first-secret@127.0.0.1:{}/0", redis.port));
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "second-secret"][..])
        .query(&mut con)
        .unwrap();
    // Every connection logs in again, with the old password.
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"][..])
        .query(&mut con)
        .unwrap();
    let t = Instant::now();
    let f = pool.submit(double, 1).unwrap();
    let r = f
        .result_timeout(Duration::from_secs(10))
        .expect("a call with a refused password hung");
    match r {
        Err(TaskError::Broker { message, .. }) => {
            assert!(message.contains("authentication failed"), "{message}");
            assert!(!message.contains("first-secret"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn the_documented_acl_rules_are_enough() {
    let Some(redis) = OwnRedis::start(&[]) else {
        return;
    };
    let mut con = raw(&format!("redis://127.0.0.1:{}/0", redis.port));
    // As in cluster/mod.rs, "Permissions".
    let client_rules = "~mt:* resetchannels -@all +ping +xadd +xread +xdel +expire +del \
        +evalsha +script|load +xpending +xrange +xrevrange +zadd +zremrangebyscore \
        +hget +hset +hdel";
    let worker_rules = "~mt:* resetchannels -@all +ping +xgroup|create +xreadgroup +xack \
        +xdel +xadd +xclaim +xpending +xrange +expire +evalsha +script|load +zmscore +zrem \
        +set +del +sadd +srem +hlen +hmget +hdel";
    for (user, rules) in [("app", client_rules), ("runner", worker_rules)] {
        let mut args = vec!["SETUSER", user, "on", ">pw"];
        args.extend(rules.split_whitespace());
        let _: () = redis::cmd("ACL").arg(&args[..]).query(&mut con).unwrap();
    }
    let queue = fresh_queue("acl");
    let at = |user: &str| format!("redis://{user}:pw@127.0.0.1:{}/0?queue={queue}", redis.port);
    let worker = InProcessWorker::start(&at("runner"), 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&at("app"), 2).unwrap();
    assert_eq!(get(&pool.submit(double, 21).unwrap()), Ok(42));
    let out: Vec<_> = pool.map(double, 0..100u64).collect();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    // Cancel, terminate: the scripts and the terminate set.
    let busy: Vec<_> = (0..2)
        .map(|_| pool.submit(sleep_ms, 20_000).unwrap())
        .collect();
    wait_for("the busy tasks never started", || {
        busy.iter().all(TaskFuture::running)
    });
    let queued = pool.submit(double, 1).unwrap();
    // Written by now, most likely: the cancel then runs the withdraw script.
    std::thread::sleep(Duration::from_millis(50));
    assert!(queued.cancel(), "a queued task cancels");
    // Calls packed in one entry: the cancel goes to the withdrawn hash,
    // which the worker reads after its claim.
    let packing = ClusterPool::connect_with(&at("app"), 2)
        .unwrap()
        .with_calls_per_entry(8);
    let packed: Vec<_> = (0..8u64)
        .map(|i| packing.submit(double, i).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        packed_entries(&mut con, &queue).1 > 0,
        "nothing was packed: the withdrawn hash goes untested"
    );
    assert!(
        packed[5].cancel(),
        "a queued call of a packed entry cancels"
    );
    for f in &busy {
        assert!(f.terminate());
        let r = f
            .result_timeout(Duration::from_secs(10))
            .expect("terminate hung");
        assert!(matches!(r, Err(TaskError::Terminated { .. })), "{r:?}");
    }
    assert_eq!(get(&pool.submit(double, 2).unwrap()), Ok(4));
    for (i, f) in (0..8u64).zip(&packed) {
        match get(f) {
            Err(TaskError::Cancelled { .. }) => assert_eq!(i, 5),
            r => assert_eq!(r, Ok(i * 2)),
        }
    }
    // An operator reads the status, the dead letters and the spans, and
    // requeues and discards a dead letter, with the rules documented.
    let operator_rules = "~mt:* resetchannels -@all +smembers +get +xlen +xpending \
        +xrevrange +xrange +xadd +xdel +multi +exec";
    let mut args = vec!["SETUSER", "operator", "on", ">pw"];
    args.extend(operator_rules.split_whitespace());
    let _: () = redis::cmd("ACL").arg(&args[..]).query(&mut con).unwrap();
    let mut poison = Fields::new();
    for (k, v) in [
        ("id", "p"),
        ("task", "nowhere::missing"),
        ("sig", "1"),
        ("reply", ""),
    ] {
        poison.insert(k.into(), v.as_bytes().to_vec());
    }
    poison.insert("payload".into(), vec![1, 2, 3]);
    xadd(&mut con, &format!("mt:{{{queue}}}:tasks"), &poison);
    let ops = at("operator");
    let no_keys: &[&[u8]] = &[];
    dead_now(&ops, 1);
    let st = status(&ops).unwrap();
    assert_eq!(st.dead_letters, 1);
    assert!(!multitasking::cluster::recent_tasks(&ops, 10)
        .unwrap()
        .events
        .is_empty());
    let entry = multitasking::cluster::dead_letters(&ops, 1).unwrap()[0]
        .entry
        .clone();
    multitasking::cluster::requeue_dead_letter(&ops, &entry, no_keys, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    // Unknown still: dead again, as a new dead letter.
    wait_for("the requeued task never died again", || {
        let dead = multitasking::cluster::dead_letters(&ops, 5).unwrap();
        dead.len() == 1 && dead[0].entry != entry
    });
    let again = multitasking::cluster::dead_letters(&ops, 1).unwrap()[0]
        .entry
        .clone();
    assert!(multitasking::cluster::discard_dead_letter(&ops, &again).unwrap());
    drop(pool);
    drop(worker);
    // Nothing anyone did was refused, not even what they ignore.
    let denied: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(&mut con).unwrap();
    assert!(denied.is_empty(), "{denied:?}");
}

#[test]
fn a_worker_the_broker_refuses_to_fetch_for_stops_and_says_why() {
    let Some(redis) = OwnRedis::start(&[]) else {
        return;
    };
    let mut con = raw(&format!("redis://127.0.0.1:{}/0", redis.port));
    // The documented rules without +hlen: the fetch's second command is
    // refused.
    let rules = "~mt:* resetchannels -@all +ping +xgroup|create +xreadgroup +xack \
        +xdel +xadd +xclaim +xpending +xrange +expire +evalsha +script|load +zmscore +zrem \
        +set +del +sadd +srem +hmget +hdel";
    let mut args = vec!["SETUSER", "short", "on", ">pw"];
    args.extend(rules.split_whitespace());
    let _: () = redis::cmd("ACL").arg(&args[..]).query(&mut con).unwrap();
    let url = format!(
        "redis://short:pw@127.0.0.1:{}/0?queue={}",
        redis.port,
        fresh_queue("refused")
    );
    let worker = Worker::builder(&url).concurrency(1).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(worker.run());
    });
    let r = rx
        .recv_timeout(LIMIT)
        .expect("a worker refused its fetch kept trying");
    let e = r.expect_err("a refused worker can't serve").to_string();
    assert!(e.to_lowercase().contains("noperm"), "{e}");
    assert!(e.contains("stopped") && e.contains("'hlen'"), "{e}");
    assert!(!e.contains(":pw@"), "the password shows: {e}");
}

/// `status` agrees with what runs within a tick, not a heartbeat period:
/// busy slots while tasks run, none as soon as they are done (it showed
/// "2 of 2 slots busy" with nothing in flight for up to two seconds).
#[test]
fn status_says_what_runs_as_it_changes() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("status"));
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let running = || {
        status(&url)
            .unwrap()
            .workers
            .first()
            .and_then(|w| w.running)
    };
    let deadline = Instant::now() + LIMIT;
    while running().is_none() {
        assert!(Instant::now() < deadline, "the worker never beat");
        std::thread::sleep(Duration::from_millis(20));
    }
    let futs: Vec<_> = (0..2)
        .map(|_| pool.submit(sleep_ms, 1_500).unwrap())
        .collect();
    let deadline = Instant::now() + LIMIT;
    while running() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "status never showed both slots busy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in &futs {
        assert_eq!(get(f), Ok(1_500));
    }
    // Within a few ticks of the worker's maintenance loop, well under its
    // two-second heartbeat period.
    let done = Instant::now();
    while running() != Some(0) {
        assert!(
            done.elapsed() < Duration::from_millis(1_200),
            "status still shows {:?} busy {:?} after the tasks ended",
            running(),
            done.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&url).unwrap().in_flight, 0);
}

/// The dead letters of `queue`, as text.
fn dead_letter_text(base: &str, queue: &str) -> String {
    let mut con = raw(base);
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg(format!("mt:{{{queue}}}:dead"))
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    format!("{dead:?}")
}

#[test]
fn a_worker_serves_only_its_allow_list() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("allow");
    let url = queue_url(&base, &queue);
    // `double` by its suffix, `sleep_ms` by its full name.
    let _worker = InProcessWorker::of(
        Worker::builder(&url)
            .concurrency(2)
            .allow(["double", <sleep_ms as Task>::NAME]),
    );
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    assert_eq!(get(&pool.submit(double, 4).unwrap()), Ok(8));
    assert_eq!(get(&pool.submit(sleep_ms, 1).unwrap()), Ok(1));
    let refused = get(&pool.submit(crate::tasks::noop, 1).unwrap());
    match &refused {
        Err(e @ TaskError::NotAllowed { task, worker }) => {
            assert_eq!(task, <crate::tasks::noop as Task>::NAME);
            assert!(worker.contains("pid"), "{worker}");
            assert!(e.to_string().contains("--tasks"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    wait_for("the refused task was not dead-lettered", || {
        status(&url).unwrap().dead_letters == 1
    });
    let text = dead_letter_text(&base, &queue);
    assert!(text.contains("not allowed"), "{text}");
    assert_eq!(get(&pool.submit(double, 5).unwrap()), Ok(10), "it goes on");
}

#[test]
fn dangerous_tasks_run_only_on_workers_told_so() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("dangerous");
    let url = queue_url(&base, &queue);
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    {
        // The default: every task but the dangerous ones.
        let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
        assert_eq!(get(&pool.submit(double, 1).unwrap()), Ok(2));
        match get(&pool.submit(obey, 1).unwrap()) {
            Err(e @ TaskError::NotAllowed { .. }) => {
                assert!(e.to_string().contains("--allow-shell"), "{e}")
            }
            other => panic!("a dangerous task ran on a default worker: {other:?}"),
        }
    }
    // Listing it is not enough: the worker is refused, naming the flag.
    let e = Worker::builder(&url)
        .allow(["obey"])
        .build()
        .expect_err("a dangerous task listed without its flag");
    assert!(e.to_string().contains("--allow-shell"), "{e}");
    for b in [
        Worker::builder(&url).allow_dangerous(true),
        Worker::builder(&url).allow(["obey"]).allow_dangerous(true),
    ] {
        let _worker = InProcessWorker::of(b.concurrency(2));
        assert_eq!(get(&pool.submit(obey, 1).unwrap()), Ok(2));
    }
    // A name that matches no task fails at once.
    let e = Worker::builder(&url)
        .allow(["no_such_task"])
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("no registered task"), "{e}");
}

/// Keys of 16 bytes or more, shared by a queue's clients and workers.
const KEY_NEW: &str = "the queue's new key, 32 bytes ok";
const KEY_OLD: &str = "the queue's old key, 32 bytes ok";
const KEY_OTHER: &str = "another queue's key, not this one";

/// A raw connection to the test Redis.
pub(crate) fn raw(base: &str) -> redis::Connection {
    redis::Client::open(base)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

/// A stream's entries: id and fields, oldest first.
pub(crate) type Fields = std::collections::HashMap<String, Vec<u8>>;
fn stream_entries(con: &mut redis::Connection, key: &str) -> Vec<(String, Fields)> {
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap()
}

/// XADDs an entry of `fields` to `key`.
pub(crate) fn xadd(con: &mut redis::Connection, key: &str, fields: &Fields) {
    let mut c = redis::cmd("XADD");
    c.arg(key).arg("*");
    for (k, v) in fields {
        c.arg(k).arg(&v[..]);
    }
    let _: String = c.query(con).unwrap();
}

#[test]
fn signed_queues_run_signed_tasks_and_dead_letter_the_rest() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("signed");
    let url = queue_url(&base, &queue);
    let tasks = format!("mt:{{{queue}}}:tasks");
    let mut con = raw(&base);
    // The client signs with the old key and trusts either; the worker
    // (below) takes either and signs with the new one: a rotation.
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_keys([KEY_OLD, KEY_NEW])
        .unwrap();
    let stale = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_key(KEY_NEW)
        .unwrap()
        .with_task_expiry(Duration::from_millis(1));
    // Written before any worker runs: one to copy, one to expire.
    let first = pool.submit(double, 21).unwrap();
    let expired = stale.submit(double, 2).unwrap();
    wait_for("the tasks were never written", || {
        stream_entries(&mut con, &tasks).len() == 2
    });
    let signed = stream_entries(&mut con, &tasks)
        .into_iter()
        .map(|(_, f)| f)
        // The one that does not expire at once.
        .max_by_key(|f| {
            String::from_utf8_lossy(&f["exp"])
                .parse::<u64>()
                .unwrap_or(0)
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let _worker = InProcessWorker::of(
        Worker::builder(&url)
            .concurrency(2)
            .keys([KEY_NEW, KEY_OLD]),
    );
    let firsts = [get(&first), get(&expired)];
    let ran = firsts.iter().filter(|r| **r == Ok(42)).count();
    let stale_reason = firsts.iter().find_map(|r| match r {
        Err(TaskError::Rejected { reason, .. }) => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(ran, 1, "{firsts:?}");
    assert!(
        stale_reason
            .as_deref()
            .is_some_and(|r| r.contains("expired")),
        "{firsts:?}"
    );
    // Replayed as it was, altered, and stripped of its signature.
    xadd(&mut con, &tasks, &signed);
    let mut altered = signed.clone();
    altered.insert(
        "payload".to_string(),
        multitasking::executor::encode(
            <double as Task>::NAME,
            <double as Task>::CODEC,
            &vec![1000u64],
        )
        .unwrap(),
    );
    altered.insert("id".to_string(), b"altered".to_vec());
    xadd(&mut con, &tasks, &altered);
    let mut unsigned = signed.clone();
    unsigned.remove("mac");
    unsigned.insert("id".to_string(), b"unsigned".to_vec());
    xadd(&mut con, &tasks, &unsigned);
    wait_for("the bad entries were not dead-lettered", || {
        status(&url).unwrap().dead_letters == 4
    });
    let text = dead_letter_text(&base, &queue);
    for says in ["expired", "a replay", "does not check", "unsigned"] {
        assert!(text.contains(says), "{says}: {text}");
    }
    // A client without the key: its task never runs and, its reply key
    // untrusted, it is lost in bounded time.
    let plain = ClusterPool::connect_with(&url, 2).unwrap();
    let r = plain
        .submit(double, 1)
        .unwrap()
        .result_timeout(Duration::from_secs(10))
        .expect("an unsigned task's future hung");
    assert!(matches!(r, Err(TaskError::Lost { .. })), "{r:?}");
    assert_eq!(get(&pool.submit(double, 5).unwrap()), Ok(10), "it goes on");
}

#[test]
fn a_client_with_a_key_trusts_no_forged_result() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("forged");
    let url = queue_url(&base, &queue);
    let tasks = format!("mt:{{{queue}}}:tasks");
    let mut con = raw(&base);
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_key(KEY_NEW)
        .unwrap();
    let futs: Vec<_> = (0..2u64).map(|i| pool.submit(double, i).unwrap()).collect();
    wait_for("the tasks were never written", || {
        stream_entries(&mut con, &tasks).len() == 2
    });
    let written = stream_entries(&mut con, &tasks);
    let field = |i: usize, name: &str| written[i].1[name].clone();
    let reply = String::from_utf8(field(0, "reply")).unwrap();
    // An unsigned "result", and an error entry with a made-up tag.
    let mut forged = Fields::new();
    forged.insert("id".to_string(), field(0, "id"));
    forged.insert("task".to_string(), field(0, "task"));
    forged.insert("payload".to_string(), vec![1, 2, 3]);
    xadd(&mut con, &reply, &forged);
    let error = serde_json::to_vec(&TaskError::Cancelled {
        task: "x".to_string(),
    })
    .unwrap();
    let mut bad_tag = Fields::new();
    bad_tag.insert("id".to_string(), field(1, "id"));
    bad_tag.insert("task".to_string(), field(1, "task"));
    bad_tag.insert("error".to_string(), error);
    bad_tag.insert("mac".to_string(), vec![0; 32]);
    xadd(&mut con, &reply, &bad_tag);
    for f in &futs {
        match get(f) {
            Err(TaskError::Rejected { reason, .. }) => {
                assert!(reason.contains("not signed"), "{reason}")
            }
            other => panic!("a forged result was trusted: {other:?}"),
        }
    }
    // A worker that takes the client's key but signs with another: its
    // packed results are not trusted either.
    let _worker = InProcessWorker::of(
        Worker::builder(&url)
            .concurrency(2)
            .keys([KEY_OTHER, KEY_NEW]),
    );
    match get(&pool.submit(double, 3).unwrap()) {
        Err(TaskError::Rejected { .. }) => {}
        other => panic!("a result signed with another key was trusted: {other:?}"),
    }
}

#[test]
fn passwords_with_at_colon_slash_or_escapes_never_show() {
    let Some(redis) = OwnRedis::start(&["--requirepass", "right-secret"]) else {
        return;
    };
    let port = redis.port;
    for (typed, secret) in [
        ("wr@ng:pa/ss", "wr@ng:pa/ss"),
        ("wr%40ng%3Apa%2Fss", "wr@ng:pa/ss"),
        ("se:cr@t", "se:cr@t"),
        ("p%2Fw%3Fd%23x", "p/w?d#x"),
    ] {
        let url = format!("redis://app:{typed}@127.0.0.1:{port}/0?queue=q");
        let shown = [
            ClusterPool::connect(&url)
                .expect_err("a wrong password")
                .to_string(),
            status(&url).expect_err("a wrong password").to_string(),
            Worker::builder(&url)
                .build()
                .expect_err("a wrong password")
                .to_string(),
            format!("{:?}", Worker::builder(&url)),
            multitasking::cluster::redact(&url),
        ];
        for text in shown {
            for hidden in [typed, secret] {
                assert!(!text.contains(hidden), "{typed}: {text}");
            }
        }
    }
}

/// Without openssl the TLS tests can't make their certificates: a failure
/// under `CI=true` (bash scripts/test.sh installs it), else a skip.
fn no_openssl(test: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "openssl is missing or failed: the {test} needs it (bash scripts/test.sh installs it)"
    );
    eprintln!("note: openssl is missing or failed; {test} skipped");
}

/// Runs `openssl` with `args` in `dir`; false if it is missing or fails.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn tls_brokers_that_ask_for_a_client_certificate_get_one() {
    let dir = std::env::temp_dir().join(format!("mt-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ext = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    ext(
        "server.ext",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    ext("client.ext", "extendedKeyUsage=clientAuth\n");
    let made = openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    ) && ["server", "client"].iter().all(|who| {
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={who}"),
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
            ],
        ) && openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{who}.ext"),
                "-out",
                &format!("{who}.crt"),
            ],
        )
    });
    if !made {
        no_openssl("client-certificate test");
        return;
    }
    let path = |name: &str| dir.join(name).display().to_string();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let Some(redis) = OwnRedis::start(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
    ]) else {
        return;
    };
    let base = format!("rediss://127.0.0.1:{}/0?queue=mtls&tls_ca={ca}", redis.port);
    let url = format!(
        "{base}&tls_cert={}&tls_key={}",
        path("client.crt"),
        path("client.key")
    );
    // The server's certificate is checked against the CA (no #insecure),
    // and ours against the server's.
    let worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    assert_eq!(get(&pool.submit(double, 5).unwrap()), Ok(10));
    drop(pool);
    drop(worker);
    // Without a client certificate the server refuses the handshake.
    let e = ClusterPool::connect(&base).expect_err("a client without a certificate");
    assert!(!e.to_string().is_empty());
    let e = ClusterPool::connect(&format!("{url}&tls_cert=/nowhere/client.crt"))
        .expect_err("a missing certificate file")
        .to_string();
    assert!(e.contains("/nowhere/client.crt"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dead letters of the queue at `url`, waiting until there are `n`.
pub(crate) fn dead_now(url: &str, n: usize) -> Vec<multitasking::cluster::DeadLetter> {
    let mut dead = Vec::new();
    wait_for(&format!("{n} dead letters never came"), || {
        dead = multitasking::cluster::dead_letters(url, 100).unwrap();
        dead.len() == n
    });
    dead
}

#[test]
fn a_dead_letter_keeps_its_task_and_a_requeue_runs_it_again() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("requeue");
    let url = queue_url(&base, &queue);
    let path = fresh_file("requeue");
    let no_keys: &[&[u8]] = &[];
    let expiry = Duration::from_secs(600);
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    {
        // A worker that does not serve `mark` yet.
        let _refuses = InProcessWorker::of(Worker::builder(&url).concurrency(1).allow(["double"]));
        let refused = get(&pool
            .submit(crate::tasks::mark, (path.display().to_string(), 7))
            .unwrap());
        assert!(
            matches!(refused, Err(TaskError::NotAllowed { .. })),
            "{refused:?}"
        );
    }
    let dead = dead_now(&url, 1);
    assert!(dead[0].payload_bytes.is_some_and(|b| b > 0), "{dead:?}");
    assert!(marks(&path).is_empty(), "a refused task never ran");
    // A worker that serves it; the requeued task runs once, for what it
    // does (its caller was failed already and waits for nothing).
    let _serves = InProcessWorker::start(&url, 1, Duration::from_secs(30));
    let task = multitasking::cluster::requeue_dead_letter(&url, &dead[0].entry, no_keys, expiry)
        .unwrap()
        .expect("the dead letter is there");
    assert!(task.contains('-'), "a task stream entry id: {task}");
    wait_for("the requeued task never ran", || marks(&path) == [7]);
    dead_now(&url, 0);
    // Gone from the task stream, and no result stream was made up for it.
    let mut con = raw(&base);
    wait_for("the requeued task stayed on the task stream", || {
        stream_entries(&mut con, &format!("mt:{{{queue}}}:tasks")).is_empty()
    });
    let exists: u64 = redis::cmd("EXISTS").arg("").query(&mut con).unwrap();
    assert_eq!(exists, 0, "a result written to the empty key");
    assert_eq!(
        multitasking::cluster::requeue_dead_letter(&url, &dead[0].entry, no_keys, expiry).unwrap(),
        None,
        "a requeued dead letter is gone"
    );
    assert_eq!(pool.pending(), 0);
    // A garbage entry's dead letter holds no task to put back: a clear
    // error, and the dead letter stays for a person to read.
    let mut poison = Fields::new();
    poison.insert("id".into(), b"junk".to_vec());
    poison.insert("task".into(), b"double".to_vec());
    xadd(&mut con, &format!("mt:{{{queue}}}:tasks"), &poison);
    let dead = dead_now(&url, 1);
    let e = multitasking::cluster::requeue_dead_letter(&url, &dead[0].entry, no_keys, expiry)
        .unwrap_err();
    assert!(e.to_string().contains("holds no task entry"), "{e}");
    dead_now(&url, 1);
    assert_eq!(marks(&path), [7], "nothing else ran");
}

#[test]
fn a_requeue_on_a_signed_queue_signs_only_what_a_key_holder_signed() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("requeue-signed");
    let url = queue_url(&base, &queue);
    let path = fresh_file("requeue-signed");
    let expiry = Duration::from_secs(600);
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_key(KEY_NEW)
        .unwrap();
    let mut con = raw(&base);
    {
        let _refuses = InProcessWorker::of(
            Worker::builder(&url)
                .concurrency(1)
                .keys([KEY_NEW])
                .allow(["double"]),
        );
        let refused = get(&pool
            .submit(crate::tasks::mark, (path.display().to_string(), 3))
            .unwrap());
        assert!(
            matches!(refused, Err(TaskError::NotAllowed { .. })),
            "{refused:?}"
        );
        // And an unsigned entry, forged by someone who can write to Redis.
        let mut forged = Fields::new();
        let input = multitasking::executor::encode(
            "mark",
            multitasking::Codec::Postcard,
            &vec![(path.display().to_string(), 666u64)],
        )
        .unwrap();
        for (k, v) in [
            ("id", b"forged".to_vec()),
            (
                "task",
                <crate::tasks::mark as Task>::NAME.as_bytes().to_vec(),
            ),
            (
                "sig",
                <crate::tasks::mark as Task>::SIGNATURE
                    .to_string()
                    .into_bytes(),
            ),
            ("reply", b"".to_vec()),
            ("payload", input),
        ] {
            forged.insert(k.into(), v);
        }
        xadd(&mut con, &format!("mt:{{{queue}}}:tasks"), &forged);
        dead_now(&url, 2);
    }
    let dead = multitasking::cluster::dead_letters(&url, 10).unwrap();
    let refused = dead
        .iter()
        .find(|d| d.reason.contains("not allowed"))
        .unwrap();
    let forged = dead.iter().find(|d| d.reason.contains("unsigned")).unwrap();
    let _serves = InProcessWorker::of(Worker::builder(&url).concurrency(1).keys([KEY_NEW]));
    let requeue = |entry: &str, keys: &[&str]| {
        multitasking::cluster::requeue_dead_letter(&url, entry, keys, expiry)
    };
    let e = requeue(&refused.entry, &[]).unwrap_err();
    assert!(e.to_string().contains("give the queue's keys"), "{e}");
    let e = requeue(&refused.entry, &[KEY_OLD]).unwrap_err();
    assert!(e.to_string().contains("does not check"), "{e}");
    let e = requeue(&forged.entry, &[KEY_NEW]).unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    // Signed by a client: re-signed with a fresh call id, it is no replay.
    requeue(&refused.entry, &[KEY_NEW]).unwrap().unwrap();
    wait_for("the requeued task never ran", || marks(&path) == [3]);
    let left = dead_now(&url, 1);
    assert_eq!(left[0].entry, forged.entry, "the forged one stays dead");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(marks(&path), [3], "the forged task never ran");
}

#[test]
fn workers_measure_each_task_and_publish_it_to_the_span_stream() {
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("usage"));
    let _worker = InProcessWorker::of(Worker::builder(&url).concurrency(2).measure_usage(true));
    let tracer = multitasking::trace::Tracer::new();
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_tracer(tracer.clone());
    let big = pool.submit(crate::tasks::hog, (64, 20)).unwrap();
    get(&big).unwrap();
    let used = big.usage().expect("the worker measured it");
    assert!(used.peak_rss.unwrap() >= 64 << 20, "{used:?}");
    assert!(used.cpu > Duration::ZERO, "{used:?}");
    // The high-water mark is reset per task: a small one after a big one
    // on the same workers reports its own, not the worker's peak.
    let smalls: Vec<_> = (0..4)
        .map(|_| pool.submit(crate::tasks::hog, (1, 0)).unwrap())
        .collect();
    for f in &smalls {
        get(f).unwrap();
        let rss = f.usage().expect("measured").peak_rss.unwrap();
        assert!(rss < 48 << 20, "a 1 MiB task reports {rss} bytes");
    }
    // The traced client has it too, with the input.
    let trace = tracer.snapshot();
    let e = trace
        .events
        .iter()
        .find(|e| e.run_time() >= Duration::from_millis(15))
        .unwrap();
    assert!(e.peak_rss.unwrap() >= 64 << 20 && e.cpu.is_some(), "{e:?}");
    assert_eq!(e.input.as_deref(), Some("[64,20]"));
    // And the span stream, for dashboards with no traced client.
    let consumers: Vec<String> = status(&url)
        .unwrap()
        .workers
        .into_iter()
        .map(|w| w.consumer)
        .collect();
    let mut spans = multitasking::trace::Trace::default();
    wait_for("the span stream never had the 5 tasks", || {
        spans = multitasking::cluster::recent_tasks(&url, 100).unwrap();
        spans.events.len() == 5
    });
    for e in &spans.events {
        assert!(
            consumers.contains(&e.worker),
            "{e:?} not one of {consumers:?}"
        );
        assert!(
            e.ok && e.submitted <= e.started && e.started <= e.finished,
            "{e:?}"
        );
        assert!(e.finished <= spans.wall, "{e:?}");
        assert!(e.cpu.is_some() && e.peak_rss.is_some(), "{e:?}");
    }
    let slow = spans.events.iter().max_by_key(|e| e.run_time()).unwrap();
    assert_eq!(slow.input.as_deref(), Some("[64,20]"), "{slow:?}");
}

/// The master (its port) that serves `key` on the Redis Cluster at `seed`.
fn master_of(seed: &mut redis::Connection, key: &str) -> i64 {
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(seed)
        .unwrap();
    let slots: Vec<(i64, i64, (String, i64))> = {
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(seed).unwrap();
        let redis::Value::Array(ranges) = v else {
            panic!("{v:?}")
        };
        ranges
            .iter()
            .map(|r| {
                let redis::Value::Array(p) = r else {
                    panic!("{r:?}")
                };
                let int = |v: &redis::Value| match v {
                    redis::Value::Int(n) => *n,
                    other => panic!("{other:?}"),
                };
                let redis::Value::Array(node) = &p[2] else {
                    panic!("{p:?}")
                };
                (int(&p[0]), int(&p[1]), (String::new(), int(&node[1])))
            })
            .collect()
    };
    slots
        .iter()
        .find(|(a, b, _)| (*a..=*b).contains(&slot))
        .map(|(_, _, (_, port))| *port)
        .expect("every slot is served")
}

#[test]
fn a_queue_on_a_redis_cluster_is_sharded_over_its_masters() {
    let Some(seed) = redis_cluster_url() else {
        return;
    };
    let queue = fresh_queue("sharded");
    let url = format!("{seed}?queue={queue}");
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    assert_eq!(pool.queue(), queue);
    let shards = pool.shard_queues();
    assert_eq!(shards.len(), 3, "one shard per master: {shards:?}");
    let mut con = redis::Client::open(seed.replace("redis+cluster://", "redis://"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut owners: Vec<i64> = shards
        .iter()
        .map(|s| master_of(&mut con, &format!("mt:{{{s}}}:tasks")))
        .collect();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), 3, "each shard on its own master");
    // Single submits go to the shards in turn; a map's chunks too.
    let futs: Vec<_> = (0..300u64)
        .map(|i| pool.submit(double, i).unwrap())
        .collect();
    for (i, f) in futs.iter().enumerate() {
        assert_eq!(get(f), Ok(2 * i as u64));
    }
    let out: Vec<u64> = pool.map(double, 0..2000u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..2000u64).map(|i| 2 * i).collect::<Vec<_>>());
    assert_eq!(pool.pending(), 0);
    // The status is the queue's, over every shard: the worker serves all.
    let st = status(&url).unwrap();
    assert_eq!(st.queue, queue);
    assert_eq!(st.workers.iter().filter(|w| w.alive).count(), 3, "{st:?}");
    assert_eq!((st.queue_depth, st.in_flight, st.dead_letters), (0, 0, 0));
    let read = multitasking::cluster::tasks_read(&url).unwrap();
    assert!(read.is_none_or(|n| n >= 300), "{read:?}");
    assert!(
        pool.spec().starts_with("redis+cluster://"),
        "{}",
        pool.spec()
    );
}

#[test]
fn a_sharded_dead_letter_is_named_by_its_shard_and_requeued_there() {
    let Some(seed) = redis_cluster_url() else {
        return;
    };
    let url = format!("{seed}?queue={}", fresh_queue("sharded-dead"));
    let path = fresh_file("sharded-dead");
    let no_keys: &[&[u8]] = &[];
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    {
        let _refuses = InProcessWorker::of(Worker::builder(&url).concurrency(1).allow(["double"]));
        for n in 0..3u64 {
            let r = get(&pool
                .submit(crate::tasks::mark, (path.display().to_string(), n))
                .unwrap());
            assert!(matches!(r, Err(TaskError::NotAllowed { .. })), "{r:?}");
        }
    }
    let dead = dead_now(&url, 3);
    let mut shards: Vec<&str> = dead
        .iter()
        .map(|d| d.entry.split('/').next().unwrap())
        .collect();
    shards.sort_unstable();
    assert_eq!(shards, ["0", "1", "2"], "{dead:?}");
    let _serves = InProcessWorker::start(&url, 1, Duration::from_secs(30));
    for d in &dead {
        multitasking::cluster::requeue_dead_letter(
            &url,
            &d.entry,
            no_keys,
            Duration::from_secs(60),
        )
        .unwrap()
        .unwrap();
    }
    let mut seen = Vec::new();
    let t = Instant::now();
    while seen != [0, 1, 2] {
        // What to look at if it never comes: the runs so far and the
        // queue as the broker has it.
        assert!(
            t.elapsed() < LIMIT,
            "the requeued tasks never ran (waited {LIMIT:?}): marks {seen:?}, dead {:?}, status {:?}",
            multitasking::cluster::dead_letters(&url, 10),
            multitasking::cluster::status(&url),
        );
        std::thread::sleep(Duration::from_millis(5));
        seen = marks(&path);
        seen.sort_unstable();
    }
    dead_now(&url, 0);
    let e = multitasking::cluster::discard_dead_letter(&url, "1700000000000-0").unwrap_err();
    assert!(e.to_string().contains("SHARD/ID"), "{e}");
}

#[test]
fn a_cluster_url_needs_a_redis_cluster_and_sane_shards() {
    let Some(base) = redis_url() else { return };
    let single = base.replace("redis://", "redis+cluster://");
    let e = ClusterPool::connect(&format!("{single}?queue=q"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("single Redis") && e.contains("redis://"), "{e}");
    if let Some(seed) = redis_cluster_url() {
        for bad in ["shards=0", "shards=lots"] {
            let e = ClusterPool::connect(&format!("{seed}?queue=q&{bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("shards must be"), "{e}");
        }
        let pool = ClusterPool::connect(&seed).unwrap();
        assert_eq!(
            pool.queue(),
            "default",
            "a seed alone names the queue default"
        );
        // Two shards on three masters: two queues.
        let pool =
            ClusterPool::connect(&format!("{seed}?queue={}&shards=2", fresh_queue("two"))).unwrap();
        assert_eq!(pool.shard_queues().len(), 2);
    }
}

/// A free port whose cluster bus port (the port plus 10000) is free and
/// valid too.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// A Redis Cluster of three masters of this test's own, created and
/// serving every slot; `None` to skip (no redis-server).
fn own_redis_cluster() -> Option<Vec<OwnRedis>> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        // The node's config goes in its own directory (`--dir`), which
        // goes with it.
        nodes.push(OwnRedis::start_on(
            cluster_port(),
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--appendonly",
                "no",
            ],
        )?);
    }
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(created.success(), "redis-cli --cluster create failed");
    for n in &nodes {
        wait_for_cluster_ok(n.port);
    }
    Some(nodes)
}

/// Waits until the cluster node on `port` says every slot is served.
fn wait_for_cluster_ok(port: u16) {
    let mut con = raw(&format!("redis://127.0.0.1:{port}/0"));
    wait_for("the Redis Cluster never reached cluster_state:ok", || {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut con)
            .unwrap_or_default();
        info.contains("cluster_state:ok")
    });
}

/// A master of a sharded queue's cluster dies mid-run: every future still
/// resolves, in bounded time, and nothing hangs; when the master is back
/// the queue serves again.
#[test]
fn a_sharded_queue_survives_a_master_that_dies_and_comes_back() {
    if redis_url().is_none() {
        return;
    }
    let Some(mut nodes) = own_redis_cluster() else {
        return;
    };
    let url = format!(
        "redis+cluster://127.0.0.1:{}/?queue={}",
        nodes[0].port,
        fresh_queue("master-dies")
    );
    let worker = InProcessWorker::of(
        Worker::builder(&url)
            .concurrency(2)
            .broker_timeout(Duration::from_secs(3))
            .visibility_timeout(Duration::from_secs(1)),
    );
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_broker_timeout(Duration::from_secs(3));
    assert_eq!(pool.shard_queues().len(), 3);
    let futs: Vec<_> = (0..30u64)
        .map(|_| pool.submit(sleep_ms, 100).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    nodes[1].kill();
    let t = Instant::now();
    let mut ok = 0;
    for f in &futs {
        match f.result_timeout(LIMIT) {
            Some(Ok(100)) => ok += 1,
            Some(Ok(other)) => panic!("{other}"),
            Some(Err(_)) => {}
            None => panic!("a future did not resolve within {LIMIT:?} of a master's death"),
        }
    }
    assert!(t.elapsed() < LIMIT, "{:?}", t.elapsed());
    assert!(ok > 0, "the live shards ran something");
    assert_eq!(pool.pending(), 0, "every call resolved once");
    // Back, with its slots: the queue serves again, on every shard.
    nodes[1].up();
    for n in &nodes {
        wait_for_cluster_ok(n.port);
    }
    let deadline = Instant::now() + LIMIT;
    loop {
        let again: Vec<_> = (0..9u64).map(|i| pool.submit(double, i).unwrap()).collect();
        let all = again
            .iter()
            .enumerate()
            .all(|(i, f)| f.result_timeout(LIMIT) == Some(Ok(2 * i as u64)));
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never served again");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The worker stops in bounded time too.
    let t = Instant::now();
    drop(pool);
    drop(worker);
    assert!(t.elapsed() < LIMIT, "stopping took {:?}", t.elapsed());
}

/// The task stream of `queue` and its entries that pack several calls.
fn packed_entries(con: &mut redis::Connection, queue: &str) -> (usize, usize) {
    let entries = stream_entries(con, &format!("mt:{{{queue}}}:tasks"));
    let packed = entries
        .iter()
        .filter(|(_, f)| f.contains_key("calls"))
        .count();
    (entries.len(), packed)
}

/// Waits until the task stream of `queue` has stopped growing: the
/// writer has written what was submitted.
fn written(con: &mut redis::Connection, queue: &str) -> (usize, usize) {
    let mut last = (usize::MAX, 0);
    wait_for("the calls never reached the task stream", || {
        let now = packed_entries(con, queue);
        let settled = now == last && now.0 > 0;
        last = now;
        std::thread::sleep(Duration::from_millis(50));
        settled
    });
    last
}

/// Waits until every entry of the task stream of `queue` is gone:
/// acknowledged and deleted with its last call.
fn stream_drains(con: &mut redis::Connection, queue: &str) {
    wait_for("an entry stayed on the task stream", || {
        packed_entries(con, queue).0 == 0
    });
}

/// Size of the queue's withdrawn hash.
fn withdrawn_fields(con: &mut redis::Connection, queue: &str) -> u64 {
    redis::cmd("HLEN")
        .arg(format!("mt:{{{queue}}}:withdrawn"))
        .query(con)
        .unwrap()
}

#[test]
fn packed_calls_cancel_one_by_one_and_each_runs_once() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("packed");
    let url = queue_url(&base, &queue);
    let mut con = raw(&base);
    let path = fresh_file("packed");
    let p = path.display().to_string();
    // No worker yet: every call waits in the task stream.
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_calls_per_entry(16);
    let futs: Vec<_> = (0..64u64)
        .map(|i| pool.submit(mark, (p.clone(), i, 0)).unwrap())
        .collect();
    let (entries, packed) = written(&mut con, &queue);
    assert!(
        packed > 0 && entries < 64,
        "{entries} entries, {packed} packed"
    );
    // A third of them, from every entry: each cancel holds.
    for (i, f) in futs.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        assert!(f.cancel(), "call {i} was queued, so it cancels");
    }
    assert!(withdrawn_fields(&mut con, &queue) > 0);
    // Every call of a second client: its entries go as their last call is
    // withdrawn, and so do their fields in the withdrawn hash.
    let fields = withdrawn_fields(&mut con, &queue);
    // (A call that went alone is deleted with its entry.)
    let entries = packed_entries(&mut con, &queue).0;
    let other = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_calls_per_entry(16);
    let gone: Vec<_> = (100..140u64)
        .map(|i| other.submit(mark, (p.clone(), i, 0)).unwrap())
        .collect();
    let (with_other, _) = written(&mut con, &queue);
    assert!(with_other > entries);
    for f in &gone {
        assert!(f.cancel());
    }
    assert_eq!(packed_entries(&mut con, &queue).0, entries);
    assert_eq!(withdrawn_fields(&mut con, &queue), fields);
    // A worker takes the rest: the withdrawn calls never run, the others
    // once each, and nothing is left behind.
    let worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let outcomes: Vec<_> = (0..64u64).zip(futs.iter().map(get)).collect();
    drop(worker);
    assert_eq!(check_marks(&path, &outcomes), 22);
    assert_eq!(
        packed_entries(&mut con, &queue).0,
        0,
        "every entry acknowledged"
    );
    assert_eq!(
        withdrawn_fields(&mut con, &queue),
        0,
        "no withdrawn field left"
    );
    assert_eq!(status(&url).unwrap().dead_letters, 0);
    assert_eq!(pool.pending() + other.pending(), 0);
}

#[test]
fn a_packed_call_is_terminated_or_timed_out_alone() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("packed-stop");
    let url = queue_url(&base, &queue);
    let mut con = raw(&base);
    let _worker = InProcessWorker::start(&url, 4, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 4)
        .unwrap()
        .with_calls_per_entry(16);
    let futs: Vec<_> = (0..16)
        .map(|_| pool.submit(sleep_ms, 20_000).unwrap())
        .collect();
    wait_for("no four tasks ever ran", || {
        futs.iter().filter(|f| f.running()).count() >= 4
    });
    let (_, packed) = packed_entries(&mut con, &queue);
    assert!(packed > 0, "nothing was packed");
    let running = futs.iter().position(TaskFuture::running).unwrap();
    assert!(futs[running].terminate());
    let r = futs[running]
        .result_timeout(LIMIT)
        .expect("a terminated packed call hung");
    assert!(matches!(r, Err(TaskError::Terminated { .. })), "{r:?}");
    std::thread::sleep(Duration::from_millis(300));
    let done = futs.iter().filter(|f| f.done()).count();
    assert_eq!(done, 1, "only the terminated call ended");
    pool.terminate_workers();
    // Killed where a worker holds them, cancelled where none has claimed
    // their entry yet.
    for (_, f) in futs.iter().enumerate().filter(|(i, _)| *i != running) {
        let r = f.result_timeout(LIMIT).expect("terminate_workers hung");
        assert!(
            matches!(
                r,
                Err(TaskError::Terminated { .. } | TaskError::Cancelled { .. })
            ),
            "{r:?}"
        );
    }
    stream_drains(&mut con, &queue);
    // Each packed call carries the pool's time limit on its own.
    let timed = ClusterPool::connect_with(&url, 4)
        .unwrap()
        .with_calls_per_entry(4)
        .with_task_timeout(Duration::from_millis(300));
    let futs: Vec<_> = (0..4)
        .map(|_| timed.submit(sleep_ms, 20_000).unwrap())
        .collect();
    for f in &futs {
        let r = f
            .result_timeout(LIMIT)
            .expect("a timed-out packed call hung");
        assert!(matches!(r, Err(TaskError::TimedOut { .. })), "{r:?}");
    }
    assert_eq!(get(&timed.submit(double, 4).unwrap()), Ok(8), "it goes on");
}

#[test]
fn a_worker_killed_mid_a_packed_entry_loses_nothing() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("packed-kill");
    let url = queue_url(&base, &queue);
    let mut con = raw(&base);
    let mut child = spawn_worker_child(&url);
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_calls_per_entry(10);
    let futs: Vec<_> = (0..10)
        .map(|_| pool.submit(sleep_ms, 400).unwrap())
        .collect();
    let deadline = Instant::now() + LIMIT;
    while !futs.iter().any(|f| f.running()) {
        assert!(Instant::now() < deadline, "the child never started a task");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(packed_entries(&mut con, &queue).1 > 0, "nothing was packed");
    child.kill().unwrap();
    child.wait().unwrap();
    let _rescuer = InProcessWorker::start(&url, 2, Duration::from_secs(1));
    for f in &futs {
        assert_eq!(get(f), Ok(400), "every call completes");
    }
    assert_eq!(pool.pending(), 0, "each call resolved once");
    assert_eq!(status(&url).unwrap().dead_letters, 0);
    stream_drains(&mut con, &queue);
}

#[test]
fn packed_calls_a_worker_refuses_are_dead_lettered_and_requeued_together() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("packed-dead");
    let url = queue_url(&base, &queue);
    let mut con = raw(&base);
    let path = fresh_file("packed-dead");
    let p = path.display().to_string();
    let no_keys: &[&[u8]] = &[];
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_calls_per_entry(16);
    // Written before a worker runs, so that they pack (an entry holds
    // calls of one task): doubles a worker serves, marks it does not.
    let ds: Vec<_> = (0..8u64).map(|i| pool.submit(double, i).unwrap()).collect();
    let ms: Vec<_> = (0..8u64)
        .map(|i| pool.submit(mark, (p.clone(), i, 0)).unwrap())
        .collect();
    let doubles: Vec<_> = ds.into_iter().zip(ms).collect();
    let (_, packed) = written(&mut con, &queue);
    assert!(packed > 0, "nothing was packed");
    {
        let _refuses = InProcessWorker::of(Worker::builder(&url).concurrency(2).allow(["double"]));
        for (i, (d, m)) in (0..8u64).zip(&doubles) {
            assert_eq!(get(d), Ok(i * 2));
            let r = get(m);
            assert!(matches!(r, Err(TaskError::NotAllowed { .. })), "{r:?}");
        }
    }
    assert!(marks(&path).is_empty(), "a refused call never ran");
    // One dead letter per entry that held refused calls, each naming its
    // task and keeping the entry.
    let dead = multitasking::cluster::dead_letters(&url, 100).unwrap();
    assert!(!dead.is_empty() && dead.len() <= 8, "{dead:?}");
    for d in &dead {
        assert_eq!(d.task, <mark as Task>::NAME, "{d:?}");
        assert!(d.reason.contains("not allowed"), "{d:?}");
        assert!(d.payload_bytes.is_some_and(|b| b > 0), "{d:?}");
    }
    let _serves = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    for d in &dead {
        multitasking::cluster::requeue_dead_letter(&url, &d.entry, no_keys, LIMIT)
            .unwrap()
            .expect("the dead letter is there");
    }
    // Only the refused calls run again, each once; the doubles do not.
    wait_for("the requeued calls never ran", || marks(&path).len() >= 8);
    std::thread::sleep(Duration::from_millis(200));
    let mut ran = marks(&path);
    ran.sort_unstable();
    assert_eq!(ran, (0..8).collect::<Vec<_>>());
    dead_now(&url, 0);
    stream_drains(&mut con, &queue);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn signed_packed_entries_run_and_forged_or_replayed_ones_die() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("packed-signed");
    let url = queue_url(&base, &queue);
    let tasks = format!("mt:{{{queue}}}:tasks");
    let mut con = raw(&base);
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_key(KEY_NEW)
        .unwrap()
        .with_calls_per_entry(8);
    let futs: Vec<_> = (0..8u64).map(|i| pool.submit(double, i).unwrap()).collect();
    written(&mut con, &queue);
    let copy = stream_entries(&mut con, &tasks)
        .into_iter()
        .map(|(_, f)| f)
        .find(|f| f.contains_key("calls"))
        .expect("a packed entry");
    let _worker = InProcessWorker::of(Worker::builder(&url).concurrency(2).keys([KEY_NEW]));
    for (i, f) in (0..8u64).zip(&futs) {
        assert_eq!(get(f), Ok(i * 2));
    }
    // Replayed whole; its data altered; its signature stripped.
    xadd(&mut con, &tasks, &copy);
    let mut altered = copy.clone();
    altered.get_mut("data").unwrap()[0] ^= 1;
    xadd(&mut con, &tasks, &altered);
    let mut unsigned = copy.clone();
    unsigned.remove("mac");
    xadd(&mut con, &tasks, &unsigned);
    let dead = dead_now(&url, 3);
    let text = format!("{dead:?}");
    for says in ["a replay", "does not check", "unsigned"] {
        assert!(text.contains(says), "{says}: {text}");
    }
    // None of them reached the client as a result: a replay's reply key
    // and a forgery's are not trusted.
    assert_eq!(pool.duplicates_dropped(), 0);
    assert_eq!(get(&pool.submit(double, 5).unwrap()), Ok(10), "it goes on");
    stream_drains(&mut con, &queue);
}

#[test]
fn malformed_packed_entries_are_dead_lettered_and_the_worker_goes_on() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("packed-junk");
    let url = queue_url(&base, &queue);
    let tasks = format!("mt:{{{queue}}}:tasks");
    let mut con = raw(&base);
    let _worker = InProcessWorker::start(&url, 2, Duration::from_secs(30));
    let pool = ClusterPool::connect_with(&url, 2).unwrap();
    let results = format!("mt:{{{queue}}}:results:nobody");
    for (calls, data) in [
        (vec![0xff; 12], Vec::new()),
        // One call of 5 bytes, with 2 bytes of data.
        (vec![1, 1, b'a', 1, b't', 0, 5], b"xy".to_vec()),
        // No call at all.
        (vec![0], Vec::new()),
    ] {
        let mut junk = Fields::new();
        junk.insert("calls".into(), calls);
        junk.insert("data".into(), data);
        junk.insert("reply".into(), results.as_bytes().to_vec());
        xadd(&mut con, &tasks, &junk);
    }
    let dead = dead_now(&url, 3);
    assert!(
        dead.iter()
            .all(|d| d.reason.contains("malformed packed task entry")),
        "{dead:?}"
    );
    assert_eq!(get(&pool.submit(double, 21).unwrap()), Ok(42), "it goes on");
    stream_drains(&mut con, &queue);
}

#[test]
fn calls_of_a_packed_entry_the_broker_lost_fail_as_lost_in_bounded_time() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("packed-lost");
    let url = queue_url(&base, &queue);
    let tasks = format!("mt:{{{queue}}}:tasks");
    let mut con = raw(&base);
    // No worker: the entries wait, and then one of them vanishes.
    let pool = ClusterPool::connect_with(&url, 2)
        .unwrap()
        .with_calls_per_entry(8);
    let futs: Vec<_> = (0..8u64).map(|i| pool.submit(double, i).unwrap()).collect();
    written(&mut con, &queue);
    let (gone, _) = stream_entries(&mut con, &tasks)
        .into_iter()
        .find(|(_, f)| f.contains_key("calls"))
        .expect("a packed entry");
    let _: u64 = redis::cmd("XDEL")
        .arg(&tasks)
        .arg(&gone)
        .query(&mut con)
        .unwrap();
    let t = Instant::now();
    // The first call may have gone alone: then its entry is still there
    // and its future waits for a worker. Every call the vanished entry
    // held fails as lost.
    wait_for("the calls of a vanished entry never failed", || {
        futs.iter().filter(|f| f.done()).count() >= 7
    });
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for f in futs.iter().filter(|f| f.done()) {
        let r = f.result_timeout(Duration::from_secs(1)).expect("done");
        assert!(matches!(r, Err(TaskError::Lost { .. })), "{r:?}");
    }
    for f in &futs {
        f.cancel();
    }
}

#[test]
fn a_call_given_ahead_in_a_workers_process_pool_is_terminated_alone() {
    let Some(base) = redis_url() else { return };
    let queue = fresh_queue("ahead-stop");
    let url = queue_url(&base, &queue);
    let file = std::env::temp_dir().join(format!("multitask-{queue}"));
    let _ = std::fs::remove_file(&file);
    let path = file.display().to_string();
    // One local worker process that takes calls ahead, under a worker that
    // claims six calls at once: what it claims waits in the local pool.
    let local = multitasking::ProcessPool::builder()
        .max_workers(1)
        .calls_ahead(7)
        .build()
        .unwrap();
    let _worker = InProcessWorker::of(
        Worker::builder(&url)
            .concurrency(6)
            .pool(local)
            .visibility_timeout(Duration::from_secs(30)),
    );
    let pool = ClusterPool::connect_with(&url, 1)
        .unwrap()
        .with_calls_per_entry(1);
    // A gate holds the local worker while the head and the marks behind
    // it queue in its pool; its reply writes them all to the worker.
    let gate = pool.submit(sleep_ms, 400).unwrap();
    let head = pool.submit(mark, (path.clone(), 0, 4000)).unwrap();
    let behind: Vec<_> = (1..=4)
        .map(|n| pool.submit(mark, (path.clone(), n, 0)).unwrap())
        .collect();
    assert_eq!(get(&gate), Ok(400));
    wait_for("the head never started", || marks(&file) == vec![0]);
    wait_for("the calls behind the head never reached the worker", || {
        behind.iter().all(|f| f.running())
    });
    assert!(behind[1].terminate(), "terminate a call given ahead");
    let r = get(&behind[1]);
    assert!(matches!(r, Err(TaskError::Terminated { .. })), "{r:?}");
    assert_eq!(get(&head), Ok(0), "the call it was behind was not stopped");
    for (i, f) in behind.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert_eq!(get(f), Ok(i as u64 + 1));
    }
    let mut ran = marks(&file);
    ran.sort_unstable();
    assert_eq!(
        ran,
        vec![0, 1, 3, 4],
        "each ran once, the terminated one never"
    );
    let _ = std::fs::remove_file(&file);
}
